// A Frontend with no cluster behind it, for tests of the public APIs (coordinator/api/). It has a
// real tokenizer (model::MakeByteLevelTokenizerFiles, vocab 512, Llama 3 chat template) and
// "generates" deterministically: token i of a request is `first_token + i` where first_token is
// (last prompt id * 7 + 3) % 200 + 32, so outputs depend on the prompt and are printable text.
// Finish reason: length after max_tokens, or stop when a generated token is in
// sampling.stop_token_ids (stop strings are not matched here) or a scripted output has ended. Knobs
// let tests inject failures, delays and admission errors; counters let them check cancellation.
// Thread-safe.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "coordinator/frontend.h"
#include "model/tokenizer.h"

namespace tessera::coordinator::testing {

class FakeFrontend final : public Frontend {
 public:
  FakeFrontend();

  // Knobs (set before or between requests).
  absl::Status generate_error;                        // non-OK: Generate returns it
  absl::Duration token_delay = absl::ZeroDuration();  // real time between tokens
  absl::Status fail_after_first_token;                // non-OK: ends requests with it
  std::atomic<bool> ready{true};
  // Non-empty: every request "generates" this text's tokens instead (then stops; or is cut at
  // max_tokens), for tests of what APIs make of a model's text (tool calls).
  std::string scripted_output;
  // ModelInfo::tool_call_parser (the fake's chat template is Llama 3.0, which has none).
  void set_tool_call_parser(std::string parser) { info_.tool_call_parser = std::move(parser); }
  void set_reasoning_parser(std::string parser) { info_.reasoning_parser = std::move(parser); }

  // What happened.
  std::atomic<int> generated{0};  // Generate calls that succeeded
  std::atomic<int> cancelled{0};  // streams cancelled (explicitly or by destruction) early
  std::atomic<int> finished{0};   // streams whose finished event was produced
  GenerateRequest last_request() const;
  std::vector<GenerateRequest> requests() const;  // every request Generate took, in order

  // The ids the fake generates for `prompt` with `max_tokens` (no stop ids): for expectations.
  static std::vector<int32_t> ExpectedTokens(const std::vector<int32_t>& prompt, int max_tokens);
  const model::Tokenizer& tokenizer() const { return *tokenizer_; }

  const ModelInfo& model() const override { return info_; }
  bool Live() const override { return true; }
  bool Ready() const override { return ready.load(); }
  absl::StatusOr<std::unique_ptr<GenerateStream>> Generate(GenerateRequest request) override;
  absl::StatusOr<std::string> ApplyChatTemplate(
      absl::Span<const model::ChatMessage> messages,
      const model::ChatTemplateOptions& options) const override;
  absl::StatusOr<std::vector<int32_t>> Tokenize(absl::string_view text,
                                                bool add_special_tokens) const override;
  absl::StatusOr<std::string> Detokenize(absl::Span<const int32_t> ids,
                                         bool skip_special_tokens) const override;
  absl::StatusOr<std::vector<std::string>> IdsToTokens(
      absl::Span<const int32_t> ids) const override {
    return tokenizer_->IdsToTokens(ids);
  }
  std::string RenderMetrics() const override;

 private:
  ModelInfo info_;
  std::unique_ptr<model::Tokenizer> tokenizer_;
  mutable absl::Mutex mu_;
  GenerateRequest last_request_ ABSL_GUARDED_BY(mu_);
  std::vector<GenerateRequest> requests_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera::coordinator::testing
