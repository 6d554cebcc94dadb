#include "coordinator/disaggregated_call.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"

namespace tessera::coordinator {

std::vector<std::shared_ptr<ReplicaEntry>> Pool(
    const std::vector<std::shared_ptr<ReplicaEntry>>& live, const std::string& role) {
  std::vector<std::shared_ptr<ReplicaEntry>> out;
  for (const auto& r : live) {
    if (r->info().role == role && !r->lost()) out.push_back(r);
  }
  return out;
}

DisaggregatedCall::DisaggregatedCall(ReplicaRegistry& registry, Router& router,
                                     ReplicaRequest request, DisaggregationOptions options)
    : registry_(registry),
      router_(router),
      request_(std::move(request)),
      options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<DisaggregatedCall>> DisaggregatedCall::Start(
    ReplicaRegistry& registry, Router& router, ReplicaRequest request,
    DisaggregationOptions options) {
  std::unique_ptr<DisaggregatedCall> call(
      new DisaggregatedCall(registry, router, std::move(request), std::move(options)));
  if (absl::Status s = call->Place(); !s.ok()) return s;
  return call;
}

DisaggregatedCall::~DisaggregatedCall() {
  if (call_ != nullptr) call_->Cancel();
  call_.reset();
  Release();
  Leave();
}

void DisaggregatedCall::Cancel() {
  cancelled_ = true;
  // call_ is replaced only on the reader thread; Cancel on the current one is enough because the
  // reader stops placing once cancelled_ is set.
  if (call_ != nullptr) call_->Cancel();
}

std::string DisaggregatedCall::prefill_name() const {
  return prefill_ == nullptr ? "" : prefill_->info().name;
}
std::string DisaggregatedCall::decode_name() const {
  return decode_ == nullptr ? "" : decode_->info().name;
}

bool DisaggregatedCall::Retryable(const absl::Status& s) {
  // Lost or refusing replicas, transfers that failed or were refused, KV that arrived damaged,
  // a reservation that lapsed: all are cured by trying again elsewhere.
  return absl::IsUnavailable(s) || absl::IsResourceExhausted(s) || absl::IsDataLoss(s) ||
         absl::IsPermissionDenied(s) || absl::IsNotFound(s) || absl::IsAborted(s);
}

ReplicaRequest DisaggregatedCall::Continuation() const {
  ReplicaRequest r = request_;
  r.prompt.insert(r.prompt.end(), sent_.begin(), sent_.end());
  const auto n = static_cast<int32_t>(sent_.size());
  r.sampling.max_tokens = request_.sampling.max_tokens - n;
  r.sampling.min_tokens = std::max(0, request_.sampling.min_tokens - n);
  return r;
}

void DisaggregatedCall::Hold(std::shared_ptr<ReplicaEntry> decode, KvReservation reservation) {
  Drop();
  decode_ = std::move(decode);
  reservation_ = std::move(reservation);
  decode_->HoldKv(reservation_->token);  // renewed with D's heartbeats until dropped
  // The request is D's from now on for routing: concurrent placements see it before D's next
  // heartbeat reports the blocks it reserved.
  decode_->AddInFlight(1);
}

void DisaggregatedCall::Drop() {
  if (reservation_.has_value() && decode_ != nullptr) {
    decode_->DropKv(reservation_->token);
    decode_->AddInFlight(-1);
  }
  reservation_.reset();
}

void DisaggregatedCall::Release() {
  if (!reservation_.has_value() || decode_ == nullptr) return;
  if (absl::Status s = decode_->client().ReleaseKv(reservation_->token); !s.ok()) {
    // It lapses with its lease on the decode replica.
    TESSERA_LOG(WARNING) << "releasing KV reservation on " << decode_->info().name << ": " << s;
  }
  Drop();
}

void DisaggregatedCall::Leave() {
  if (in_flight_on_ != nullptr) in_flight_on_->AddInFlight(-1);
  in_flight_on_ = nullptr;
}

absl::Status DisaggregatedCall::Place() {
  const ReplicaRequest r = Continuation();
  const int64_t total = static_cast<int64_t>(r.prompt.size()) + r.sampling.max_tokens;
  absl::Status last = absl::UnavailableError("no prefill and decode replica pair is available");
  for (int attempt = 0; attempt < options_.max_placement_attempts; ++attempt) {
    if (cancelled_.load()) return absl::CancelledError("request cancelled");
    const std::vector<std::shared_ptr<ReplicaEntry>> live = registry_.Live();
    RouteChoice d = router_.Pick(Pool(live, "decode"), r.prompt, total, r.cache_salt, failed_);
    if (d.replica == nullptr) {
      return absl::UnavailableError(absl::StrCat("no live decode replica can hold ", total,
                                                 " tokens (last error: ", last.message(),
                                                 "); retry the request"));
    }
    absl::StatusOr<KvReservation> reserved = d.replica->client().ReserveKv(r);
    if (!reserved.ok()) {
      last = reserved.status();
      if (!Retryable(last)) return last;
      failed_.push_back(d.replica.get());
      continue;
    }
    RouteChoice p = router_.Pick(Pool(live, "prefill"), r.prompt,
                                 static_cast<int64_t>(r.prompt.size()) + 1, r.cache_salt, failed_);
    if (p.replica == nullptr) {
      Hold(d.replica, *std::move(reserved));
      Release();
      return absl::UnavailableError(
          absl::StrCat("no live prefill replica is available (last error: ", last.message(),
                       "); retry the request"));
    }
    ReplicaRequest to_prefill = r;
    to_prefill.kv_destination = reserved->destination;
    Hold(d.replica, *std::move(reserved));
    absl::StatusOr<std::unique_ptr<ReplicaCall>> call =
        p.replica->client().Generate(std::move(to_prefill));
    if (!call.ok()) {
      Release();
      last = call.status();
      if (!Retryable(last)) return last;
      failed_.push_back(p.replica.get());
      continue;
    }
    prefill_ = p.replica;
    call_ = *std::move(call);
    phase_ = Phase::kPrefill;
    Leave();
    in_flight_on_ = prefill_;
    prefill_->AddInFlight(1);
    return absl::OkStatus();
  }
  return absl::UnavailableError(absl::StrCat(
      "could not place the request on a prefill and a decode replica: ", last.message(),
      "; retry the request"));
}

std::optional<ReplicaEvent> DisaggregatedCall::Recover(const std::string& reason,
                                                       const absl::Status& why) {
  TESSERA_LOG(WARNING) << "request " << request_.request_id << ": " << reason << " (" << why
                       << "); " << sent_.size() << " tokens sent so far";
  if (call_ != nullptr) call_->Cancel();
  call_.reset();
  Release();
  Leave();
  ReplicaEvent end;
  end.finished = true;
  end.finish_reason = model::FinishReason::kAbort;
  if (cancelled_.load()) {
    end.status = absl::CancelledError("request cancelled");
    phase_ = Phase::kDone;
    return end;
  }
  if (recoveries_ >= options_.max_recoveries) {
    end.status = absl::UnavailableError(absl::StrCat(
        "the request failed ", recoveries_ + 1, " times (", why.message(), "); retry the request"));
    phase_ = Phase::kDone;
    return end;
  }
  ++recoveries_;
  if (options_.on_recovery) options_.on_recovery(reason);
  if (absl::Status s = Place(); !s.ok()) {
    end.status = absl::UnavailableError(
        absl::StrCat(why.message(), "; no replica could take the request over: ", s.message()));
    phase_ = Phase::kDone;
    return end;
  }
  return std::nullopt;
}

absl::StatusOr<ReplicaEvent> DisaggregatedCall::Next(absl::Duration timeout) {
  if (pending_end_.has_value()) {
    ReplicaEvent end = *std::move(pending_end_);
    pending_end_.reset();
    return end;
  }
  if (phase_ == Phase::kDone)
    return absl::OutOfRangeError("the finished event was already returned");
  const absl::Time give_up = absl::Now() + timeout;
  while (true) {
    // A replica that stopped heartbeating will not answer: move on without waiting for TCP.
    const std::shared_ptr<ReplicaEntry>& current = phase_ == Phase::kPrefill ? prefill_ : decode_;
    if (current != nullptr && current->lost()) {
      failed_.push_back(current.get());
      const char* reason = phase_ == Phase::kPrefill ? "prefill_lost" : "decode_lost";
      if (auto end = Recover(reason, absl::UnavailableError(absl::StrCat(
                                         "replica ", current->info().name, " was lost")));
          end.has_value()) {
        return *end;
      }
      continue;
    }
    const absl::Duration wait =
        std::min(options_.poll_interval, std::max(give_up - absl::Now(), absl::ZeroDuration()));
    absl::StatusOr<ReplicaEvent> event = call_->Next(wait);
    if (absl::IsDeadlineExceeded(event.status())) {
      if (absl::Now() >= give_up) return event.status();
      continue;
    }
    if (!event.ok()) return event.status();
    if (phase_ == Phase::kPrefill) {
      if (!event->finished) {  // a prefill replica sends one event; be liberal anyway
        sent_.insert(sent_.end(), event->token_ids.begin(), event->token_ids.end());
        return *event;
      }
      if (event->kv_handoff && event->status.ok() && !event->token_ids.empty()) {
        // Hand over to D: it verifies the KV and continues after the first token.
        const int32_t first = event->token_ids.back();
        ReplicaRequest to_decode = Continuation();
        to_decode.kv_import =
            ReplicaRequest::KvImport{reservation_->token, first, std::move(event->kv_checksums)};
        sent_.insert(sent_.end(), event->token_ids.begin(), event->token_ids.end());
        Leave();
        absl::StatusOr<std::unique_ptr<ReplicaCall>> decode =
            decode_->client().Generate(std::move(to_decode));
        ReplicaEvent out = *std::move(event);
        out.finished = false;
        out.finish_reason.reset();
        out.kv_handoff = false;
        out.kv_checksums.clear();
        prefill_timings_ = out.timings;  // merged into the decode replica's at the end
        out.timings.reset();
        if (decode.ok()) {
          Drop();  // D owns it now: it commits it or releases it
          // Both now hold the prompt's blocks: the router's prefix estimates learn it.
          for (ReplicaEntry* r : {prefill_.get(), decode_.get()}) {
            r->prefix_index().Insert(
                PromptBlockChain(request_.prompt, r->info().block_size, request_.cache_salt));
          }
          call_ = *std::move(decode);
          phase_ = Phase::kDecode;
          in_flight_on_ = decode_;
          decode_->AddInFlight(1);
          return out;
        }
        // D refused before taking the reservation over: the token stands; place the rest anew.
        if (absl::IsUnavailable(decode.status())) failed_.push_back(decode_.get());
        if (auto end = Recover("decode_refused", decode.status()); end.has_value()) {
          pending_end_ = std::move(end);  // the token now, the error with the next call
        }
        return out;
      }
      if (event->status.ok() || !Retryable(event->status)) {
        // The first token ended the request (EOS, max_tokens 1), or it failed for good.
        Release();
        Leave();
        phase_ = Phase::kDone;
        return *event;
      }
      if (absl::IsUnavailable(event->status)) failed_.push_back(prefill_.get());
      if (auto end = Recover("prefill_failed", event->status); end.has_value()) return *end;
      continue;
    }
    // Decode phase.
    sent_.insert(sent_.end(), event->token_ids.begin(), event->token_ids.end());
    if (event->finished && !event->status.ok() && Retryable(event->status) && !cancelled_.load()) {
      if (absl::IsUnavailable(event->status)) failed_.push_back(decode_.get());
      if (auto end = Recover("decode_failed", event->status); end.has_value()) {
        end->token_ids = event->token_ids;
        return *end;
      }
      if (!event->token_ids.empty()) {
        ReplicaEvent out = *std::move(event);
        out.finished = false;
        out.finish_reason.reset();
        out.status = absl::OkStatus();
        return out;
      }
      continue;
    }
    if (event->finished) {
      Leave();
      phase_ = Phase::kDone;
      if (prefill_timings_.has_value()) {
        // The client's view: P's queue and prefill, the KV transfer, and D's whole time.
        const RequestTimings d = event->timings.value_or(RequestTimings{});
        RequestTimings t = *prefill_timings_;
        t.decode_seconds = d.queue_seconds + d.prefill_seconds + d.decode_seconds;
        event->timings = t;
      }
    }
    return *event;
  }
}

}  // namespace tessera::coordinator
