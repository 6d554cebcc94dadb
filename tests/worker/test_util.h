// Helpers shared by the worker tests: the committed transformers fixtures and engine assembly.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "tests/await.h"
#include "worker/engine.h"
#include "worker/kv_cache.h"
#include "worker/llama_model.h"
#include "worker/local_executor.h"

namespace tessera::worker::testing {

using tessera::testing::Await;

// One prompt of a fixture: its ids, the transformers logits of every position [len, vocab], and
// 16 greedy tokens.
struct ReferencePrompt {
  std::vector<int32_t> ids;
  std::vector<float> logits;
  std::vector<int32_t> greedy;
};

struct Fixture {
  std::string dir;
  model::ModelConfig config;
  std::unique_ptr<model::SafetensorsCheckpoint> weights;
  std::vector<ReferencePrompt> prompts;
};

// tests/reference/fixtures/NAME.
absl::StatusOr<Fixture> LoadFixture(const std::string& name);

// A CPU backend, model, cache and executor sized for small tests.
struct TestEngine {
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<LocalExecutor> executor;
};

struct TestEngineOptions {
  std::string backend = "cpu";  // a name kernels::testing::MakeBackend knows
  int32_t block_size = 4;
  int32_t num_blocks = 256;
  int32_t max_model_len = 128;
  int32_t max_num_seqs = 16;
  int32_t max_num_batched_tokens = 256;
  DataType kv_dtype = DataType::kF32;
  std::vector<int32_t> graph_batch_sizes;      // LlamaModelOptions::graph_batch_sizes
  DataType activation_dtype = DataType::kF32;  // LlamaModelOptions::activation_dtype
};

// The random-weight model of the engine benchmarks: vocab 4096, hidden 512, MLP 1536, 8 query
// heads of 64, `layers` layers and `kv_heads` KV heads, context 4096.
model::ModelConfig BenchModelConfig(int layers, int kv_heads);
// Seconds of steady-clock time since `start` (benchmarks).
double SecondsSince(std::chrono::steady_clock::time_point start);

absl::StatusOr<TestEngine> MakeTestEngine(const model::ModelConfig& config,
                                          const model::WeightSource& weights,
                                          const TestEngineOptions& options = {});

// Greedy generation (ignoring EOS) of `max_tokens` tokens for each prompt through an Engine on
// `executor`; outputs in prompt order.
absl::StatusOr<std::vector<RequestOutput>> GenerateGreedy(
    StepExecutor& executor, const model::ModelConfig& config,
    const std::vector<std::vector<int32_t>>& prompts, int32_t max_tokens,
    const SchedulerConfig& scheduler);

// Disaggregated serving between two engines (each with a kv_port): what the prefill half returned.
struct PrefillHandoff {
  RequestOutput output;  // P's tokens (the first token) and how it ended
  bool handoff = false;  // P sent the KV and hands decoding over
  KvDestination destination;
  std::vector<KvSegmentChecksum> checksums;
};
// Reserves on `decode`, then prefills on `prefill`, which sends the KV into the reservation.
absl::StatusOr<PrefillHandoff> PrefillForDecode(Engine& prefill, Engine& decode,
                                                const Request& request);
// The whole request: P's first token, then D's tokens after it imported the KV. An error when
// any half fails or P did not hand over.
absl::StatusOr<std::vector<int32_t>> GenerateDisaggregated(Engine& prefill, Engine& decode,
                                                           const Request& request);

}  // namespace tessera::worker::testing
