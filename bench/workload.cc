#include "bench/workload.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "bench/random.h"

namespace tessera::bench {
namespace {

constexpr double kChatInputSigma = 1.0;
constexpr double kChatOutputSigma = 0.8;
constexpr double kChatClip = 8.0;

// vLLM's random dataset (range_ratio r): uniform in [round(L*(1-r)), round(L*(1+r))], >= 1.
int64_t UniformLength(Rng& rng, int64_t length, double range_ratio) {
  const auto lo =
      static_cast<int64_t>(std::llround(static_cast<double>(length) * (1 - range_ratio)));
  const auto hi =
      static_cast<int64_t>(std::llround(static_cast<double>(length) * (1 + range_ratio)));
  return std::max<int64_t>(1, rng.UniformInt(std::max<int64_t>(1, lo), std::max<int64_t>(1, hi)));
}

int64_t LogNormalLength(Rng& rng, int64_t median, double sigma) {
  const double x = static_cast<double>(median) * std::exp(sigma * rng.Normal());
  const double clipped = std::clamp(std::round(x), 1.0, kChatClip * static_cast<double>(median));
  return static_cast<int64_t>(clipped);
}

void AppendRandomTokens(Rng& rng, int64_t n, int64_t vocab, std::vector<int32_t>* out) {
  out->reserve(out->size() + static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    out->push_back(static_cast<int32_t>(rng.UniformInt(0, vocab - 1)));
}

}  // namespace

absl::StatusOr<std::vector<RequestSpec>> GenerateRequests(const WorkloadSpec& spec, int64_t count,
                                                          int64_t vocab, uint64_t seed) {
  if (vocab < 1)
    return absl::InvalidArgumentError(absl::StrCat("vocab: must be >= 1, got ", vocab));
  if (spec.dataset == Dataset::kMooncake) {
    return absl::InvalidArgumentError("a Mooncake workload comes from its trace, not a generator");
  }
  Rng rng(Mix64(seed));
  std::vector<std::vector<int32_t>> prefixes;
  if (spec.dataset == Dataset::kPrefix) {
    for (int64_t p = 0; p < spec.num_prefixes; ++p) {
      AppendRandomTokens(rng, spec.prefix_len, vocab, &prefixes.emplace_back());
    }
  }
  std::vector<RequestSpec> requests;
  requests.reserve(static_cast<size_t>(std::max<int64_t>(count, 0)));
  for (int64_t i = 0; i < count; ++i) {
    RequestSpec request;
    int64_t input_len = spec.input_len;
    switch (spec.dataset) {
      case Dataset::kFixed:
        request.output_len = spec.output_len;
        break;
      case Dataset::kRandom:
      case Dataset::kPrefix:
        input_len = UniformLength(rng, spec.input_len, spec.range_ratio);
        request.output_len = UniformLength(rng, spec.output_len, spec.range_ratio);
        break;
      case Dataset::kChat:
        input_len = LogNormalLength(rng, spec.input_len, kChatInputSigma);
        request.output_len = LogNormalLength(rng, spec.output_len, kChatOutputSigma);
        break;
      case Dataset::kMooncake:
        break;
    }
    if (spec.dataset == Dataset::kPrefix) {
      request.prompt = prefixes[static_cast<size_t>(i % spec.num_prefixes)];
    }
    AppendRandomTokens(rng, input_len, vocab, &request.prompt);
    requests.push_back(std::move(request));
  }
  return requests;
}

std::vector<RequestSpec> RequestsFromTrace(const std::vector<TraceEntry>& trace, int64_t block_size,
                                           int64_t vocab, uint64_t salt) {
  std::vector<RequestSpec> requests;
  requests.reserve(trace.size());
  const uint64_t salted = Mix64(salt ^ 0x6d6f6f6e63616b65ULL);  // "mooncake"
  for (size_t r = 0; r < trace.size(); ++r) {
    const TraceEntry& entry = trace[r];
    RequestSpec request;
    request.output_len = entry.output_length;
    request.prompt.reserve(static_cast<size_t>(entry.input_length));
    for (int64_t pos = 0; pos < entry.input_length; ++pos) {
      const int64_t block = pos / block_size;
      uint64_t h = 0;
      if (block < static_cast<int64_t>(entry.hash_ids.size())) {
        h = Mix64(salted ^ Mix64(static_cast<uint64_t>(entry.hash_ids[block])) ^
                  static_cast<uint64_t>(pos % block_size));
      } else {  // past the listed blocks: unique to this request
        h = Mix64(Mix64(salted + 1 + r) ^ static_cast<uint64_t>(pos));
      }
      request.prompt.push_back(static_cast<int32_t>(h % static_cast<uint64_t>(vocab)));
    }
    requests.push_back(std::move(request));
  }
  return requests;
}

absl::Status CheckFitsContext(const std::vector<RequestSpec>& requests, int64_t max_model_len) {
  if (max_model_len <= 0) return absl::OkStatus();
  for (size_t i = 0; i < requests.size(); ++i) {
    const int64_t need = static_cast<int64_t>(requests[i].prompt.size()) + requests[i].output_len;
    if (need > max_model_len) {
      return absl::InvalidArgumentError(absl::StrCat(
          "request ", i, " needs ", requests[i].prompt.size(), " prompt + ", requests[i].output_len,
          " output tokens = ", need, ", more than the model's context of ", max_model_len,
          " tokens; choose shorter lengths (--random-input-len, --random-output-len, "
          "--prefix-len) or a model with a longer context"));
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera::bench
