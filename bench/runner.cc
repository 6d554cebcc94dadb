// RunBench: discovery, workloads for every run (built and checked before anything is sent), then
// per run: scrape /metrics, send on schedule through a pool of client threads, scrape again.
#include <algorithm>
#include <cmath>
#include <deque>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench/arrivals.h"
#include "bench/bench.h"
#include "bench/http_get.h"
#include "bench/mooncake_trace.h"
#include "bench/random.h"
#include "bench/workload.h"
#include "common/clock.h"
#include "common/logging.h"
#include "common/net.h"
#include "common/status_macros.h"

namespace tessera::bench {
namespace {

constexpr absl::Duration kProgressInterval = absl::Milliseconds(250);

struct PlannedRun {
  std::optional<double> rate;
  std::vector<RequestSpec> requests;
  std::vector<double> offsets;  // seconds from the run's start, one per request
};

// Requests waiting for a client thread, and what the threads did. Shared by the sender (RunBench's
// thread) and the pool.
class RunState {
 public:
  explicit RunState(size_t n) : records_(n) {}

  void Push(size_t index) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(index);
  }
  void Close() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  // The next request to send; nullopt once closed and drained. Waits in bounded slices.
  std::optional<size_t> Pop() {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_ || !queue_.empty(); };
    while (!mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(1))) {
    }
    if (queue_.empty()) return std::nullopt;
    const size_t index = queue_.front();
    queue_.pop_front();
    return index;
  }
  void Done(size_t index, RequestRecord record) {
    absl::MutexLock lock(&mu_);
    if (!record.success) ++failed_;
    ++done_;
    records_[index] = std::move(record);
  }
  // Waits until `count` requests are done or `timeout` passes; the numbers done and failed.
  std::pair<int64_t, int64_t> WaitDone(int64_t count, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, count]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ >= count; };
    mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
    return {done_, failed_};
  }
  std::vector<RequestRecord> TakeRecords() {
    absl::MutexLock lock(&mu_);
    return std::move(records_);
  }

 private:
  absl::Mutex mu_;
  std::deque<size_t> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  int64_t done_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t failed_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<RequestRecord> records_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<MetricsSnapshot> Scrape(const HttpUrl& url, absl::Duration timeout) {
  TESSERA_ASSIGN_OR_RETURN(std::string text, HttpGet(url.host, url.port, url.path, timeout));
  absl::StatusOr<std::vector<PromSample>> samples = ParsePrometheusText(text);
  if (!samples.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("/metrics of ", HostPort(url.host, url.port),
                                                   ": ", samples.status().message()));
  }
  return MetricsSnapshot::FromSamples(*samples);
}

absl::StatusOr<std::vector<PlannedRun>> PlanRuns(const BenchConfig& config, int64_t vocab) {
  std::vector<std::optional<double>> rates(config.request_rates.begin(),
                                           config.request_rates.end());
  std::vector<TraceEntry> trace;
  if (config.workload.dataset == Dataset::kMooncake) {
    TESSERA_ASSIGN_OR_RETURN(trace, ReadMooncakeTrace(config.workload.dataset_path));
    if (static_cast<int64_t>(trace.size()) > config.num_prompts) {
      trace.resize(static_cast<size_t>(config.num_prompts));
    }
    if (rates.empty()) rates.emplace_back(std::nullopt);  // the trace's own pace
  }
  std::vector<PlannedRun> runs;
  for (size_t i = 0; i < rates.size(); ++i) {
    // Each run gets fresh prompts (its own seed), so that a run does not hit the prefix cache
    // that the previous one filled.
    const uint64_t seed = Mix64(config.seed + i);
    PlannedRun run;
    run.rate = rates[i];
    if (config.workload.dataset == Dataset::kMooncake) {
      std::vector<double> timestamps;
      timestamps.reserve(trace.size());
      for (const TraceEntry& entry : trace) timestamps.push_back(entry.timestamp_ms);
      run.offsets = TraceOffsets(timestamps, run.rate);
      run.requests = RequestsFromTrace(trace, config.workload.trace_block_size, vocab, seed);
      if (config.duration_s.has_value()) {
        size_t keep = 0;
        while (keep < run.offsets.size() && run.offsets[keep] < *config.duration_s) ++keep;
        run.offsets.resize(keep);
        run.requests.resize(keep);
      }
    } else {
      run.offsets =
          ArrivalOffsets(config.num_prompts, *run.rate, config.burstiness, seed, config.duration_s);
      TESSERA_ASSIGN_OR_RETURN(
          run.requests,
          GenerateRequests(config.workload, static_cast<int64_t>(run.offsets.size()), vocab, seed));
    }
    if (run.requests.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("run ", i, " would send no request (check --num-prompts and --duration)"));
    }
    runs.push_back(std::move(run));
  }
  return runs;
}

// Sends one run's requests on schedule and waits for all of them.
RunResult Execute(const BenchConfig& config, RequestClient& client, const PlannedRun& plan,
                  size_t index, size_t count, ProgressSink* progress) {
  const Clock& clock = RealClock::Get();
  const size_t n = plan.requests.size();
  RunResult result;
  result.request_rate = plan.rate;
  if (progress != nullptr) progress->OnRunStart(index, count, plan.rate, static_cast<int64_t>(n));

  const int64_t wanted = config.max_concurrency > 0 ? config.max_concurrency
                                                    : static_cast<int64_t>(config.client_threads);
  const size_t pool_size = static_cast<size_t>(std::min<int64_t>(wanted, static_cast<int64_t>(n)));
  RunState state(n);
  const absl::Time start = clock.MonotonicNow();
  std::vector<std::thread> pool;
  pool.reserve(pool_size);
  for (size_t t = 0; t < pool_size; ++t) {
    try {
      pool.emplace_back([&state, &client, &plan, start] {
        while (std::optional<size_t> i = state.Pop()) {
          state.Done(*i, client.Send(plan.requests[*i], start));
        }
      });
    } catch (const std::system_error& e) {
      TESSERA_LOG(WARNING) << "bench: started " << pool.size() << " of " << pool_size
                           << " client threads: " << e.what();
      break;
    }
  }
  result.client_threads = static_cast<int>(pool.size());
  if (pool.empty()) {  // no thread at all: every request fails, visibly
    for (size_t i = 0; i < n; ++i) {
      RequestRecord record;
      record.prompt_tokens = static_cast<int64_t>(plan.requests[i].prompt.size());
      record.error = "no client thread could be started";
      state.Done(i, std::move(record));
    }
  }

  absl::Time next_report = start;
  auto report = [&](int64_t done, int64_t failed) {
    if (progress == nullptr || clock.MonotonicNow() < next_report) return;
    next_report = clock.MonotonicNow() + kProgressInterval;
    progress->OnProgress(done, failed, static_cast<int64_t>(n),
                         absl::ToDoubleSeconds(clock.MonotonicNow() - start));
  };
  for (size_t i = 0; i < n && !pool.empty(); ++i) {
    const absl::Time due = start + absl::Seconds(plan.offsets[i]);
    while (true) {
      const absl::Time now = clock.MonotonicNow();
      if (now >= due) break;
      const auto [done, failed] = state.WaitDone(0, absl::ZeroDuration());
      report(done, failed);
      absl::SleepFor(std::min(due - now, kProgressInterval));
    }
    state.Push(i);
  }
  state.Close();
  while (true) {
    const auto [done, failed] = state.WaitDone(static_cast<int64_t>(n), kProgressInterval);
    report(done, failed);
    if (done >= static_cast<int64_t>(n)) break;
  }
  for (std::thread& t : pool) t.join();
  const double wall_s = absl::ToDoubleSeconds(clock.MonotonicNow() - start);
  if (progress != nullptr) {
    const auto [done, failed] = state.WaitDone(static_cast<int64_t>(n), absl::ZeroDuration());
    progress->OnProgress(done, failed, static_cast<int64_t>(n), wall_s);
  }

  result.records = state.TakeRecords();
  // vLLM's duration: from the first send to the end of the last request.
  double duration_s = 0;
  for (const RequestRecord& r : result.records) {
    duration_s = std::max(duration_s, r.start_s + r.latency_s);
  }
  if (duration_s <= 0) duration_s = wall_s;
  result.metrics = ComputeMetrics(result.records, duration_s, config.slos);
  return result;
}

std::string NowRfc3339() {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
}

}  // namespace

int64_t SafeTokenRange(int64_t vocab_size) {
  if (vocab_size <= 0) return 256;
  return vocab_size - std::min<int64_t>(256, vocab_size / 4);
}

absl::StatusOr<BenchResult> RunBench(const BenchConfig& config, ProgressSink* progress) {
  TESSERA_RETURN_IF_ERROR(ValidateBenchConfig(config));
  BenchResult result;
  result.config = config;
  result.started_at = NowRfc3339();

  ClientOptions options;
  options.host = config.host;
  options.port = EffectivePort(config);
  options.model = config.model;
  options.ignore_eos = config.ignore_eos;
  options.temperature = config.temperature;
  options.structured_outputs = config.structured_outputs;
  options.request_timeout = config.request_timeout;
  options.connect_timeout = config.connect_timeout;
  options.api_key = config.api_key;
  absl::StatusOr<std::unique_ptr<RequestClient>> client = config.endpoint == Endpoint::kKServeGrpc
                                                              ? CreateKServeClient(options)
                                                              : CreateOpenAiClient(options);
  if (!client.ok()) return client.status();
  result.server = (*client)->info();
  result.target = (*client)->Describe();
  result.token_id_range =
      config.vocab_size > 0 ? config.vocab_size : SafeTokenRange(result.server.vocab_size);

  std::optional<HttpUrl> metrics_url;
  if (config.metrics_url != "none") {
    std::string url = config.metrics_url;
    if (url.empty() && config.endpoint == Endpoint::kOpenAiHttp) {
      url = absl::StrCat("http://", HostPort(config.host, options.port), "/metrics");
    }
    if (!url.empty()) {
      TESSERA_ASSIGN_OR_RETURN(HttpUrl parsed, ParseHttpUrl(url));
      metrics_url = parsed;
      result.metrics_url = url;
    }
  }

  TESSERA_ASSIGN_OR_RETURN(std::vector<PlannedRun> plans, PlanRuns(config, result.token_id_range));
  for (const PlannedRun& plan : plans) {
    TESSERA_RETURN_IF_ERROR(CheckFitsContext(plan.requests, result.server.max_model_len));
  }

  for (size_t i = 0; i < plans.size(); ++i) {
    std::optional<MetricsSnapshot> before;
    std::string scrape_error;
    if (metrics_url.has_value()) {
      absl::StatusOr<MetricsSnapshot> snapshot = Scrape(*metrics_url, config.connect_timeout);
      if (snapshot.ok()) {
        before = *std::move(snapshot);
      } else {
        scrape_error = std::string(snapshot.status().message());
      }
    }
    RunResult run = Execute(config, **client, plans[i], i, plans.size(), progress);
    if (before.has_value()) {
      absl::StatusOr<MetricsSnapshot> after = Scrape(*metrics_url, config.connect_timeout);
      if (after.ok()) {
        run.server = DiffSnapshots(*before, *after);
      } else {
        run.server_error = std::string(after.status().message());
      }
    } else {
      run.server_error = scrape_error;
    }
    if (progress != nullptr) progress->OnRunEnd(run);
    result.runs.push_back(std::move(run));
  }
  return result;
}

}  // namespace tessera::bench
