// Benchmark (label perf; prints, never asserts on time): a pipelined prefill replica migrating
// its prompts' KV while it keeps steps in flight. The prefill replica has two pipeline stages
// (ranks as threads of one thread each, 5 + 3 layers); the decode replica is one rank. N prompts
// go in at once (each: reserve on D, prefill on P, which sends the KV, then D's commit and one
// decode step); the table reports prompt tokens over the wall time until the last is done, and
// the prefill and decode replicas' pipeline drains (decision 0014). With the KV streamed layer by
// layer, one step in flight is what streaming forced before decision 0014.
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "kvtransfer/inproc/in_process_transport.h"
#include "model/weights.h"
#include "tests/worker/test_util.h"
#include "tests/worker/thread_replica.h"

namespace tessera::worker {
namespace {

constexpr int kPrompts = 16;
constexpr int kPromptLen = 512;

testing::ThreadReplicaOptions Options(const testing::Split& split, const char* name, bool stream) {
  testing::ThreadReplicaOptions o;
  o.split = split;
  o.name = name;
  o.stream_layers = stream;
  ReplicaRankOptions& r = o.rank;
  r.parallel.tp_size = split.tp;
  r.parallel.pp_size = split.pp;
  r.parallel.pp_layers = split.pp_layers;
  r.pp_steps_in_flight = split.steps_in_flight;
  r.model.max_num_tokens = 256;
  r.model.max_num_seqs = kPrompts;
  r.model.max_blocks_per_seq = 64;
  r.num_kv_blocks = kPrompts * (kPromptLen / 16 + 2);
  r.block_size = 16;
  o.scheduler.max_model_len = 1024;
  o.scheduler.max_num_seqs = kPrompts;
  o.scheduler.max_num_batched_tokens = 256;   // prompts in chunks of 256
  o.scheduler.enable_prefix_caching = false;  // every run computes and sends every prompt
  return o;
}

// `n` greedy requests of `prompt_len` random tokens and `max_tokens` output tokens.
std::vector<Request> RandomRequests(int n, int prompt_len, int32_t max_tokens, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Request> requests(n);
  for (Request& r : requests) {
    for (int i = 0; i < prompt_len; ++i) r.prompt.push_back(3 + static_cast<int32_t>(rng() % 4000));
    r.sampling.max_tokens = max_tokens;
    r.sampling.ignore_eos = true;
  }
  return requests;
}

// Runs every request disaggregated, request i starting after i * `stagger`; the wall seconds
// until the last is done (every request must succeed).
double RunAll(testing::ThreadReplica& prefill, testing::ThreadReplica& decode,
              const std::vector<Request>& requests, absl::Duration stagger) {
  std::vector<absl::Status> status(requests.size());
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> clients;
  for (size_t i = 0; i < requests.size(); ++i) {
    clients.emplace_back([&, i] {
      absl::SleepFor(stagger * static_cast<double>(i));
      status[i] =
          testing::GenerateDisaggregated(prefill.engine(), decode.engine(), requests[i]).status();
    });
  }
  for (std::thread& t : clients) t.join();
  const double wall = testing::SecondsSince(start);
  for (const absl::Status& s : status) EXPECT_TRUE(s.ok()) << s;
  return wall;
}

TEST(DisaggregationPipelinePerf, PrefillThroughputWithStepsInFlight) {
  const model::ModelConfig config = testing::BenchModelConfig(/*layers=*/8, /*kv_heads=*/8);
  std::unique_ptr<model::WeightSource> weights =
      model::MakeRandomWeights(config, DataType::kF32, /*seed=*/1);
  const std::vector<Request> requests = RandomRequests(kPrompts, kPromptLen, 2, /*seed=*/7);
  std::printf(
      "model: hidden 512, 8 layers (5 + 3 over two stages), f32; %d prompts of %d tokens at once, "
      "chunks of 256\n\n"
      "| KV sent | steps in flight | run | wall s | prompt tok/s | drains (P / D) |\n"
      "|---|---|---|---|---|---|\n",
      kPrompts, kPromptLen);
  for (const bool stream : {true, false}) {
    for (const int depth : {1, 2}) {
      for (int run = 0; run < 2; ++run) {
        auto fabric = kvtransfer::InProcessFabric::Create();
        testing::ThreadReplica prefill(config, *weights, fabric,
                                       Options({1, 2, {5, 3}, "pp2", 0, depth}, "prefill", stream));
        ASSERT_TRUE(prefill.setup().ok()) << prefill.setup();
        testing::ThreadReplica decode(config, *weights, fabric,
                                      Options({1, 1, {}, "tp1"}, "decode", stream));
        ASSERT_TRUE(decode.setup().ok()) << decode.setup();
        const double wall = RunAll(prefill, decode, requests, absl::ZeroDuration());
        std::printf("| %s | %d | %d | %.2f | %.0f | %lld / %lld |\n",
                    stream ? "layer by layer" : "after the prompt", depth, run, wall,
                    kPrompts * kPromptLen / wall,
                    static_cast<long long>(prefill.engine().counters().pipeline_drains),
                    static_cast<long long>(decode.engine().counters().pipeline_drains));
        ASSERT_TRUE(prefill.Stop().ok());
        ASSERT_TRUE(decode.Stop().ok());
      }
    }
  }
}

// The decode side: a two-stage decode replica takes requests while it decodes others. Each
// arrival reserves and commits on every rank (decision 0014: with the next step, not between
// steps). The prefill replica is one rank.
TEST(DisaggregationPipelinePerf, DecodeThroughputWhileRequestsArrive) {
  constexpr int kRequests = 16;
  constexpr int kOutput = 64;
  const model::ModelConfig config = testing::BenchModelConfig(/*layers=*/8, /*kv_heads=*/8);
  std::unique_ptr<model::WeightSource> weights =
      model::MakeRandomWeights(config, DataType::kF32, /*seed=*/1);
  const std::vector<Request> requests = RandomRequests(kRequests, 128, kOutput, /*seed=*/11);
  std::printf(
      "\nmodel as above; %d requests of 128 prompt tokens and %d output tokens, one every 50 ms; "
      "decode replica PP=2 (5 + 3)\n\n"
      "| steps in flight | run | wall s | output tok/s | drains (P / D) |\n"
      "|---|---|---|---|---|\n",
      kRequests, kOutput);
  for (const int depth : {1, 2}) {
    for (int run = 0; run < 2; ++run) {
      auto fabric = kvtransfer::InProcessFabric::Create();
      testing::ThreadReplica prefill(config, *weights, fabric,
                                     Options({1, 1, {}, "tp1"}, "prefill", true));
      ASSERT_TRUE(prefill.setup().ok()) << prefill.setup();
      testing::ThreadReplica decode(config, *weights, fabric,
                                    Options({1, 2, {5, 3}, "pp2", 0, depth}, "decode", true));
      ASSERT_TRUE(decode.setup().ok()) << decode.setup();
      const double wall = RunAll(prefill, decode, requests, absl::Milliseconds(50));
      std::printf("| %d | %d | %.2f | %.0f | %lld / %lld |\n", depth, run, wall,
                  kRequests * kOutput / wall,
                  static_cast<long long>(prefill.engine().counters().pipeline_drains),
                  static_cast<long long>(decode.engine().counters().pipeline_drains));
      ASSERT_TRUE(prefill.Stop().ok());
      ASSERT_TRUE(decode.Stop().ok());
    }
  }
}

}  // namespace
}  // namespace tessera::worker
