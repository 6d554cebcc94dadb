#include "worker/rpc/replica_service.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "common/rpc/grpc_status.h"
#include "worker/rpc/kv_convert.h"

namespace tessera::worker::rpc {
namespace {

namespace v1 = ::tessera::v1;

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kAbort:
      return v1::FINISH_REASON_ABORT;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

// The time left until the RPC's deadline; infinite when it has none.
absl::Duration TimeLeft(const grpc::ServerContext& context) {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteDuration();
  return std::max(absl::FromChrono(deadline) - absl::Now(), absl::ZeroDuration());
}

v1::GenerateResponse ToResponse(const TokenEvent& event, bool first, bool with_top) {
  v1::GenerateResponse response;
  if (event.token_id >= 0) {
    response.add_token_ids(event.token_id);
    response.add_logprobs(event.logprob);
    if (with_top) {
      v1::TopLogprobs* top = response.add_top_logprobs();
      for (const TokenLogprob& entry : event.top_logprobs) {
        v1::TokenLogprob* out = top->add_entries();
        out->set_token_id(entry.token_id);
        out->set_logprob(entry.logprob);
      }
    }
  }
  if (first) response.set_num_cached_tokens(event.num_cached_tokens);
  if (event.kv_handoff) {
    response.set_kv_handoff(true);
    response.set_kv_checksums(ChecksumsToBytes(event.kv_checksums));
  }
  if (event.timings.has_value()) {
    v1::RequestTimings* t = response.mutable_timings();
    t->set_queue_seconds(event.timings->queue_seconds);
    t->set_prefill_seconds(event.timings->prefill_seconds);
    t->set_decode_seconds(event.timings->decode_seconds);
    t->set_kv_send_seconds(event.timings->kv_send_seconds);
  }
  if (event.finish_reason.has_value()) {
    response.set_finished(true);
    response.set_finish_reason(ToProto(*event.finish_reason));
    if (!event.status.ok()) {
      response.set_status_code(static_cast<int32_t>(event.status.code()));
      response.set_status_message(std::string(event.status.message()));
    }
  }
  return response;
}

}  // namespace

absl::StatusOr<Request> RequestFromProto(const v1::GenerateRequest& request,
                                         absl::Duration timeout) {
  Request out;
  if (!request.kv_destination().empty()) {
    absl::StatusOr<KvDestination> d = KvDestinationFromBytes(request.kv_destination());
    if (!d.ok()) return d.status();
    out.kv_destination = *std::move(d);
  }
  if (request.has_kv_import()) {
    absl::StatusOr<std::vector<KvSegmentChecksum>> sums =
        ChecksumsFromBytes(request.kv_import().checksums());
    if (!sums.ok()) return sums.status();
    out.kv_import = Request::KvImport{request.kv_import().token(),
                                      request.kv_import().first_token(), *std::move(sums)};
  }
  out.prompt.assign(request.prompt_token_ids().begin(), request.prompt_token_ids().end());
  out.cache_salt = request.cache_salt();
  out.priority = request.priority();
  out.timeout = timeout;
  if (request.has_sampling()) {
    const v1::SamplingParams& in = request.sampling();
    SamplingParams& s = out.sampling;
    s.temperature = in.temperature();
    s.top_k = in.top_k();
    s.top_p = in.top_p();
    s.min_p = in.min_p();
    s.repetition_penalty = in.repetition_penalty();
    s.presence_penalty = in.presence_penalty();
    s.frequency_penalty = in.frequency_penalty();
    if (in.has_seed()) s.seed = in.seed();
    s.max_tokens = in.max_tokens();
    s.min_tokens = in.min_tokens();
    s.stop_token_ids.assign(in.stop_token_ids().begin(), in.stop_token_ids().end());
    s.ignore_eos = in.ignore_eos();
    s.logprobs = in.logprobs();
    if (in.logit_bias_token_ids_size() != in.logit_bias_values_size()) {
      return absl::InvalidArgumentError(absl::StrCat("sampling: ", in.logit_bias_token_ids_size(),
                                                     " logit_bias tokens with ",
                                                     in.logit_bias_values_size(), " values"));
    }
    for (int i = 0; i < in.logit_bias_token_ids_size(); ++i) {
      s.logit_bias.push_back({in.logit_bias_token_ids(i), in.logit_bias_values(i)});
    }
    if (in.has_structured_output()) {
      const v1::StructuredOutput& so = in.structured_output();
      if (!v1::StructuredOutput::Kind_IsValid(so.kind())) {
        return absl::InvalidArgumentError(
            absl::StrCat("sampling: unknown structured_output kind ", so.kind()));
      }
      s.structured_output.kind = static_cast<model::StructuredOutput::Kind>(so.kind());
      s.structured_output.spec = so.spec();
      if (so.has_start_after_token()) {
        if (so.start_after_token() < 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("sampling: structured_output.start_after_token must be >= 0, got ",
                           so.start_after_token()));
        }
        s.structured_output.start_after_token = so.start_after_token();
      }
    }
  }
  return out;
}

v1::ReplicaStats ToReplicaStats(const EngineCounters& c, const KvPortCounters* kv) {
  v1::ReplicaStats stats;
  stats.set_kv_blocks_cached(c.kv_blocks_cached);
  stats.set_kv_blocks_reserved(c.kv_blocks_reserved);
  stats.set_kv_blocks_exporting(c.kv_blocks_exporting);
  if (kv != nullptr) {
    stats.set_kv_bytes_sent(kv->bytes_sent);
    stats.set_kv_bytes_received(kv->bytes_received);
    stats.set_kv_transfers_failed(kv->transfers_failed);
    stats.set_kv_writes_refused(kv->writes_refused);
    stats.set_kv_checksum_failures(kv->checksum_failures);
  }
  stats.set_num_requests_running(static_cast<int32_t>(c.num_running));
  stats.set_num_requests_waiting(static_cast<int32_t>(c.num_waiting));
  stats.set_kv_blocks_total(c.kv_blocks_total);
  stats.set_kv_blocks_free(c.kv_blocks_free + c.kv_blocks_cached);
  stats.set_prompt_tokens_total(c.prefill_tokens);
  stats.set_generation_tokens_total(c.decode_tokens);
  stats.set_preemptions_total(c.preemptions);
  stats.set_prefix_cache_queries_total(c.prefix_cache_queries);
  stats.set_prefix_cache_hits_total(c.prefix_cache_hits);
  stats.set_requests_in_flight(c.requests_in_flight);
  stats.set_steps_total(c.steps);
  stats.set_pipeline_drains_total(c.pipeline_drains);
  return stats;
}

ReplicaService::ReplicaService(Engine& engine, ReplicaServiceOptions options)
    : engine_(engine), options_(options) {}

grpc::Status ReplicaService::Generate(grpc::ServerContext* context,
                                      const v1::GenerateRequest* request,
                                      grpc::ServerWriter<v1::GenerateResponse>* writer) {
  const bool with_top = request->has_sampling() && request->sampling().logprobs() > 0;
  auto stream = std::make_shared<ResponseStream>();
  RequestId id = 0;
  {
    // Under mu_, so that a Drain either sees this call or refuses it.
    absl::MutexLock lock(&mu_);
    if (draining_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "replica is draining");
    absl::StatusOr<Request> converted = RequestFromProto(*request, TimeLeft(*context));
    if (!converted.ok()) return tessera::rpc::ToGrpcStatus(converted.status());
    absl::StatusOr<RequestId> submitted = engine_.Submit(*std::move(converted), stream);
    if (!submitted.ok()) return tessera::rpc::ToGrpcStatus(submitted.status());
    id = *submitted;
    calls_[id] = Call{request->request_id(), false};
  }
  absl::Cleanup forget = [this, id] {
    absl::MutexLock lock(&mu_);
    calls_.erase(id);
  };
  bool first = true;
  while (true) {
    absl::StatusOr<TokenEvent> event = stream->Next(options_.poll_interval);
    if (!event.ok()) {
      if (event.status().code() != absl::StatusCode::kDeadlineExceeded) {
        return tessera::rpc::ToGrpcStatus(
            event.status());  // kOutOfRange: cannot happen after the last event
      }
      if (context->IsCancelled()) {
        engine_.Cancel(id);
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
      }
      continue;
    }
    if (event->finish_reason.has_value() && event->status.code() == absl::StatusCode::kCancelled) {
      absl::MutexLock lock(&mu_);
      if (auto it = calls_.find(id); it != calls_.end() && it->second.aborted_by_drain) {
        event->status = absl::UnavailableError(
            "replica is draining: the request did not finish within the drain timeout");
      }
    }
    const v1::GenerateResponse response = ToResponse(*event, first, with_top);
    first = false;
    if (!writer->Write(response)) {
      engine_.Cancel(id);
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    if (event->finish_reason.has_value()) return grpc::Status::OK;
  }
}

grpc::Status ReplicaService::Abort(grpc::ServerContext* /*context*/,
                                   const v1::AbortRequest* request, v1::AbortResponse* response) {
  std::vector<RequestId> ids;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, call] : calls_) {
      if (call.request_id == request->request_id()) ids.push_back(id);
    }
  }
  for (RequestId id : ids) engine_.Cancel(id);
  response->set_found(!ids.empty());
  return grpc::Status::OK;
}

grpc::Status ReplicaService::Drain(grpc::ServerContext* context, const v1::DrainRequest* request,
                                   v1::DrainResponse* response) {
  const absl::Duration timeout =
      std::min(absl::Milliseconds(std::max<int64_t>(0, request->timeout_ms())), TimeLeft(*context));
  response->set_aborted(DrainUntil(absl::Now() + timeout, context));
  return grpc::Status::OK;
}

grpc::Status ReplicaService::GetStats(grpc::ServerContext* /*context*/,
                                      const v1::StatsRequest* /*request*/,
                                      v1::ReplicaStats* response) {
  *response = Stats();
  return grpc::Status::OK;
}

grpc::Status ReplicaService::ReserveKv(grpc::ServerContext* context,
                                       const v1::ReserveKvRequest* request,
                                       v1::ReserveKvResponse* response) {
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "replica is draining");
  }
  absl::StatusOr<Request> converted = RequestFromProto(request->request(), TimeLeft(*context));
  if (!converted.ok()) return tessera::rpc::ToGrpcStatus(converted.status());
  absl::StatusOr<KvDestination> d =
      engine_.ReserveKv(*converted, std::min(TimeLeft(*context), absl::Seconds(30)));
  if (!d.ok()) return tessera::rpc::ToGrpcStatus(d.status());
  response->set_token(d->token);
  response->set_num_cached_tokens(d->num_cached_tokens);
  response->set_destination(ToProto(*d).SerializeAsString());
  return grpc::Status::OK;
}

grpc::Status ReplicaService::ReleaseKv(grpc::ServerContext* /*context*/,
                                       const v1::ReleaseKvRequest* request,
                                       v1::ReleaseKvResponse* /*response*/) {
  engine_.ReleaseKv(request->token());
  return grpc::Status::OK;
}

int32_t ReplicaService::DrainFor(absl::Duration timeout) {
  return DrainUntil(absl::Now() + std::max(timeout, absl::ZeroDuration()), nullptr);
}

int32_t ReplicaService::DrainUntil(absl::Time deadline, const grpc::ServerContext* context) {
  std::vector<RequestId> rest;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return calls_.empty(); };
    // In slices, so that a Drain RPC whose client went away stops waiting.
    while (!idle() && absl::Now() < deadline) {
      if (context != nullptr && context->IsCancelled()) break;
      mu_.AwaitWithDeadline(absl::Condition(&idle),
                            std::min(deadline, absl::Now() + options_.poll_interval));
    }
    for (auto& [id, call] : calls_) {
      call.aborted_by_drain = true;
      rest.push_back(id);
    }
  }
  for (RequestId id : rest) engine_.Cancel(id);
  return static_cast<int32_t>(rest.size());
}

bool ReplicaService::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

int64_t ReplicaService::calls_in_flight() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(calls_.size());
}

v1::ReplicaStats ReplicaService::Stats() const {
  if (options_.kv_port == nullptr) return ToReplicaStats(engine_.counters());
  const KvPortCounters kv = options_.kv_port->counters();
  return ToReplicaStats(engine_.counters(), &kv);
}

}  // namespace tessera::worker::rpc
