#include "worker/request.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace tessera::worker {

void ResponseStream::OnEvent(const TokenEvent& event) {
  absl::MutexLock lock(&mu_);
  events_.push_back(event);
  if (event.finish_reason.has_value()) finished_ = true;
}

absl::StatusOr<TokenEvent> ResponseStream::Next(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  if (drained_) return absl::OutOfRangeError("the request's last event was already returned");
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !events_.empty(); };
  if (!mu_.AwaitWithTimeout(absl::Condition(&ready), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat("no event of request ", request_id_, " within ",
                                                    absl::FormatDuration(timeout)));
  }
  TokenEvent event = std::move(events_.front());
  events_.pop_front();
  if (event.finish_reason.has_value()) drained_ = true;
  return event;
}

absl::StatusOr<RequestOutput> ResponseStream::Collect(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  RequestOutput output;
  output.request_id = request_id_;
  bool first = true;
  for (;;) {
    absl::StatusOr<TokenEvent> event = Next(deadline - absl::Now());
    if (!event.ok()) return event.status();
    if (first) output.num_cached_tokens = event->num_cached_tokens;
    first = false;
    if (event->token_id >= 0) {
      output.token_ids.push_back(event->token_id);
      output.logprobs.push_back(event->logprob);
      output.top_logprobs.push_back(std::move(event->top_logprobs));
    }
    if (event->finish_reason.has_value()) {
      output.finish_reason = *event->finish_reason;
      output.status = event->status;
      return output;
    }
  }
}

}  // namespace tessera::worker
