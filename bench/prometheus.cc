#include "bench/prometheus.h"

#include <cctype>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tessera::bench {
namespace {

bool IsNameChar(char c, bool first) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':' ||
         (!first && std::isdigit(static_cast<unsigned char>(c)));
}

bool ParseValue(absl::string_view text, double* out) {
  if (text == "+Inf" || text == "Inf") {
    *out = std::numeric_limits<double>::infinity();
    return true;
  }
  if (text == "-Inf") {
    *out = -std::numeric_limits<double>::infinity();
    return true;
  }
  if (text == "NaN") {
    *out = std::numeric_limits<double>::quiet_NaN();
    return true;
  }
  return absl::SimpleAtod(text, out);
}

absl::Status LineError(int64_t line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("line ", line, ": ", what));
}

// One sample line: name, optional {labels}, value, optional timestamp.
absl::StatusOr<PromSample> ParseSample(absl::string_view s, int64_t line) {
  PromSample sample;
  size_t i = 0;
  while (i < s.size() && IsNameChar(s[i], i == 0)) ++i;
  if (i == 0) return LineError(line, "expected a metric name");
  sample.name = std::string(s.substr(0, i));
  if (i < s.size() && s[i] == '{') {
    ++i;
    while (true) {
      while (i < s.size() && (s[i] == ' ' || s[i] == ',')) ++i;
      if (i < s.size() && s[i] == '}') {
        ++i;
        break;
      }
      const size_t start = i;
      while (i < s.size() && IsNameChar(s[i], i == start) && s[i] != ':') ++i;
      if (i == start) return LineError(line, "expected a label name or '}'");
      std::string label(s.substr(start, i - start));
      if (i >= s.size() || s[i] != '=') return LineError(line, "expected '=' after a label name");
      ++i;
      if (i >= s.size() || s[i] != '"') return LineError(line, "expected a quoted label value");
      ++i;
      std::string value;
      bool closed = false;
      while (i < s.size()) {
        const char c = s[i++];
        if (c == '"') {
          closed = true;
          break;
        }
        if (c == '\\' && i < s.size()) {
          const char e = s[i++];
          value.push_back(e == 'n' ? '\n' : e);
        } else {
          value.push_back(c);
        }
      }
      if (!closed) return LineError(line, "unterminated label value");
      sample.labels.emplace_back(std::move(label), std::move(value));
    }
  }
  const std::vector<absl::string_view> rest =
      absl::StrSplit(absl::StripAsciiWhitespace(s.substr(i)), ' ', absl::SkipEmpty());
  if (rest.empty() || rest.size() > 2) {
    return LineError(line, "expected a value (and an optional timestamp) after the name");
  }
  if (!ParseValue(rest[0], &sample.value)) {
    return LineError(line, absl::StrCat("not a number: '", rest[0], "'"));
  }
  return sample;
}

struct StageSource {
  const char* stage;
  const char* metrics[2];  // the first one exported wins
};
constexpr StageSource kStages[] = {
    {"queue", {"vllm:request_queue_time_seconds", nullptr}},
    {"prefill", {"vllm:request_prefill_time_seconds", nullptr}},
    {"decode", {"vllm:request_decode_time_seconds", nullptr}},
    {"inference", {"vllm:request_inference_time_seconds", nullptr}},
    {"kv_transfer", {"tessera_kv_transfer_seconds", nullptr}},
    {"ttft", {"vllm:time_to_first_token_seconds", nullptr}},
    {"itl", {"vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"}},
    {"e2e", {"vllm:e2e_request_latency_seconds", nullptr}},
};

std::map<double, double> DiffBuckets(const std::map<double, double>& before,
                                     const std::map<double, double>& after) {
  std::map<double, double> out;
  for (const auto& [le, count] : after) {
    auto it = before.find(le);
    out[le] = count - (it == before.end() ? 0.0 : it->second);
  }
  return out;
}

}  // namespace

const char* const kBreakdownCounters[] = {
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:num_preemptions_total",
    "tessera_kv_transfer_bytes_total",
    "tessera_kv_transfer_failures_total",
    "tessera_disaggregated_requests_total",
    "tessera_disaggregated_recoveries_total",
    "tessera_requests_rejected_total",
    "tessera_requests_failed_total",
    nullptr,
};

absl::StatusOr<std::vector<PromSample>> ParsePrometheusText(absl::string_view text) {
  std::vector<PromSample> samples;
  int64_t line = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++line;
    const absl::string_view s = absl::StripAsciiWhitespace(raw);
    if (s.empty() || s[0] == '#') continue;
    absl::StatusOr<PromSample> sample = ParseSample(s, line);
    if (!sample.ok()) return sample.status();
    samples.push_back(*std::move(sample));
  }
  return samples;
}

MetricsSnapshot MetricsSnapshot::FromSamples(const std::vector<PromSample>& samples) {
  MetricsSnapshot snapshot;
  constexpr absl::string_view kBucket = "_bucket";
  for (const PromSample& sample : samples) {
    if (std::isnan(sample.value)) continue;
    const absl::string_view name = sample.name;
    if (name.size() > kBucket.size() && name.substr(name.size() - kBucket.size()) == kBucket) {
      for (const auto& [label, value] : sample.labels) {
        double le = 0;
        if (label == "le" && ParseValue(value, &le)) {
          snapshot.buckets_[std::string(name.substr(0, name.size() - kBucket.size()))][le] +=
              sample.value;
        }
      }
      continue;
    }
    snapshot.sums_[sample.name] += sample.value;
  }
  return snapshot;
}

std::optional<double> MetricsSnapshot::Sum(const std::string& name) const {
  auto it = sums_.find(name);
  if (it == sums_.end()) return std::nullopt;
  return it->second;
}

std::map<double, double> MetricsSnapshot::Buckets(const std::string& base) const {
  auto it = buckets_.find(base);
  return it == buckets_.end() ? std::map<double, double>{} : it->second;
}

std::optional<double> HistogramQuantile(const std::map<double, double>& buckets, double q) {
  if (buckets.empty()) return std::nullopt;
  const double total = buckets.rbegin()->second;
  if (!(total > 0)) return std::nullopt;
  const double rank = q * total;
  double prev_bound = 0;
  double prev_count = 0;
  for (const auto& [bound, count] : buckets) {
    if (count >= rank) {
      if (std::isinf(bound)) return std::nullopt;
      if (count == prev_count) return bound;
      return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count);
    }
    prev_bound = bound;
    prev_count = count;
  }
  return std::nullopt;
}

ServerBreakdown DiffSnapshots(const MetricsSnapshot& before, const MetricsSnapshot& after) {
  ServerBreakdown breakdown;
  for (const StageSource& source : kStages) {
    for (const char* metric : source.metrics) {
      if (metric == nullptr) break;
      const std::string base = metric;
      const std::optional<double> sum_after = after.Sum(base + "_sum");
      const std::optional<double> count_after = after.Sum(base + "_count");
      if (!sum_after || !count_after) continue;
      StageDelta delta;
      delta.metric = base;
      delta.count = *count_after - before.Sum(base + "_count").value_or(0.0);
      const double sum = *sum_after - before.Sum(base + "_sum").value_or(0.0);
      delta.mean_ms = delta.count > 0 ? sum / delta.count * 1000.0 : 0.0;
      const std::map<double, double> buckets =
          DiffBuckets(before.Buckets(base), after.Buckets(base));
      if (std::optional<double> p50 = HistogramQuantile(buckets, 0.5)) delta.p50_ms = *p50 * 1000;
      if (std::optional<double> p99 = HistogramQuantile(buckets, 0.99)) delta.p99_ms = *p99 * 1000;
      breakdown.stages[source.stage] = std::move(delta);
      break;
    }
  }
  for (const char* const* name = kBreakdownCounters; *name != nullptr; ++name) {
    const std::optional<double> value = after.Sum(*name);
    if (value) breakdown.counters[*name] = *value - before.Sum(*name).value_or(0.0);
  }
  return breakdown;
}

}  // namespace tessera::bench
