// Runs a set of generation requests to completion on one LlamaModel: continuous batching of the
// requests' prefill chunks and decode steps under a token budget, a sequence limit and the KV
// blocks available, then sampling on the device. This is the engine of `tessera generate`; the
// engine issue grows it into an asynchronous scheduler (arrivals, cancellation, prefix caching,
// preemption).
//
// A request is admitted only when the blocks for its whole budget (prompt + max_tokens) are free,
// so a running request never runs out of cache. Thread-compatible: one thread calls Generate.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "worker/block_allocator.h"
#include "worker/kv_cache.h"
#include "worker/llama_model.h"

namespace tessera::worker {

struct SamplingOptions {
  float temperature = 0.0f;  // 0: greedy
  int32_t top_k = 0;         // 0: no limit
  float top_p = 1.0f;        // 1: no limit
  int64_t seed = 0;
  int32_t max_tokens = 16;
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;
};

struct GenerateRequest {
  std::vector<int32_t> prompt;
  SamplingOptions sampling;
};

enum class FinishReason { kLength, kStop };
absl::string_view FinishReasonName(FinishReason reason);  // "length", "stop"

struct GenerateResult {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;  // of each chosen token under the unscaled model distribution
  FinishReason finish_reason = FinishReason::kLength;
};

struct GeneratorOptions {
  int32_t max_model_len = 0;              // prompt + output tokens of one request
  int32_t max_num_seqs = 256;             // sequences per step
  int32_t max_num_batched_tokens = 2048;  // tokens per step (prefill chunks + decodes)
};

// Counters of the last Generate call.
struct GeneratorStats {
  int64_t steps = 0;
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;
};

class Generator {
 public:
  // `model`, `cache` and `backend` must outlive the generator. The model's workspace must cover
  // the options (max_num_tokens >= max_num_batched_tokens, max_num_seqs, and max_blocks_per_seq
  // >= ceil(max_model_len / block_size)).
  static absl::StatusOr<std::unique_ptr<Generator>> Create(LlamaModel& model, KvCache& cache,
                                                           kernels::Backend& backend,
                                                           const GeneratorOptions& options);
  ~Generator();

  // Results in request order. kInvalidArgument (naming the request) for an empty prompt, a token
  // outside the vocabulary, a budget over max_model_len or over the whole cache, or bad sampling
  // parameters; nothing runs then.
  absl::StatusOr<std::vector<GenerateResult>> Generate(absl::Span<const GenerateRequest> requests);

  const GeneratorStats& stats() const { return stats_; }
  const BlockAllocator& allocator() const { return allocator_; }

 private:
  struct Sequence;
  struct SamplingBuffers;
  Generator(LlamaModel& model, KvCache& cache, kernels::Backend& backend,
            const GeneratorOptions& options);
  absl::Status Validate(absl::Span<const GenerateRequest> requests) const;
  absl::Status Step(std::vector<Sequence*>& running);

  LlamaModel& model_;
  KvCache& cache_;
  kernels::Backend& backend_;
  GeneratorOptions options_;
  BlockAllocator allocator_;
  std::unique_ptr<Stream> stream_;
  std::unique_ptr<SamplingBuffers> sampling_;
  GeneratorStats stats_;
};

}  // namespace tessera::worker
