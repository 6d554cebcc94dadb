// Runs steps of a whole model held in this process: LlamaModel::Forward on the cache, then
// sampling on the device. The model, cache and backend must outlive the executor.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "worker/kv_cache.h"
#include "worker/llama_model.h"
#include "worker/step.h"

namespace tessera::worker {

// Samples one token per row of `logits` ([rows, vocab] f32 on the backend) with `rows` sampling
// parameters: penalties and bans (kernels::ApplyPenalties, on a copy of the rows, so the logprobs
// stay those of the raw logits), then kernels::Sample with min-p and top-N logprobs as asked.
// Device buffers start sized for `max_rows` rows and grow when a step needs more (token lists,
// top-N). Shared by every executor. Thread-compatible: one thread calls Sample.
class DeviceSampler {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceSampler>> Create(kernels::Backend& backend,
                                                               int32_t max_rows);
  // kInvalidArgument for more rows than max_rows or rows that disagree with logits; kernel
  // errors (bad token ids in the lists) as they come. `chosen_from`, when given, receives the
  // logits the tokens were chosen from: `logits` itself, or its copy with the penalties applied
  // (valid until the next Sample).
  absl::StatusOr<StepResult> Sample(const TensorView& logits, const std::vector<SamplingRow>& rows,
                                    Stream& stream, TensorView* chosen_from = nullptr);

 private:
  explicit DeviceSampler(kernels::Backend& backend) : backend_(backend) {}
  // Copies `values` into `buffer`, growing it first when it is too small.
  template <typename T>
  absl::Status Upload(const std::vector<T>& values, kernels::DeviceBuffer& buffer, Stream& stream);
  absl::Status Reserve(kernels::DeviceBuffer& buffer, size_t bytes);
  // Host copies of the penalty lists; they must stay alive until the stream is synchronised.
  struct PenaltyStaging {
    std::vector<float> repetition, presence, frequency;
    std::vector<int32_t> ids, counts, start, banned, banned_start, bias_ids;
    std::vector<float> bias_values;
    std::vector<int32_t> bias_start;
    std::vector<int32_t> allowed_mask;  // [rows, words] bits (SamplingRow::allowed_mask)
  };
  absl::StatusOr<TensorView> ApplyPenalties(const TensorView& logits,
                                            const std::vector<SamplingRow>& rows,
                                            PenaltyStaging& staging, Stream& stream);

  kernels::Backend& backend_;
  int32_t max_rows_ = 0;
  kernels::DeviceBuffer temperature_, top_k_, top_p_, seeds_, steps_, ids_, logprobs_, min_p_;
  kernels::DeviceBuffer top_ids_, top_logprobs_;
  kernels::DeviceBuffer processed_logits_, repetition_, presence_, frequency_;
  kernels::DeviceBuffer penalty_ids_, penalty_counts_, penalty_start_, banned_, banned_start_;
  kernels::DeviceBuffer bias_ids_, bias_values_, bias_start_, allowed_mask_;
};

// The limits a scheduler plans with for `model` running on `cache`.
ExecutorLimits LimitsOf(const LlamaModel& model, const KvCache& cache);

class LocalExecutor final : public StepExecutor {
 public:
  static absl::StatusOr<std::unique_ptr<LocalExecutor>> Create(LlamaModel& model, KvCache& cache,
                                                               kernels::Backend& backend);
  ~LocalExecutor() override;

  absl::StatusOr<StepResult> Execute(const StepPlan& plan) override;
  ExecutorLimits limits() const override;
  bool SetKvWrittenCallback(std::function<void(int32_t layer)> kv_written) override {
    kv_written_ = std::move(kv_written);
    return true;
  }

 private:
  LocalExecutor(LlamaModel& model, KvCache& cache) : model_(model), cache_(cache) {}
  std::function<void(int32_t)> kv_written_;

  LlamaModel& model_;
  KvCache& cache_;
  std::unique_ptr<Stream> stream_;
  std::unique_ptr<DeviceSampler> sampler_;
};

}  // namespace tessera::worker
