#include "bench/client.h"

#include <utility>

namespace tessera::bench {

ResponseTimer::ResponseTimer(const Clock& clock, absl::Time run_start, int64_t prompt_tokens,
                             RequestRecord* record)
    : clock_(clock), record_(record), sent_(clock.MonotonicNow()) {
  record_->prompt_tokens = prompt_tokens;
  record_->start_s = absl::ToDoubleSeconds(sent_ - run_start);
}

void ResponseTimer::OnResponse(int64_t tokens) {
  const absl::Time now = clock_.MonotonicNow();
  last_response_ = now;
  any_response_ = true;
  if (tokens <= 0) return;
  if (record_->output_tokens == 0) {
    record_->ttft_s = absl::ToDoubleSeconds(now - sent_);
  } else {
    record_->itl_s.push_back(absl::ToDoubleSeconds(now - last_token_response_));
  }
  last_token_response_ = now;
  record_->output_tokens += tokens;
}

void ResponseTimer::Succeed() {
  if (record_->output_tokens == 0) {
    Fail("the server finished the request without sending a token");
    return;
  }
  record_->success = true;
  record_->error.clear();
  record_->latency_s =
      absl::ToDoubleSeconds((any_response_ ? last_response_ : clock_.MonotonicNow()) - sent_);
}

void ResponseTimer::Fail(std::string error) {
  record_->success = false;
  record_->error = std::move(error);
  record_->latency_s = absl::ToDoubleSeconds(clock_.MonotonicNow() - sent_);
}

}  // namespace tessera::bench
