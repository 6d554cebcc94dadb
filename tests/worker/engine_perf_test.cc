// Engine benchmarks on the CPU backend with a model shape that makes each point (hidden 512,
// 4 layers, vocabulary 4096, random f32 weights). Prints figures; never asserts on time (label
// perf). Threads: OMP_NUM_THREADS (ctest sets 1; run the binary directly for all cores).
//  - throughput of continuous batching against one request at a time (ratio);
//  - decode inter-token latency while a long prompt arrives, chunked prefill on and off;
//  - time to first token with a shared prefix cached and not.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "model/weights.h"
#include "tests/worker/test_util.h"
#include "worker/engine.h"

namespace tessera::worker {
namespace {

using SteadyClock = std::chrono::steady_clock;
constexpr absl::Duration kWait = absl::Seconds(600);

double Since(SteadyClock::time_point start) { return testing::SecondsSince(start); }
model::ModelConfig BenchConfig() { return testing::BenchModelConfig(/*layers=*/4, /*kv_heads=*/4); }

// Records when each event of one request arrives (on the engine thread).
class TimingSink final : public RequestSink {
 public:
  void OnEvent(const TokenEvent& event) override {
    absl::MutexLock lock(&mu_);
    times_.push_back(SteadyClock::now());
    if (event.finish_reason.has_value()) done_.Notify();
  }
  bool Wait() { return done_.WaitForNotificationWithTimeout(kWait); }
  std::vector<SteadyClock::time_point> times() {
    absl::MutexLock lock(&mu_);
    return times_;
  }

 private:
  absl::Mutex mu_;
  std::vector<SteadyClock::time_point> times_ ABSL_GUARDED_BY(mu_);
  absl::Notification done_;
};

class EnginePerf : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    weights_ = model::MakeRandomWeights(BenchConfig(), DataType::kF32, /*seed=*/1).release();
    std::printf("model: hidden 512, 4 layers, 8 heads (4 KV), vocab 4096, f32; %d threads\n",
                omp_get_max_threads());
  }
  static void TearDownTestSuite() { delete weights_; }

  struct Bench {
    testing::TestEngine parts;
    std::unique_ptr<Engine> engine;
  };
  static Bench Make(int32_t budget, bool chunked, bool prefix_caching, int32_t max_num_seqs = 32) {
    testing::TestEngineOptions options;
    options.block_size = 16;
    options.num_blocks = 1024;
    options.max_model_len = 2048;
    options.max_num_seqs = 32;
    options.max_num_batched_tokens = 2048;
    Bench b;
    auto parts = testing::MakeTestEngine(BenchConfig(), *weights_, options);
    EXPECT_TRUE(parts.ok()) << parts.status();
    b.parts = *std::move(parts);
    EngineOptions e;
    e.scheduler.max_model_len = 2048;
    e.scheduler.max_num_seqs = max_num_seqs;
    e.scheduler.max_num_batched_tokens = budget;
    e.scheduler.enable_chunked_prefill = chunked;
    e.scheduler.enable_prefix_caching = prefix_caching;
    auto engine = Engine::Create(*b.parts.executor, BenchConfig(), e);
    EXPECT_TRUE(engine.ok()) << engine.status();
    b.engine = *std::move(engine);
    return b;
  }
  static Request Random(std::mt19937& rng, int prompt, int max_tokens) {
    Request r;
    for (int i = 0; i < prompt; ++i) r.prompt.push_back(3 + static_cast<int32_t>(rng() % 4000));
    r.sampling.max_tokens = max_tokens;
    r.sampling.ignore_eos = true;
    return r;
  }

  static model::InMemoryWeights* weights_;
};

model::InMemoryWeights* EnginePerf::weights_ = nullptr;

TEST_F(EnginePerf, ContinuousBatchingAgainstOneAtATime) {
  constexpr int kRequests = 16, kPrompt = 64, kOutput = 64;
  std::mt19937 rng(1);
  std::vector<Request> requests;
  for (int i = 0; i < kRequests; ++i) requests.push_back(Random(rng, kPrompt, kOutput));
  Bench b = Make(/*budget=*/512, /*chunked=*/true, /*prefix_caching=*/false);
  // One at a time.
  auto start = SteadyClock::now();
  for (const Request& r : requests) ASSERT_TRUE((*b.engine->Submit(r))->Collect(kWait).ok());
  const double serial = Since(start);
  // All at once.
  start = SteadyClock::now();
  std::vector<std::shared_ptr<ResponseStream>> streams;
  for (const Request& r : requests) streams.push_back(*b.engine->Submit(r));
  for (const auto& s : streams) ASSERT_TRUE(s->Collect(kWait).ok());
  const double batched = Since(start);
  const double tokens = kRequests * kOutput;
  std::printf(
      "throughput, %d requests (prompt %d, output %d): one at a time %.1f tok/s, continuous "
      "batching %.1f tok/s, ratio %.2fx\n",
      kRequests, kPrompt, kOutput, tokens / serial, tokens / batched, serial / batched);
}

// Inter-token latencies of 8 decoding requests while a 1536-token prompt arrives.
struct ItlFigures {
  double mean_ms = 0, max_ms = 0, long_ttft_ms = 0;
};

TEST_F(EnginePerf, DecodeLatencyWhileALongPromptArrives) {
  auto measure = [](int32_t budget, bool chunked, bool long_prompt) {
    Bench b = Make(budget, chunked, /*prefix_caching=*/false);
    std::mt19937 rng(2);
    std::vector<std::shared_ptr<TimingSink>> sinks;
    for (int i = 0; i < 8; ++i) {
      sinks.push_back(std::make_shared<TimingSink>());
      EXPECT_TRUE(b.engine->Submit(Random(rng, 16, 120), sinks.back()).ok());
    }
    // Let the decodes settle, then the long prompt arrives.
    const absl::Time give_up = absl::Now() + kWait;
    while (b.engine->counters().decode_tokens < 8 * 20 && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    const auto arrival = SteadyClock::now();
    auto long_sink = std::make_shared<TimingSink>();
    if (long_prompt) {
      EXPECT_TRUE(b.engine->Submit(Random(rng, 1536, 1), long_sink).ok());
    }
    for (auto& s : sinks) EXPECT_TRUE(s->Wait());
    ItlFigures f;
    int n = 0;
    for (auto& s : sinks) {
      const auto times = s->times();
      for (size_t i = 1; i < times.size(); ++i) {
        if (times[i] < arrival) continue;
        const double gap =
            std::chrono::duration<double, std::milli>(times[i] - times[i - 1]).count();
        f.mean_ms += gap;
        f.max_ms = std::max(f.max_ms, gap);
        ++n;
      }
    }
    f.mean_ms /= std::max(n, 1);
    if (long_prompt) {
      EXPECT_TRUE(long_sink->Wait());
      f.long_ttft_ms =
          std::chrono::duration<double, std::milli>(long_sink->times().front() - arrival).count();
    }
    return f;
  };
  const ItlFigures base = measure(256, true, false);
  const ItlFigures on = measure(256, true, true);
  const ItlFigures off = measure(2048, false, true);
  std::printf("decode ITL, 8 requests, after a 1536-token prompt arrives:\n");
  std::printf("  %-34s mean %7.1f ms  max %7.1f ms\n", "no long prompt", base.mean_ms, base.max_ms);
  std::printf("  %-34s mean %7.1f ms  max %7.1f ms  (long prompt TTFT %.0f ms)\n",
              "chunked prefill on (256 tok/step)", on.mean_ms, on.max_ms, on.long_ttft_ms);
  std::printf("  %-34s mean %7.1f ms  max %7.1f ms  (long prompt TTFT %.0f ms)\n",
              "chunked prefill off (whole prompt)", off.mean_ms, off.max_ms, off.long_ttft_ms);
  std::printf("  max ITL off / on: %.2fx\n", off.max_ms / std::max(on.max_ms, 1e-9));
}

TEST_F(EnginePerf, TimeToFirstTokenWithASharedPrefixCached) {
  std::mt19937 rng(3);
  const Request prefix = Random(rng, 1024, 1);
  auto with_tail = [&](int seed) {
    Request r = prefix;
    std::mt19937 tail_rng(seed);
    const Request tail = Random(tail_rng, 32, 1);
    r.prompt.insert(r.prompt.end(), tail.prompt.begin(), tail.prompt.end());
    return r;
  };
  double ttft[2] = {0, 0};
  for (bool caching : {false, true}) {
    Bench b = Make(/*budget=*/2048, /*chunked=*/true, caching);
    ASSERT_TRUE((*b.engine->Submit(with_tail(10)))->Collect(kWait).ok());  // warms the cache
    const auto start = SteadyClock::now();
    auto out = (*b.engine->Submit(with_tail(11)))->Collect(kWait);
    ttft[caching] = Since(start) * 1e3;
    ASSERT_TRUE(out.ok());
    if (caching) {
      EXPECT_EQ(out->num_cached_tokens, 1024);
    }
  }
  std::printf(
      "TTFT, 1056-token prompt sharing a 1024-token prefix: not cached %.1f ms, cached %.1f ms, "
      "ratio %.1fx\n",
      ttft[0], ttft[1], ttft[0] / ttft[1]);
}

}  // namespace
}  // namespace tessera::worker
