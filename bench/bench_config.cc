#include "bench/bench_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace tessera::bench {
namespace {

absl::Status Invalid(absl::string_view flag, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(flag, ": ", message));
}

}  // namespace

absl::string_view EndpointName(Endpoint endpoint) {
  return endpoint == Endpoint::kKServeGrpc ? "tessera-grpc" : "openai";
}

absl::string_view DatasetName(Dataset dataset) {
  switch (dataset) {
    case Dataset::kRandom:
      return "random";
    case Dataset::kFixed:
      return "fixed";
    case Dataset::kChat:
      return "chat";
    case Dataset::kPrefix:
      return "prefix";
    case Dataset::kMooncake:
      return "mooncake";
  }
  return "unknown";
}

int EffectivePort(const BenchConfig& config) {
  if (config.port != 0) return config.port;
  return config.endpoint == Endpoint::kKServeGrpc ? 8001 : 8000;
}

absl::Status ValidateBenchConfig(const BenchConfig& config) {
  if (config.host.empty()) return Invalid("--host", "must not be empty");
  if (config.port < 0 || config.port > 65535) {
    return Invalid("--port", absl::StrCat("must be in [1, 65535], got ", config.port));
  }
  const WorkloadSpec& w = config.workload;
  const bool trace = w.dataset == Dataset::kMooncake;
  if (trace && w.dataset_path.empty()) {
    return Invalid("--dataset-path", "the mooncake dataset needs a trace file");
  }
  if (!trace && !w.dataset_path.empty()) {
    return Invalid("--dataset-path", absl::StrCat("is only read by --dataset-name mooncake, not ",
                                                  DatasetName(w.dataset)));
  }
  if (!trace) {
    if (w.input_len < 1) return Invalid("--random-input-len", "must be >= 1");
    if (w.output_len < 1) return Invalid("--random-output-len", "must be >= 1");
  }
  if (!(w.range_ratio >= 0 && w.range_ratio < 1)) {
    return Invalid("--random-range-ratio", absl::StrCat("must be in [0, 1), got ", w.range_ratio));
  }
  if (w.dataset == Dataset::kPrefix) {
    if (w.prefix_len < 1) return Invalid("--prefix-len", "the prefix dataset needs >= 1");
    if (w.num_prefixes < 1) return Invalid("--num-prefixes", "must be >= 1");
  }
  if (w.trace_block_size < 1) return Invalid("--trace-block-size", "must be >= 1");
  if (config.request_rates.empty() && !trace) {
    return Invalid("--request-rate", "give at least one rate (inf: all at once)");
  }
  for (double rate : config.request_rates) {
    if (!(rate > 0)) {
      return Invalid("--request-rate", absl::StrCat("rates must be > 0 (or inf), got ", rate));
    }
  }
  if (!(config.burstiness > 0) || std::isinf(config.burstiness)) {
    return Invalid("--burstiness",
                   absl::StrCat("must be a positive number, got ", config.burstiness));
  }
  if (config.max_concurrency < 0) return Invalid("--max-concurrency", "must be >= 0");
  if (config.num_prompts < 1) return Invalid("--num-prompts", "must be >= 1");
  if (config.duration_s.has_value()) {
    if (!(*config.duration_s > 0) || std::isinf(*config.duration_s)) {
      return Invalid("--duration", "must be a positive number of seconds");
    }
    if (!trace) {
      for (double rate : config.request_rates) {
        if (std::isinf(rate)) {
          return Invalid("--duration",
                         "needs finite request rates (with inf every request is sent at once; "
                         "use --num-prompts)");
        }
      }
    }
  }
  auto check_slo = [](const std::optional<double>& slo, absl::string_view name) {
    if (slo.has_value() && !(*slo > 0 && std::isfinite(*slo))) {
      return Invalid("--goodput", absl::StrCat(name, " must be a positive number of ms"));
    }
    return absl::OkStatus();
  };
  if (absl::Status s = check_slo(config.slos.ttft_ms, "ttft"); !s.ok()) return s;
  if (absl::Status s = check_slo(config.slos.tpot_ms, "tpot"); !s.ok()) return s;
  if (absl::Status s = check_slo(config.slos.e2el_ms, "e2el"); !s.ok()) return s;
  if (config.vocab_size < 0 || config.vocab_size > INT32_MAX) {
    return Invalid("--vocab-size", "must be in [1, 2^31) (0: ask the server)");
  }
  if (!config.structured_outputs.empty()) {
    const nlohmann::json parsed =
        nlohmann::json::parse(config.structured_outputs, nullptr, /*allow_exceptions=*/false);
    if (!parsed.is_object()) {
      return Invalid("--structured-outputs",
                     "must be a JSON object (vLLM's StructuredOutputsParams), e.g. "
                     "{\"regex\": \"[a-z]+\"}");
    }
  }
  if (!(config.temperature >= 0) || std::isinf(config.temperature)) {
    return Invalid("--temperature", "must be >= 0");
  }
  if (config.client_threads < 1 || config.client_threads > 4096) {
    return Invalid("--client-threads", "must be in [1, 4096]");
  }
  if (config.max_concurrency > 4096) {
    return Invalid("--max-concurrency", "at most 4096 (one client thread each)");
  }
  if (config.request_timeout <= absl::ZeroDuration()) {
    return Invalid("--request-timeout", "must be positive");
  }
  if (config.connect_timeout <= absl::ZeroDuration()) {
    return Invalid("--connect-timeout", "must be positive");
  }
  return absl::OkStatus();
}

}  // namespace tessera::bench
