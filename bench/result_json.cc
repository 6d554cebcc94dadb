#include "bench/result_json.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>

#include "absl/strings/str_cat.h"

namespace tessera::bench {
namespace {

using nlohmann::json;

json Number(double v) {
  if (std::isnan(v)) return nullptr;
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

json Optional(const std::optional<double>& v) { return v.has_value() ? Number(*v) : json(); }

void AddStats(const char* name, const LatencyStats& s, json& out) {
  out[absl::StrCat("mean_", name, "_ms")] = Number(s.mean_ms);
  out[absl::StrCat("median_", name, "_ms")] = Number(s.median_ms);
  out[absl::StrCat("std_", name, "_ms")] = Number(s.std_ms);
  out[absl::StrCat("p90_", name, "_ms")] = Number(s.p90_ms);
  out[absl::StrCat("p99_", name, "_ms")] = Number(s.p99_ms);
}

json BreakdownJson(const ServerBreakdown& b) {
  json stages = json::object();
  for (const auto& [stage, d] : b.stages) {
    stages[stage] = {{"metric", d.metric},
                     {"count", Number(d.count)},
                     {"mean_ms", Number(d.mean_ms)},
                     {"p50_ms", Optional(d.p50_ms)},
                     {"p99_ms", Optional(d.p99_ms)}};
  }
  json counters = json::object();
  for (const auto& [name, growth] : b.counters) counters[name] = Number(growth);
  return {{"stages", std::move(stages)}, {"counters", std::move(counters)}};
}

json RunJson(const RunResult& run) {
  const BenchMetrics& m = run.metrics;
  json out = json::object();
  out["request_rate"] = Optional(run.request_rate);
  out["client_threads"] = run.client_threads;
  out["completed"] = m.completed;
  out["failed"] = m.failed;
  out["duration"] = Number(m.duration_s);
  out["total_input_tokens"] = m.total_input_tokens;
  out["total_output_tokens"] = m.total_output_tokens;
  out["request_throughput"] = Number(m.request_throughput);
  out["request_goodput"] = Optional(m.request_goodput);
  out["output_throughput"] = Number(m.output_throughput);
  out["total_token_throughput"] = Number(m.total_token_throughput);
  AddStats("ttft", m.ttft, out);
  AddStats("tpot", m.tpot, out);
  AddStats("itl", m.itl, out);
  AddStats("e2el", m.e2el, out);
  json input_lens = json::array(), output_lens = json::array(), starts = json::array(),
       ttfts = json::array(), e2els = json::array(), itls = json::array(), errors = json::array();
  for (const RequestRecord& r : run.records) {
    input_lens.push_back(r.prompt_tokens);
    output_lens.push_back(r.output_tokens);
    starts.push_back(Number(r.start_s));
    ttfts.push_back(Number(r.ttft_s));
    e2els.push_back(Number(r.latency_s));
    json gaps = json::array();
    for (double g : r.itl_s) gaps.push_back(Number(g));
    itls.push_back(std::move(gaps));
    errors.push_back(r.error);
  }
  out["input_lens"] = std::move(input_lens);
  out["output_lens"] = std::move(output_lens);
  out["start_times"] = std::move(starts);
  out["ttfts"] = std::move(ttfts);
  out["e2els"] = std::move(e2els);
  out["itls"] = std::move(itls);
  out["errors"] = std::move(errors);
  out["server_breakdown"] = run.server.has_value() ? BreakdownJson(*run.server) : json();
  out["server_breakdown_error"] = run.server_error;
  return out;
}

}  // namespace

json ResultToJson(const BenchResult& result) {
  const BenchConfig& c = result.config;
  json out = json::object();
  out["tessera_bench_version"] = 1;
  out["date"] = result.started_at;
  out["backend"] = std::string(EndpointName(c.endpoint));
  out["target"] = result.target;
  out["model_id"] = result.server.model;
  out["dataset_name"] = std::string(DatasetName(c.workload.dataset));
  out["dataset_path"] = c.workload.dataset_path;
  // No limit (a --duration run, a whole trace) is null.
  out["num_prompts"] =
      c.num_prompts == std::numeric_limits<int64_t>::max() ? json() : json(c.num_prompts);
  out["burstiness"] = Number(c.burstiness);
  out["max_concurrency"] = c.max_concurrency > 0 ? json(c.max_concurrency) : json();
  out["seed"] = c.seed;
  out["token_id_range"] = result.token_id_range;
  out["max_model_len"] = result.server.max_model_len;
  out["metrics_url"] = result.metrics_url;
  out["goodput"] = {{"ttft_ms", Optional(c.slos.ttft_ms)},
                    {"tpot_ms", Optional(c.slos.tpot_ms)},
                    {"e2el_ms", Optional(c.slos.e2el_ms)}};
  json runs = json::array();
  for (const RunResult& run : result.runs) runs.push_back(RunJson(run));
  out["runs"] = std::move(runs);
  return out;
}

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": cannot open for writing: ", std::strerror(errno)));
  }
  file << text;
  file.close();
  if (!file) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

absl::Status WriteResultJson(const BenchResult& result, const std::string& path) {
  std::string text;
  try {
    text = ResultToJson(result).dump(2, ' ', false, json::error_handler_t::replace);
  } catch (const std::exception& e) {  // nlohmann may throw (bad_alloc)
    return absl::InternalError(absl::StrCat("rendering the result JSON: ", e.what()));
  }
  text.push_back('\n');
  return WriteTextFile(path, text);
}

}  // namespace tessera::bench
