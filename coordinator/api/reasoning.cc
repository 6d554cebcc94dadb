#include "coordinator/api/reasoning.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "coordinator/api/markers.h"

namespace tessera::coordinator::api {
namespace {

constexpr absl::string_view kStart = "<think>";
constexpr absl::string_view kEnd = "</think>";

}  // namespace

bool IsReasoningParser(absl::string_view name) {
  return name.empty() || name == "qwen3" || name == "deepseek_r1";
}

ReasoningSplit SplitReasoning(absl::string_view parser, absl::string_view text) {
  ReasoningSplit out;
  if (parser.empty()) {
    out.content = std::string(text);
    return out;
  }
  const bool opened = absl::ConsumePrefix(&text, kStart);
  if (parser == "qwen3" && !opened) {
    out.content = std::string(text);
    return out;
  }
  const size_t end = text.find(kEnd);
  if (end == absl::string_view::npos) {
    out.reasoning = std::string(text);
    return out;
  }
  out.reasoning = std::string(text.substr(0, end));
  if (end + kEnd.size() < text.size()) out.content = std::string(text.substr(end + kEnd.size()));
  return out;
}

int32_t GrammarStartToken(
    absl::string_view parser, absl::string_view prompt,
    const std::function<absl::StatusOr<std::vector<int32_t>>(absl::string_view)>& tokenize) {
  if (parser.empty()) return -1;
  if (absl::EndsWith(absl::StripTrailingAsciiWhitespace(prompt), kEnd)) return -1;
  absl::StatusOr<std::vector<int32_t>> ids = tokenize(kEnd);
  return ids.ok() && ids->size() == 1 ? ids->front() : -1;
}

ReasoningStream::ReasoningStream(std::string parser) : parser_(std::move(parser)) {
  if (parser_.empty()) state_ = State::kContent;
}

ReasoningStream::Delta ReasoningStream::Add(absl::string_view text) {
  Delta out;
  pending_.append(text.data(), text.size());
  Drain(out, /*final=*/false);
  return out;
}

ReasoningStream::Delta ReasoningStream::Finish() {
  Delta out;
  Drain(out, /*final=*/true);
  return out;
}

void ReasoningStream::Drain(Delta& out, bool final) {
  if (state_ == State::kStart) {
    const absl::string_view head = pending_;
    if (!final && head.size() < kStart.size() && absl::StartsWith(kStart, head)) {
      return;  // may still become <think>
    }
    if (absl::StartsWith(head, kStart)) {
      pending_.erase(0, kStart.size());
      state_ = State::kReasoning;
    } else {
      state_ = parser_ == "qwen3" ? State::kContent : State::kReasoning;
    }
  }
  if (state_ == State::kReasoning) {
    const size_t end = absl::string_view(pending_).find(kEnd);
    if (end != absl::string_view::npos) {
      out.reasoning += pending_.substr(0, end);
      pending_.erase(0, end + kEnd.size());
      state_ = State::kContent;
    } else {
      const size_t keep = final ? 0 : MarkerPrefixAtEnd(pending_, kEnd);
      out.reasoning += pending_.substr(0, pending_.size() - keep);
      pending_.erase(0, pending_.size() - keep);
      return;
    }
  }
  out.content += pending_;
  pending_.clear();
}

}  // namespace tessera::coordinator::api
