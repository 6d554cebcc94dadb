// Greedy sampling over a vocab-parallel LM head without gathering the logits.
//
// Under tensor parallelism each rank of the last stage computes the logits of its own vocabulary
// columns. Gathering them costs rows x vocab floats a step on every rank (a batch of 256 rows of
// a 128k vocabulary: 131 MB). A greedy row needs far less: the best token, its logprob and the
// top-N alternatives. Each rank samples its own columns (penalties and bans restricted to them)
// and the ranks exchange, per row, the chosen token's id, its value after penalties, its raw
// logit, the shard's log-normaliser log(sum(exp(raw))) and the shard's top N — 4 + 2N numbers a
// row and rank. Then every rank merges the same way:
//   token   = the chosen id of the rank with the largest value (ties: the lowest rank, which holds
//             the lowest ids — the gathered sampler's rule of the lowest index);
//   logprob = raw logit of that token - logsumexp over ranks of their log-normalisers;
//   top N   = the ranks' top N merged by that global logprob (ties by id).
// Tokens equal the gathered sampler's exactly; logprobs agree up to rounding.
// A sampled row (temperature > 0) whose top_k is at most kMaxVocabParallelTopK draws from the
// union of the shards' top_k candidates (after penalties), which holds every token its top_k
// can keep: each rank adds its K best ids with their values and raw logits (3K more words), and
// every rank draws alike with the kernel's rule (min-p, top-k, top-p, the seeded uniform).
// Tokens equal the gathered sampler's up to the order of summation in the probability mass.
// Sampled rows without such a top_k need the whole distribution: the step gathers instead.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/stream.h"
#include "common/tensor.h"
#include "kernels/backend.h"
#include "parallel/comm/communicator.h"
#include "worker/local_executor.h"
#include "worker/step.h"

namespace tessera::worker {

// The largest top_k a sampled row may have and still be sampled shard by shard.
inline constexpr int32_t kMaxVocabParallelTopK = 64;

// Whether a step with these rows can be sampled shard by shard: every row greedy, or sampled with
// 0 < top_k <= kMaxVocabParallelTopK.
bool CanSampleVocabParallel(const std::vector<SamplingRow>& rows);

// Thread-compatible: one thread (the rank's) calls Sample at a time.
class VocabParallelSampler {
 public:
  static absl::StatusOr<std::unique_ptr<VocabParallelSampler>> Create(kernels::Backend& backend,
                                                                      int32_t max_rows);

  // `logits` are this rank's columns [rows, columns] (row stride free; columns may be 0) whose
  // first column is token `vocab_begin`; `vocab_size` is the whole vocabulary. Every rank of `tp`
  // calls Sample with the same rows and gets the same result: what DeviceSampler::Sample gives on
  // the gathered [rows, vocab_size] logits. kInvalidArgument for a row CanSampleVocabParallel
  // refuses, more top logprobs than the vocabulary, or lists that disagree; communicator errors
  // as they come.
  absl::StatusOr<StepResult> Sample(const TensorView& logits, int64_t vocab_begin,
                                    int64_t vocab_size, const std::vector<SamplingRow>& rows,
                                    parallel::Communicator& tp, Stream& stream);

 private:
  VocabParallelSampler(kernels::Backend& backend, std::unique_ptr<DeviceSampler> sampler)
      : backend_(backend), sampler_(std::move(sampler)) {}
  // Grows `buffer` to at least `bytes`.
  absl::Status Reserve(kernels::DeviceBuffer& buffer, size_t bytes);
  // values[i] = matrix[i / per_row, columns[i]] for each i, read back to the host.
  absl::StatusOr<std::vector<float>> GatherElements(const TensorView& matrix,
                                                    const std::vector<int32_t>& columns,
                                                    int64_t per_row, Stream& stream);
  // Every rank's `mine` ([rows, width] of T) side by side: [size * rows, width], on the host.
  template <typename T>
  absl::StatusOr<std::vector<T>> Exchange(const std::vector<T>& mine, int64_t rows, int64_t width,
                                          DataType dtype, parallel::Communicator& tp,
                                          Stream& stream);

  kernels::Backend& backend_;
  std::unique_ptr<DeviceSampler> sampler_;
  kernels::DeviceBuffer element_ids_, elements_, send_, recv_;
};

}  // namespace tessera::worker
