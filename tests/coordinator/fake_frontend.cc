#include "tests/coordinator/fake_frontend.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status_macros.h"
#include "model/chat_template.h"

namespace tessera::coordinator::testing {
namespace {

class FakeStream final : public GenerateStream {
 public:
  FakeStream(FakeFrontend& owner, GenerateRequest request, std::vector<int32_t> prompt,
             absl::Duration token_delay, absl::Status fail_after_first,
             std::optional<std::vector<int32_t>> script)
      : owner_(owner),
        request_(std::move(request)),
        prompt_(std::move(prompt)),
        expected_(FakeFrontend::ExpectedTokens(prompt_, request_.sampling.max_tokens)),
        token_delay_(token_delay),
        fail_after_first_(std::move(fail_after_first)),
        decoder_(owner.tokenizer(), request_.skip_special_tokens) {
    if (script.has_value()) {
      stop_at_end_ = static_cast<int>(script->size()) <= request_.sampling.max_tokens;
      if (!stop_at_end_) script->resize(static_cast<size_t>(request_.sampling.max_tokens));
      expected_ = std::move(*script);
    }
  }

  ~FakeStream() override {
    if (!done_) Cancel();
  }

  absl::StatusOr<GenerateEvent> Next(absl::Duration timeout) override {
    if (done_) return absl::OutOfRangeError("the finished event was already returned");
    GenerateEvent event;
    event.prompt_tokens = static_cast<int32_t>(prompt_.size());
    if (cancelled_.load()) return Finish(event, absl::CancelledError("request cancelled"));
    if (absl::Now() > request_.deadline) {
      return Finish(event, absl::DeadlineExceededError("request deadline passed"));
    }
    if (token_delay_ > absl::ZeroDuration()) {
      if (token_delay_ > timeout) {
        absl::SleepFor(timeout);
        return absl::DeadlineExceededError("no event yet");
      }
      absl::SleepFor(token_delay_);
      if (cancelled_.load()) return Finish(event, absl::CancelledError("request cancelled"));
    }
    if (next_ == 1 && !fail_after_first_.ok()) return Finish(event, fail_after_first_);
    const int32_t id = expected_[next_++];
    event.token_ids.push_back(id);
    event.text = decoder_.Append(id);
    if (request_.sampling.logprobs > 0) {
      event.logprobs.push_back(-0.5f);
      event.top_logprobs.push_back({{id, -0.5f}, {id + 1, -1.5f}});
      event.top_logprobs.back().resize(request_.sampling.logprobs, {id + 2, -9.0f});
    }
    event.completion_tokens = next_;
    bool stop = stop_at_end_ && next_ == static_cast<int>(expected_.size());
    for (int32_t s : request_.sampling.stop_token_ids) stop = stop || s == id;
    if (stop || next_ >= static_cast<int>(expected_.size())) {
      event.text += decoder_.Flush();
      event.finished = true;
      event.finish_reason = stop ? model::FinishReason::kStop : model::FinishReason::kLength;
      done_ = true;
      owner_.finished++;
    }
    return event;
  }

  void Cancel() override {
    if (!cancelled_.exchange(true) && !done_) owner_.cancelled++;
  }
  const std::string& request_id() const override { return request_.request_id; }
  const std::vector<int32_t>& prompt_token_ids() const override { return prompt_; }

 private:
  GenerateEvent Finish(GenerateEvent event, absl::Status status) {
    event.finished = true;
    event.finish_reason = model::FinishReason::kAbort;
    event.status = std::move(status);
    event.completion_tokens = next_;
    done_ = true;
    owner_.finished++;
    return event;
  }

  FakeFrontend& owner_;
  GenerateRequest request_;
  std::vector<int32_t> prompt_;
  std::vector<int32_t> expected_;
  absl::Duration token_delay_;
  absl::Status fail_after_first_;
  model::IncrementalDecoder decoder_;
  int next_ = 0;
  bool stop_at_end_ = false;  // a scripted output ends with stop
  bool done_ = false;         // reader thread only
  std::atomic<bool> cancelled_{false};
};

}  // namespace

FakeFrontend::FakeFrontend() {
  auto files = model::MakeByteLevelTokenizerFiles(512);
  TESSERA_CHECK(files.ok());
  auto tokenizer = model::Tokenizer::FromJson(files->tokenizer_json, "fake tokenizer.json");
  TESSERA_CHECK(tokenizer.ok());
  auto config = model::ParseTokenizerConfig(files->tokenizer_config_json, "fake config");
  TESSERA_CHECK(config.ok());
  TESSERA_CHECK((*tokenizer)->SetConfig(*config).ok());
  tokenizer_ = std::move(*tokenizer);
  info_.name = "fake-model";
  info_.root = "/models/fake-model";
  info_.max_model_len = 256;
  info_.vocab_size = 512;
  info_.created_unix_s = 1700000000;
  info_.has_chat_template = true;
}

std::vector<int32_t> FakeFrontend::ExpectedTokens(const std::vector<int32_t>& prompt,
                                                  int max_tokens) {
  const int32_t first = prompt.empty() ? 32 : (prompt.back() * 7 + 3) % 200 + 32;
  std::vector<int32_t> out;
  for (int i = 0; i < max_tokens; ++i) out.push_back(first + i % 64);
  return out;
}

GenerateRequest FakeFrontend::last_request() const {
  absl::MutexLock lock(&mu_);
  return last_request_;
}

std::vector<GenerateRequest> FakeFrontend::requests() const {
  absl::MutexLock lock(&mu_);
  return requests_;
}

absl::StatusOr<std::unique_ptr<GenerateStream>> FakeFrontend::Generate(GenerateRequest request) {
  if (!generate_error.ok()) return generate_error;
  TESSERA_RETURN_IF_ERROR(model::ValidateSamplingParams(request.sampling, info_.vocab_size));
  std::vector<int32_t> prompt;
  if (request.prompt_token_ids.has_value()) {
    prompt = *request.prompt_token_ids;
  } else {
    auto ids = tokenizer_->Encode(request.prompt_text, request.add_special_tokens);
    if (!ids.ok()) return ids.status();
    prompt = std::move(*ids);
  }
  if (prompt.empty()) return absl::InvalidArgumentError("prompt: must not be empty");
  for (int32_t id : prompt) {
    if (id < 0 || id >= info_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt: token id ", id, " outside the vocabulary [0, 512)"));
    }
  }
  if (static_cast<int64_t>(prompt.size()) + request.sampling.max_tokens > info_.max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", prompt.size(), " tokens) + max_tokens (", request.sampling.max_tokens,
        ") exceeds the model's context length ", info_.max_model_len));
  }
  if (request.request_id.empty()) request.request_id = absl::StrCat("cmpl-fake-", generated.load());
  {
    absl::MutexLock lock(&mu_);
    last_request_ = request;
    requests_.push_back(request);
  }
  std::optional<std::vector<int32_t>> script;
  if (!scripted_output.empty()) {
    TESSERA_ASSIGN_OR_RETURN(script, tokenizer_->Encode(scripted_output, false));
  }
  generated++;
  return std::unique_ptr<GenerateStream>(new FakeStream(*this, std::move(request),
                                                        std::move(prompt), token_delay,
                                                        fail_after_first_token, std::move(script)));
}

absl::StatusOr<std::string> FakeFrontend::ApplyChatTemplate(
    absl::Span<const model::ChatMessage> messages,
    const model::ChatTemplateOptions& options) const {
  auto chat = model::ChatTemplate::FromTokenizer(*tokenizer_);
  if (!chat.ok()) return chat.status();
  return chat->Apply(messages, options);
}

absl::StatusOr<std::vector<int32_t>> FakeFrontend::Tokenize(absl::string_view text,
                                                            bool add_special_tokens) const {
  return tokenizer_->Encode(text, add_special_tokens);
}

absl::StatusOr<std::string> FakeFrontend::Detokenize(absl::Span<const int32_t> ids,
                                                     bool skip_special_tokens) const {
  return tokenizer_->Decode(ids, skip_special_tokens);
}

std::string FakeFrontend::RenderMetrics() const {
  return absl::StrCat("# HELP vllm:num_requests_running Number of requests running.\n",
                      "# TYPE vllm:num_requests_running gauge\n",
                      "vllm:num_requests_running{model_name=\"fake-model\"} 0\n");
}

}  // namespace tessera::coordinator::testing
