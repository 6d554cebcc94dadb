#include "coordinator/rpc/grpc_replica_client.h"

#include <deque>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/rpc/grpc_status.h"
#include "grpcpp/grpcpp.h"
#include "tessera/v1/replica.grpc.pb.h"

namespace tessera::coordinator {
namespace {

model::FinishReason FromProto(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return model::FinishReason::kStop;
    case v1::FINISH_REASON_LENGTH:
      return model::FinishReason::kLength;
    default:
      return model::FinishReason::kAbort;
  }
}

void ToProto(const model::SamplingParams& s, v1::SamplingParams* p) {
  p->set_temperature(s.temperature);
  p->set_top_k(s.top_k);
  p->set_top_p(s.top_p);
  p->set_min_p(s.min_p);
  p->set_repetition_penalty(s.repetition_penalty);
  p->set_presence_penalty(s.presence_penalty);
  p->set_frequency_penalty(s.frequency_penalty);
  if (s.seed.has_value()) p->set_seed(*s.seed);
  p->set_max_tokens(s.max_tokens);
  p->set_min_tokens(s.min_tokens);
  for (int32_t id : s.stop_token_ids) p->add_stop_token_ids(id);
  p->set_ignore_eos(s.ignore_eos);
  p->set_logprobs(s.logprobs);
  for (const model::LogitBias& b : s.logit_bias) {
    p->add_logit_bias_token_ids(b.token_id);
    p->add_logit_bias_values(b.bias);
  }
  if (s.structured_output.kind != model::StructuredOutput::Kind::kNone) {
    p->mutable_structured_output()->set_kind(
        static_cast<v1::StructuredOutput::Kind>(s.structured_output.kind));
    p->mutable_structured_output()->set_spec(s.structured_output.spec);
    if (s.structured_output.start_after_token >= 0) {
      p->mutable_structured_output()->set_start_after_token(s.structured_output.start_after_token);
    }
  }
}

ReplicaEvent FromProto(const v1::GenerateResponse& r) {
  ReplicaEvent e;
  e.token_ids.assign(r.token_ids().begin(), r.token_ids().end());
  e.logprobs.assign(r.logprobs().begin(), r.logprobs().end());
  for (const v1::TopLogprobs& top : r.top_logprobs()) {
    std::vector<model::TokenLogprob>& out = e.top_logprobs.emplace_back();
    for (const v1::TokenLogprob& t : top.entries()) out.push_back({t.token_id(), t.logprob()});
  }
  e.finished = r.finished();
  if (e.finished) {
    e.finish_reason = FromProto(r.finish_reason());
    if (r.status_code() != 0) {
      e.status = absl::Status(static_cast<absl::StatusCode>(r.status_code()), r.status_message());
    }
  }
  e.num_cached_tokens = r.num_cached_tokens();
  e.kv_handoff = r.kv_handoff();
  e.kv_checksums = r.kv_checksums();
  if (r.has_timings()) {
    const v1::RequestTimings& t = r.timings();
    e.timings = RequestTimings{t.queue_seconds(), t.prefill_seconds(), t.decode_seconds(),
                               t.kv_send_seconds()};
  }
  return e;
}

v1::GenerateRequest ToProto(const ReplicaRequest& request) {
  v1::GenerateRequest proto;
  proto.set_request_id(request.request_id);
  proto.mutable_prompt_token_ids()->Assign(request.prompt.begin(), request.prompt.end());
  ToProto(request.sampling, proto.mutable_sampling());
  proto.set_cache_salt(request.cache_salt);
  proto.set_priority(request.priority);
  proto.set_kv_destination(request.kv_destination);
  if (request.kv_import.has_value()) {
    v1::KvImport* kv = proto.mutable_kv_import();
    kv->set_token(request.kv_import->token);
    kv->set_first_token(request.kv_import->first_token);
    kv->set_checksums(request.kv_import->checksums);
  }
  return proto;
}

// A unary RPC's deadline: the request's, at most `cap` from now.
void SetDeadline(grpc::ClientContext& context, absl::Time deadline, absl::Duration cap) {
  context.set_deadline(absl::ToChronoTime(std::min(deadline, absl::Now() + cap)));
}

// One Generate RPC: a reader thread pushes events into a queue until the stream ends.
class GrpcReplicaCall final : public ReplicaCall {
 public:
  GrpcReplicaCall(std::string replica, std::shared_ptr<v1::Replica::Stub> stub,
                  const v1::GenerateRequest& request, absl::Time deadline)
      : replica_(std::move(replica)), stub_(std::move(stub)) {
    if (deadline != absl::InfiniteFuture()) context_.set_deadline(absl::ToChronoTime(deadline));
    reader_ = stub_->Generate(&context_, request);
    thread_ = std::thread([this] { ReadLoop(); });
  }

  ~GrpcReplicaCall() override {
    context_.TryCancel();
    thread_.join();
  }

  absl::StatusOr<ReplicaEvent> Next(absl::Duration timeout) override {
    absl::MutexLock lock(&mu_);
    if (delivered_final_) return absl::OutOfRangeError("the finished event was already returned");
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !events_.empty(); };
    if (!mu_.AwaitWithTimeout(absl::Condition(&ready), timeout)) {
      return absl::DeadlineExceededError("no event yet");
    }
    ReplicaEvent event = std::move(events_.front());
    events_.pop_front();
    if (event.finished) delivered_final_ = true;
    return event;
  }

  void Cancel() override { context_.TryCancel(); }

 private:
  void ReadLoop() {
    v1::GenerateResponse response;
    bool finished = false;
    while (!finished && reader_->Read(&response)) {
      ReplicaEvent event = FromProto(response);
      finished = event.finished;
      absl::MutexLock lock(&mu_);
      events_.push_back(std::move(event));
    }
    if (finished) {
      // Drain the stream so Finish returns promptly.
      while (reader_->Read(&response)) {
      }
      reader_->Finish().IgnoreError();
      return;
    }
    grpc::Status status = reader_->Finish();
    ReplicaEvent last;
    last.finished = true;
    last.finish_reason = model::FinishReason::kAbort;
    if (status.ok()) {
      last.status = absl::UnavailableError(
          absl::StrCat("replica ", replica_, " closed the stream without a final event"));
    } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
               status.error_code() == grpc::StatusCode::INTERNAL ||
               status.error_code() == grpc::StatusCode::UNKNOWN) {
      last.status = absl::UnavailableError(
          absl::StrCat("lost the connection to replica ", replica_, ": ", status.error_message()));
    } else {
      last.status =
          absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
    }
    absl::MutexLock lock(&mu_);
    events_.push_back(std::move(last));
  }

  const std::string replica_;
  std::shared_ptr<v1::Replica::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader_;
  std::thread thread_;
  absl::Mutex mu_;
  std::deque<ReplicaEvent> events_ ABSL_GUARDED_BY(mu_);
  bool delivered_final_ ABSL_GUARDED_BY(mu_) = false;
};

// A failed unary call: connection problems are kUnavailable (retry elsewhere) naming the replica.
absl::Status FailedCall(const std::string& replica, const char* call, const grpc::Status& status) {
  const auto code = status.error_code();
  if (code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::INTERNAL ||
      code == grpc::StatusCode::UNKNOWN) {
    return absl::UnavailableError(
        absl::StrCat("Replica.", call, " on ", replica, ": ", status.error_message()));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), status.error_message());
}

class GrpcReplicaClient final : public ReplicaClient {
 public:
  GrpcReplicaClient(std::string name, std::shared_ptr<v1::Replica::Stub> stub)
      : name_(std::move(name)), stub_(std::move(stub)) {}

  absl::StatusOr<std::unique_ptr<ReplicaCall>> Generate(ReplicaRequest request) override {
    return std::unique_ptr<ReplicaCall>(
        new GrpcReplicaCall(name_, stub_, ToProto(request), request.deadline));
  }

  absl::StatusOr<KvReservation> ReserveKv(const ReplicaRequest& request) override {
    grpc::ClientContext context;
    SetDeadline(context, request.deadline, absl::Seconds(30));
    v1::ReserveKvRequest proto;
    *proto.mutable_request() = ToProto(request);
    v1::ReserveKvResponse response;
    const grpc::Status status = stub_->ReserveKv(&context, proto, &response);
    if (!status.ok()) return Failed("ReserveKv", status);
    return KvReservation{response.token(), response.num_cached_tokens(), response.destination()};
  }

  absl::Status ReleaseKv(uint64_t token) override {
    grpc::ClientContext context;
    SetDeadline(context, absl::InfiniteFuture(), absl::Seconds(10));
    v1::ReleaseKvRequest proto;
    proto.set_token(token);
    v1::ReleaseKvResponse response;
    const grpc::Status status = stub_->ReleaseKv(&context, proto, &response);
    if (!status.ok()) return Failed("ReleaseKv", status);
    return absl::OkStatus();
  }

 private:
  absl::Status Failed(const char* call, const grpc::Status& status) const {
    return FailedCall(name_, call, status);
  }

  const std::string name_;
  std::shared_ptr<v1::Replica::Stub> stub_;  // shared with the calls, which may outlive us
};

class GrpcReplicaConnector final : public ReplicaConnector {
 public:
  explicit GrpcReplicaConnector(const GrpcConnectorOptions& options) : options_(options) {}

  absl::StatusOr<std::unique_ptr<ReplicaClient>> Connect(const ReplicaInfo& info) override {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(options_.max_message_bytes);
    args.SetMaxSendMessageSize(options_.max_message_bytes);
    // Each replica gets its own connection (not shared with another replica's channel).
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto channel =
        grpc::CreateCustomChannel(info.address, grpc::InsecureChannelCredentials(), args);
    if (channel == nullptr) {
      return absl::UnavailableError(absl::StrCat("cannot create a channel to ", info.address));
    }
    return std::unique_ptr<ReplicaClient>(new GrpcReplicaClient(
        info.name, std::shared_ptr<v1::Replica::Stub>(v1::Replica::NewStub(channel))));
  }

 private:
  const GrpcConnectorOptions options_;
};

}  // namespace

std::unique_ptr<ReplicaConnector> MakeGrpcReplicaConnector(const GrpcConnectorOptions& options) {
  return std::make_unique<GrpcReplicaConnector>(options);
}

}  // namespace tessera::coordinator
