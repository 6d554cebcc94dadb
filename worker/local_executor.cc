#include "worker/local_executor.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/ops.h"

namespace tessera::worker {

absl::StatusOr<std::unique_ptr<DeviceSampler>> DeviceSampler::Create(kernels::Backend& backend,
                                                                     int32_t max_rows) {
  auto sampler = std::unique_ptr<DeviceSampler>(new DeviceSampler(backend));
  sampler->max_rows_ = max_rows;
  const size_t n = static_cast<size_t>(max_rows);
  for (auto [buffer, bytes] : {std::pair{&sampler->temperature_, 4 * n},
                               {&sampler->top_k_, 4 * n},
                               {&sampler->top_p_, 4 * n},
                               {&sampler->seeds_, 8 * n},
                               {&sampler->steps_, 8 * n},
                               {&sampler->ids_, 4 * n},
                               {&sampler->logprobs_, 4 * n}}) {
    TESSERA_ASSIGN_OR_RETURN(*buffer, backend.Allocate(bytes));
  }
  return sampler;
}

absl::Status DeviceSampler::Reserve(kernels::DeviceBuffer& buffer, size_t bytes) {
  if (buffer.data() != nullptr && buffer.size() >= bytes) return absl::OkStatus();
  // Grow geometrically so that slowly growing token lists reallocate rarely.
  TESSERA_ASSIGN_OR_RETURN(buffer, backend_.Allocate(std::max<size_t>(bytes, 2 * buffer.size())));
  return absl::OkStatus();
}

template <typename T>
absl::Status DeviceSampler::Upload(const std::vector<T>& values, kernels::DeviceBuffer& buffer,
                                   Stream& stream) {
  const size_t bytes = values.size() * sizeof(T);
  TESSERA_RETURN_IF_ERROR(Reserve(buffer, bytes));
  return backend_.CopyToDevice(values.data(), buffer.data(), bytes, stream);
}

absl::StatusOr<TensorView> DeviceSampler::ApplyPenalties(const TensorView& logits,
                                                         const std::vector<SamplingRow>& rows,
                                                         PenaltyStaging& staging, Stream& stream) {
  const int64_t n = logits.dim(0);
  const int64_t vocab = logits.dim(1);
  // A copy of the rows, so that logprobs can still come from the raw logits.
  TESSERA_RETURN_IF_ERROR(Reserve(processed_logits_, static_cast<size_t>(n * vocab) * 4));
  const MutableTensorView processed = processed_logits_.View(DataType::kF32, {n, vocab});
  if (logits.is_contiguous()) {
    TESSERA_RETURN_IF_ERROR(
        backend_.CopyOnDevice(logits.data(), processed.data(), processed.nbytes(), stream));
  } else {
    for (int64_t r = 0; r < n; ++r) {
      TESSERA_RETURN_IF_ERROR(backend_.CopyOnDevice(logits.Rows(r, r + 1).data(),
                                                    processed.Rows(r, r + 1).data(),
                                                    static_cast<size_t>(vocab) * 4, stream));
    }
  }
  auto& [repetition, presence, frequency, ids, counts, start, banned, banned_start, bias_ids,
         bias_values, bias_start, allowed_mask] = staging;
  const int64_t words = (vocab + 31) / 32;
  const bool any_mask = std::any_of(rows.begin(), rows.end(),
                                    [](const SamplingRow& r) { return !r.allowed_mask.empty(); });
  start.push_back(0);
  banned_start.push_back(0);
  bias_start.push_back(0);
  for (const SamplingRow& r : rows) {
    repetition.push_back(r.repetition_penalty);
    presence.push_back(r.presence_penalty);
    frequency.push_back(r.frequency_penalty);
    if (r.penalty_token_ids.size() != r.penalty_output_counts.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("Sample: ", r.penalty_token_ids.size(), " penalty tokens with ",
                       r.penalty_output_counts.size(), " output counts"));
    }
    if (r.HasPenalties()) {
      ids.insert(ids.end(), r.penalty_token_ids.begin(), r.penalty_token_ids.end());
      counts.insert(counts.end(), r.penalty_output_counts.begin(), r.penalty_output_counts.end());
    }
    start.push_back(static_cast<int32_t>(ids.size()));
    banned.insert(banned.end(), r.banned_token_ids.begin(), r.banned_token_ids.end());
    banned_start.push_back(static_cast<int32_t>(banned.size()));
    if (r.bias_token_ids.size() != r.bias_values.size()) {
      return absl::InvalidArgumentError(absl::StrCat("Sample: ", r.bias_token_ids.size(),
                                                     " logit bias tokens with ",
                                                     r.bias_values.size(), " values"));
    }
    bias_ids.insert(bias_ids.end(), r.bias_token_ids.begin(), r.bias_token_ids.end());
    bias_values.insert(bias_values.end(), r.bias_values.begin(), r.bias_values.end());
    bias_start.push_back(static_cast<int32_t>(bias_ids.size()));
    if (!any_mask) continue;
    if (r.allowed_mask.empty()) {
      allowed_mask.insert(allowed_mask.end(), static_cast<size_t>(words), -1);
    } else if (static_cast<int64_t>(r.allowed_mask.size()) != words) {
      return absl::InvalidArgumentError(absl::StrCat("Sample: an allowed-token mask of ",
                                                     r.allowed_mask.size(), " words for ", vocab,
                                                     " logits (", words, " words)"));
    } else {
      for (const uint32_t w : r.allowed_mask) allowed_mask.push_back(static_cast<int32_t>(w));
    }
  }
  TESSERA_RETURN_IF_ERROR(Upload(repetition, repetition_, stream));
  TESSERA_RETURN_IF_ERROR(Upload(presence, presence_, stream));
  TESSERA_RETURN_IF_ERROR(Upload(frequency, frequency_, stream));
  TESSERA_RETURN_IF_ERROR(Upload(ids, penalty_ids_, stream));
  TESSERA_RETURN_IF_ERROR(Upload(counts, penalty_counts_, stream));
  TESSERA_RETURN_IF_ERROR(Upload(start, penalty_start_, stream));
  TESSERA_RETURN_IF_ERROR(Upload(banned, banned_, stream));
  TESSERA_RETURN_IF_ERROR(Upload(banned_start, banned_start_, stream));
  if (!bias_ids.empty()) {
    TESSERA_RETURN_IF_ERROR(Upload(bias_ids, bias_ids_, stream));
    TESSERA_RETURN_IF_ERROR(Upload(bias_values, bias_values_, stream));
    TESSERA_RETURN_IF_ERROR(Upload(bias_start, bias_start_, stream));
  }
  const auto entries = static_cast<int64_t>(ids.size());
  const auto bans = static_cast<int64_t>(banned.size());
  kernels::ApplyPenaltiesParams params;
  params.logits = processed;
  params.repetition_penalty = repetition_.View(DataType::kF32, {n});
  params.presence_penalty = presence_.View(DataType::kF32, {n});
  params.frequency_penalty = frequency_.View(DataType::kF32, {n});
  params.token_ids = penalty_ids_.View(DataType::kI32, {entries});
  params.output_counts = penalty_counts_.View(DataType::kI32, {entries});
  params.token_start = penalty_start_.View(DataType::kI32, {n + 1});
  params.banned_ids = banned_.View(DataType::kI32, {bans});
  params.banned_start = banned_start_.View(DataType::kI32, {n + 1});
  if (!bias_ids.empty()) {
    const auto biases = static_cast<int64_t>(bias_ids.size());
    params.bias_ids = bias_ids_.View(DataType::kI32, {biases});
    params.bias_values = bias_values_.View(DataType::kF32, {biases});
    params.bias_start = bias_start_.View(DataType::kI32, {n + 1});
  }
  if (any_mask) {
    TESSERA_RETURN_IF_ERROR(Upload(allowed_mask, allowed_mask_, stream));
    params.allowed_mask = allowed_mask_.View(DataType::kI32, {n, words});
  }
  TESSERA_RETURN_IF_ERROR(kernels::ApplyPenalties(backend_, params, stream));
  return TensorView(processed);
}

absl::StatusOr<StepResult> DeviceSampler::Sample(const TensorView& logits,
                                                 const std::vector<SamplingRow>& rows,
                                                 Stream& stream, TensorView* chosen_from) {
  const int64_t n = static_cast<int64_t>(rows.size());
  if (n > max_rows_ || logits.rank() != 2 || logits.dim(0) != n) {
    return absl::InvalidArgumentError(absl::StrCat("Sample: ", n, " sampling rows for logits ",
                                                   logits.DebugString(), " (at most ", max_rows_,
                                                   " rows)"));
  }
  std::vector<float> temperature, top_p, min_p;
  std::vector<int32_t> top_k;
  std::vector<int64_t> seeds, steps;
  bool any_min_p = false, any_penalty = false;
  int32_t top_n = 0;
  for (const SamplingRow& r : rows) {
    temperature.push_back(r.temperature);
    top_k.push_back(r.top_k);
    top_p.push_back(r.top_p);
    seeds.push_back(r.seed);
    steps.push_back(r.step);
    min_p.push_back(r.min_p);
    any_min_p |= r.min_p > 0.0f;
    any_penalty |= r.HasPenalties() || !r.banned_token_ids.empty() || !r.bias_token_ids.empty() ||
                   !r.allowed_mask.empty();
    top_n = std::max(top_n, r.num_top_logprobs);
  }
  if (top_n > logits.dim(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: ", top_n, " top logprobs asked, vocabulary of ", logits.dim(1)));
  }
  PenaltyStaging staging;
  kernels::SampleParams params;
  params.logits = logits;
  if (any_penalty) {
    TESSERA_ASSIGN_OR_RETURN(params.logits, ApplyPenalties(logits, rows, staging, stream));
    params.raw_logits = logits;
  }
  TESSERA_RETURN_IF_ERROR(Upload(temperature, temperature_, stream));
  TESSERA_RETURN_IF_ERROR(Upload(top_k, top_k_, stream));
  TESSERA_RETURN_IF_ERROR(Upload(top_p, top_p_, stream));
  TESSERA_RETURN_IF_ERROR(Upload(seeds, seeds_, stream));
  TESSERA_RETURN_IF_ERROR(Upload(steps, steps_, stream));
  params.temperature = temperature_.View(DataType::kF32, {n});
  params.top_k = top_k_.View(DataType::kI32, {n});
  params.top_p = top_p_.View(DataType::kF32, {n});
  params.seeds = seeds_.View(DataType::kI64, {n});
  params.steps = steps_.View(DataType::kI64, {n});
  params.output_ids = ids_.View(DataType::kI32, {n});
  params.output_logprobs = logprobs_.View(DataType::kF32, {n});
  if (any_min_p) {
    TESSERA_RETURN_IF_ERROR(Upload(min_p, min_p_, stream));
    params.min_p = min_p_.View(DataType::kF32, {n});
  }
  if (top_n > 0) {
    const size_t bytes = static_cast<size_t>(n) * top_n * 4;
    TESSERA_RETURN_IF_ERROR(Reserve(top_ids_, bytes));
    TESSERA_RETURN_IF_ERROR(Reserve(top_logprobs_, bytes));
    params.output_top_ids = top_ids_.View(DataType::kI32, {n, top_n});
    params.output_top_logprobs = top_logprobs_.View(DataType::kF32, {n, top_n});
  }
  TESSERA_RETURN_IF_ERROR(kernels::Sample(backend_, params, stream));
  if (chosen_from != nullptr) *chosen_from = params.logits;
  StepResult result;
  result.token_ids.resize(n);
  result.logprobs.resize(n);
  TESSERA_RETURN_IF_ERROR(
      backend_.CopyToHost(ids_.data(), result.token_ids.data(), n * sizeof(int32_t), stream));
  TESSERA_RETURN_IF_ERROR(
      backend_.CopyToHost(logprobs_.data(), result.logprobs.data(), n * sizeof(float), stream));
  if (top_n > 0) {
    result.top_n = top_n;
    result.top_token_ids.resize(static_cast<size_t>(n) * top_n);
    result.top_logprobs.resize(static_cast<size_t>(n) * top_n);
    TESSERA_RETURN_IF_ERROR(backend_.CopyToHost(top_ids_.data(), result.top_token_ids.data(),
                                                result.top_token_ids.size() * 4, stream));
    TESSERA_RETURN_IF_ERROR(backend_.CopyToHost(top_logprobs_.data(), result.top_logprobs.data(),
                                                result.top_logprobs.size() * 4, stream));
  }
  TESSERA_RETURN_IF_ERROR(stream.Synchronize());
  return result;
}

LocalExecutor::~LocalExecutor() = default;

absl::StatusOr<std::unique_ptr<LocalExecutor>> LocalExecutor::Create(LlamaModel& model,
                                                                     KvCache& cache,
                                                                     kernels::Backend& backend) {
  auto executor = std::unique_ptr<LocalExecutor>(new LocalExecutor(model, cache));
  TESSERA_ASSIGN_OR_RETURN(executor->stream_, backend.CreateStream());
  TESSERA_ASSIGN_OR_RETURN(executor->sampler_,
                           DeviceSampler::Create(backend, model.options().max_num_tokens));
  return executor;
}

absl::StatusOr<StepResult> LocalExecutor::Execute(const StepPlan& plan) {
  if (plan.sampling.size() != plan.logits_rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat("step plan: ", plan.sampling.size(),
                                                   " sampling rows for ", plan.logits_rows.size(),
                                                   " logits rows"));
  }
  ForwardOptions options;
  options.kv_written = kv_written_;
  TESSERA_ASSIGN_OR_RETURN(TensorView logits,
                           model_.Forward(plan.AsForwardInput(), cache_, *stream_, options));
  if (plan.logits_rows.empty()) {
    TESSERA_RETURN_IF_ERROR(stream_->Synchronize());
    return StepResult{};
  }
  return sampler_->Sample(logits, plan.sampling, *stream_);
}

ExecutorLimits LimitsOf(const LlamaModel& model, const KvCache& cache) {
  ExecutorLimits l;
  l.num_blocks = cache.config().num_blocks;
  l.block_size = cache.config().block_size;
  l.max_blocks_per_seq = model.options().max_blocks_per_seq;
  l.max_num_tokens = model.options().max_num_tokens;
  l.max_num_seqs = model.options().max_num_seqs;
  return l;
}

ExecutorLimits LocalExecutor::limits() const { return LimitsOf(model_, cache_); }

}  // namespace tessera::worker
