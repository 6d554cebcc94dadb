#include "coordinator/api/kserve_service.h"
#include "common/rpc/grpc_status.h"

#include <chrono>
#include <list>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "coordinator/api/kserve_schema.h"

namespace tessera::coordinator {
namespace {

using inference::ModelInferRequest;
using inference::ModelStreamInferResponse;
using Stream = grpc::ServerReaderWriter<ModelStreamInferResponse, ModelInferRequest>;

using tessera::rpc::ToGrpcStatus;

// The call's deadline, tightened by the request's "timeout" parameter.
absl::Time RequestDeadline(const grpc::ServerContext& context,
                           const kserve::ParsedRequest& request) {
  const auto call = context.deadline();
  absl::Time deadline = call == std::chrono::system_clock::time_point::max()
                            ? absl::InfiniteFuture()
                            : absl::FromChrono(call);
  if (request.timeout.has_value()) deadline = std::min(deadline, absl::Now() + *request.timeout);
  return deadline;
}

void SetFinal(bool final, ModelStreamInferResponse* response) {
  (*response->mutable_infer_response()
        ->mutable_parameters())[std::string(kserve::kFinalResponseParam)]
      .set_bool_param(final);
}

// One ModelStreamInfer call: the call's thread reads requests (Run); each request runs on a
// thread of its own (Drive) and writes its responses through Write, which serializes them.
class StreamSession {
 public:
  StreamSession(KServeService& service, Frontend& frontend, const KServeServiceOptions& options,
                grpc::ServerContext& context, Stream& stream)
      : service_(service),
        frontend_(frontend),
        options_(options),
        context_(context),
        stream_(stream) {}

  ~StreamSession() { Reap(/*all=*/true); }

  grpc::Status Run() {
    ModelInferRequest request;
    while (!cancelled_.load() && stream_.Read(&request)) {
      Reap(/*all=*/false);
      Start(request);
    }
    // Read() fails on a half-close (finish the requests) and on a cancelled call (drop them).
    // Only this thread asks the context, which is not meant for concurrent IsCancelled() calls.
    absl::MutexLock lock(&mu_);
    while (active_ > 0) {
      if (!cancelled_.load() && context_.IsCancelled()) cancelled_ = true;
      idle_cv_.WaitWithTimeout(&mu_, options_.poll_interval);
    }
    if (cancelled_.load() || context_.IsCancelled()) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "ModelStreamInfer cancelled");
    }
    return grpc::Status::OK;
  }

 private:
  struct Runner {
    std::thread thread;
    std::atomic<bool> done{false};
  };

  void Start(const ModelInferRequest& request) {
    absl::StatusOr<kserve::ParsedRequest> parsed =
        kserve::ParseInferRequest(request, frontend_.model());
    if (!parsed.ok()) {
      service_.RecordRequest(false, absl::ZeroDuration());
      WriteError(request.id(), parsed.status());
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      if (active_ >= options_.max_requests_per_stream) {
        WriteError(request.id(),
                   absl::ResourceExhaustedError(absl::StrCat(
                       "too many requests in flight on this stream (at most ",
                       options_.max_requests_per_stream, "); wait for responses and retry")));
        return;
      }
      ++active_;
    }
    parsed->generate.deadline = RequestDeadline(context_, *parsed);
    const std::string id = parsed->id;
    Runner& runner = runners_.emplace_back();
    try {
      runner.thread = std::thread([this, &runner, request = *std::move(parsed)] {
        const absl::Time start = absl::Now();
        Finish(request.id, Drive(request), absl::Now() - start);
        runner.done = true;
      });
    } catch (const std::system_error& e) {
      runners_.pop_back();
      Finish(id,
             absl::ResourceExhaustedError(
                 absl::StrCat("cannot start a thread for the request: ", e.what())),
             absl::ZeroDuration());
    }
  }

  // Runs one request to its end; the error that ended it, if any.
  absl::Status Drive(const kserve::ParsedRequest& request) {
    absl::StatusOr<std::unique_ptr<GenerateStream>> stream = frontend_.Generate(request.generate);
    if (!stream.ok()) return stream.status();
    kserve::ResponseBuilder builder(request, frontend_);
    while (true) {
      if (cancelled_.load()) {
        (*stream)->Cancel();
        return absl::CancelledError("the stream was cancelled");
      }
      absl::StatusOr<GenerateEvent> event = (*stream)->Next(options_.poll_interval);
      if (!event.ok()) {
        if (absl::IsDeadlineExceeded(event.status())) continue;  // nothing yet
        return event.status();
      }
      if (event->finished && !event->status.ok()) return event->status;
      if (request.stream) {
        ModelStreamInferResponse response;
        kserve::FillResponseHeader(frontend_.model(), request.id,
                                   response.mutable_infer_response());
        builder.Delta(*event, response.mutable_infer_response());
        SetFinal(event->finished, &response);
        if (!Write(response)) {
          (*stream)->Cancel();
          return absl::CancelledError("the stream was closed");
        }
      } else {
        builder.Add(*event);
      }
      if (event->finished) break;
    }
    if (!request.stream) {
      ModelStreamInferResponse response;
      kserve::FillResponseHeader(frontend_.model(), request.id, response.mutable_infer_response());
      builder.Whole(response.mutable_infer_response());
      SetFinal(true, &response);
      if (!Write(response)) return absl::CancelledError("the stream was closed");
    }
    return absl::OkStatus();
  }

  void Finish(absl::string_view id, const absl::Status& status, absl::Duration elapsed) {
    service_.RecordRequest(status.ok(), elapsed);
    if (!status.ok() && !cancelled_.load()) WriteError(id, status);
    absl::MutexLock lock(&mu_);
    --active_;
    idle_cv_.Signal();
  }

  bool Write(const ModelStreamInferResponse& response) {
    absl::MutexLock lock(&write_mu_);
    if (write_failed_) return false;
    if (!stream_.Write(response)) {
      write_failed_ = true;
      cancelled_ = true;
      return false;
    }
    return true;
  }

  // Triton's form of a failed request on a stream: error_message set. tessera also fills the
  // response header and the final flag, so that clients can tell which request failed.
  void WriteError(absl::string_view id, const absl::Status& status) {
    ModelStreamInferResponse response;
    response.set_error_message(std::string(status.message()));
    kserve::FillResponseHeader(frontend_.model(), id, response.mutable_infer_response());
    SetFinal(true, &response);
    Write(response);
  }

  // Joins finished request threads (all of them when `all`); the reader thread only.
  void Reap(bool all) {
    for (auto it = runners_.begin(); it != runners_.end();) {
      if (all || it->done.load()) {
        if (it->thread.joinable()) it->thread.join();
        it = runners_.erase(it);
      } else {
        ++it;
      }
    }
  }

  KServeService& service_;
  Frontend& frontend_;
  const KServeServiceOptions& options_;
  grpc::ServerContext& context_;
  Stream& stream_;
  std::atomic<bool> cancelled_{false};  // the call is gone: requests stop and write nothing

  absl::Mutex write_mu_;
  bool write_failed_ ABSL_GUARDED_BY(write_mu_) = false;

  absl::Mutex mu_;
  absl::CondVar idle_cv_;
  int active_ ABSL_GUARDED_BY(mu_) = 0;  // requests started and not finished

  std::list<Runner> runners_;  // the reader thread's; nodes stay put while their thread runs
};

}  // namespace

KServeService::KServeService(Frontend& frontend, KServeServiceOptions options)
    : frontend_(frontend), options_(std::move(options)), keys_(options_.api_keys) {}

grpc::Status KServeService::Authorize(const grpc::ServerContext& context) const {
  if (!keys_.enabled()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  const auto found = metadata.find("authorization");
  if (found != metadata.end() &&
      keys_.Allows(absl::string_view(found->second.data(), found->second.size()))) {
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      "this server needs an API key: send the metadata \"authorization: Bearer "
                      "KEY\" (tritonclient: headers={\"authorization\": \"Bearer KEY\"})");
}

void KServeService::RecordRequest(bool ok, absl::Duration elapsed) {
  const uint64_t ns = static_cast<uint64_t>(absl::ToInt64Nanoseconds(elapsed));
  if (ok) {
    success_count_++;
    success_ns_ += ns;
  } else {
    fail_count_++;
    fail_ns_ += ns;
  }
  last_inference_ms_ = static_cast<uint64_t>(absl::ToUnixMillis(absl::Now()));
}

grpc::Status KServeService::ServerLive(grpc::ServerContext*, const inference::ServerLiveRequest*,
                                       inference::ServerLiveResponse* response) {
  response->set_live(frontend_.Live());
  return grpc::Status::OK;
}

grpc::Status KServeService::ServerReady(grpc::ServerContext*, const inference::ServerReadyRequest*,
                                        inference::ServerReadyResponse* response) {
  response->set_ready(frontend_.Ready());
  return grpc::Status::OK;
}

grpc::Status KServeService::ModelReady(grpc::ServerContext* context,
                                       const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) {
  if (grpc::Status denied = Authorize(*context); !denied.ok()) return denied;
  response->set_ready(
      kserve::CheckModel(frontend_.model(), request->name(), request->version()).ok() &&
      frontend_.Ready());
  return grpc::Status::OK;
}

grpc::Status KServeService::ServerMetadata(grpc::ServerContext* context,
                                           const inference::ServerMetadataRequest*,
                                           inference::ServerMetadataResponse* response) {
  if (grpc::Status denied = Authorize(*context); !denied.ok()) return denied;
  response->set_name("tessera");
  response->set_version(options_.server_version);
  for (const char* extension : {"model_configuration", "parameters", "statistics"}) {
    response->add_extensions(extension);
  }
  return grpc::Status::OK;
}

grpc::Status KServeService::ModelMetadata(grpc::ServerContext* context,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) {
  if (grpc::Status denied = Authorize(*context); !denied.ok()) return denied;
  absl::Status status = kserve::CheckModel(frontend_.model(), request->name(), request->version());
  if (!status.ok()) return ToGrpcStatus(status);
  kserve::FillModelMetadata(frontend_.model(), response);
  return grpc::Status::OK;
}

grpc::Status KServeService::ModelConfig(grpc::ServerContext* context,
                                        const inference::ModelConfigRequest* request,
                                        inference::ModelConfigResponse* response) {
  if (grpc::Status denied = Authorize(*context); !denied.ok()) return denied;
  absl::Status status = kserve::CheckModel(frontend_.model(), request->name(), request->version());
  if (!status.ok()) return ToGrpcStatus(status);
  kserve::FillModelConfig(frontend_.model(), response->mutable_config());
  return grpc::Status::OK;
}

grpc::Status KServeService::ModelInfer(grpc::ServerContext* context,
                                       const inference::ModelInferRequest* request,
                                       inference::ModelInferResponse* response) {
  if (grpc::Status denied = Authorize(*context); !denied.ok()) return denied;
  const absl::Time start = absl::Now();
  auto run = [&]() -> absl::Status {
    absl::StatusOr<kserve::ParsedRequest> parsed =
        kserve::ParseInferRequest(*request, frontend_.model());
    if (!parsed.ok()) return parsed.status();
    parsed->generate.deadline = RequestDeadline(*context, *parsed);
    absl::StatusOr<std::unique_ptr<GenerateStream>> stream = frontend_.Generate(parsed->generate);
    if (!stream.ok()) return stream.status();
    kserve::ResponseBuilder builder(*parsed, frontend_);
    while (true) {
      if (context->IsCancelled()) {
        (*stream)->Cancel();
        return absl::CancelledError("ModelInfer cancelled by the client");
      }
      absl::StatusOr<GenerateEvent> event = (*stream)->Next(options_.poll_interval);
      if (!event.ok()) {
        if (absl::IsDeadlineExceeded(event.status())) continue;  // nothing yet
        return event.status();
      }
      if (event->finished && !event->status.ok()) return event->status;
      builder.Add(*event);
      if (event->finished) break;
    }
    kserve::FillResponseHeader(frontend_.model(), parsed->id, response);
    builder.Whole(response);
    return absl::OkStatus();
  };
  absl::Status status = run();
  RecordRequest(status.ok(), absl::Now() - start);
  return ToGrpcStatus(status);
}

grpc::Status KServeService::ModelStreamInfer(grpc::ServerContext* context, Stream* stream) {
  if (grpc::Status denied = Authorize(*context); !denied.ok()) return denied;
  StreamSession session(*this, frontend_, options_, *context, *stream);
  return session.Run();
}

grpc::Status KServeService::ModelStatistics(grpc::ServerContext* context,
                                            const inference::ModelStatisticsRequest* request,
                                            inference::ModelStatisticsResponse* response) {
  if (grpc::Status denied = Authorize(*context); !denied.ok()) return denied;
  if (!request->name().empty()) {
    absl::Status status =
        kserve::CheckModel(frontend_.model(), request->name(), request->version());
    if (!status.ok()) return ToGrpcStatus(status);
  }
  inference::ModelStatistics* stats = response->add_model_stats();
  stats->set_name(frontend_.model().name);
  stats->set_version(std::string(kserve::kModelVersion));
  stats->set_last_inference(last_inference_ms_.load());
  stats->set_inference_count(success_count_.load());
  stats->set_execution_count(success_count_.load());
  inference::InferStatistics* infer = stats->mutable_inference_stats();
  infer->mutable_success()->set_count(success_count_.load());
  infer->mutable_success()->set_ns(success_ns_.load());
  infer->mutable_fail()->set_count(fail_count_.load());
  infer->mutable_fail()->set_ns(fail_ns_.load());
  // perf_analyzer finds the model version whose queue count grew during its window; tessera has
  // no queue of its own here, so every successful request counts as queued (0 ns) and computed
  // (perf_analyzer also wants the three compute counts equal).
  infer->mutable_queue()->set_count(success_count_.load());
  infer->mutable_compute_input()->set_count(success_count_.load());
  infer->mutable_compute_infer()->set_count(success_count_.load());
  infer->mutable_compute_infer()->set_ns(success_ns_.load());
  infer->mutable_compute_output()->set_count(success_count_.load());
  return grpc::Status::OK;
}

grpc::Status KServeService::RepositoryIndex(grpc::ServerContext* context,
                                            const inference::RepositoryIndexRequest* request,
                                            inference::RepositoryIndexResponse* response) {
  if (grpc::Status denied = Authorize(*context); !denied.ok()) return denied;
  const bool ready = frontend_.Ready();
  if (request->ready() && !ready) return grpc::Status::OK;
  auto* model = response->add_models();
  model->set_name(frontend_.model().name);
  model->set_version(std::string(kserve::kModelVersion));
  model->set_state(ready ? "READY" : "UNAVAILABLE");
  return grpc::Status::OK;
}

}  // namespace tessera::coordinator
