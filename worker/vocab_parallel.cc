#include "worker/vocab_parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "absl/base/casts.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/op_params.h"
#include "kernels/ops.h"

namespace tessera::worker {
namespace {

// One row's record as every rank sends it, 32-bit words: the chosen id (the shard's greedy token),
// the bits of its value after penalties, of its raw logit and of the shard's log-normaliser, then
// N top ids and the bits of their shard-local logprobs, then K sampling candidates: the shard's K
// best ids after penalties, the bits of their values after penalties, and of their raw logits. A
// rank without columns sends id -1; unused candidates have id -1.
constexpr int64_t kId = 0, kValue = 1, kRaw = 2, kLogNorm = 3, kTop = 4;
int64_t RecordWidth(int32_t top_n, int32_t k) {
  return kTop + 2 * static_cast<int64_t>(top_n) + 3 * static_cast<int64_t>(k);
}

bool Sampled(const SamplingRow& row) { return row.temperature > 0.0f; }

// kernels::Sample's draw (kernels/op_params.h) over the candidates of a row whose top_k bounds
// the draw: every token outside the row's top_k is out anyway, so the union of the shards' top_k
// holds all that matter. `candidates` are (value after penalties, id); returns the index of the
// drawn one, or -1 when the largest value is not finite (the kernel then samples greedily).
int64_t DrawAmong(std::vector<std::pair<float, int32_t>>& candidates, const SamplingRow& row) {
  float max = -std::numeric_limits<float>::infinity();
  for (const auto& c : candidates) max = std::max(max, c.first);  // NaN is skipped, as there
  if (!std::isfinite(max)) return -1;
  struct Prob {
    float prob;
    int32_t index;  // into `candidates`
    int32_t id;
  };
  const float floor = std::min(row.min_p, 1.0f);
  std::vector<Prob> kept;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const float prob = std::exp((candidates[i].first - max) / row.temperature);
    if (prob < floor || !(prob > 0.0f)) continue;  // min-p; zero and NaN are dropped
    kept.push_back({prob, static_cast<int32_t>(i), candidates[i].second});
  }
  // The kernel's order: descending probability, ties by token id.
  std::sort(kept.begin(), kept.end(), [](const Prob& a, const Prob& b) {
    return a.prob != b.prob ? a.prob > b.prob : a.id < b.id;
  });
  size_t n = std::min(kept.size(), static_cast<size_t>(row.top_k));
  auto mass_of = [&](size_t count) {
    double mass = 0.0;
    for (size_t i = 0; i < count; ++i) mass += kept[i].prob;
    return mass;
  };
  // The first prefix whose sum reaches `target` (strictly passes it), else all of them.
  auto prefix = [&](double target, bool strict) {
    double sum = 0.0;
    for (size_t i = 0; i < n; ++i) {
      sum += kept[i].prob;
      if (strict ? sum > target : sum >= target) return i + 1;
    }
    return n;
  };
  double mass = mass_of(n);
  if (row.top_p < 1.0f) {
    n = prefix(static_cast<double>(row.top_p) * mass, /*strict=*/false);
    mass = mass_of(n);
  }
  const double u = kernels::SampleUniform(row.seed, row.step);
  return kept[prefix(u * mass, /*strict=*/true) - 1].index;
}

int32_t Bits(float value) { return absl::bit_cast<int32_t>(value); }
float Float(int32_t bits) { return absl::bit_cast<float>(bits); }

// The row as this rank samples it: penalty and ban lists restricted to columns
// [begin, begin + columns) and renumbered from 0; at most `columns` top logprobs.
absl::StatusOr<SamplingRow> LocalRow(const SamplingRow& row, int64_t begin, int64_t columns,
                                     int64_t vocab_size) {
  if (row.penalty_token_ids.size() != row.penalty_output_counts.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: ", row.penalty_token_ids.size(), " penalty tokens with ",
                     row.penalty_output_counts.size(), " output counts"));
  }
  // The row's settings as they are; the token lists are rebuilt for this rank's columns.
  SamplingRow local = row;
  local.penalty_token_ids.clear();
  local.penalty_output_counts.clear();
  local.banned_token_ids.clear();
  local.num_top_logprobs = static_cast<int32_t>(std::min<int64_t>(row.num_top_logprobs, columns));
  auto in_vocab = [&](int32_t id) -> absl::Status {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ApplyPenalties: token id ", id, " outside the vocabulary [0, ", vocab_size, ")"));
    }
    return absl::OkStatus();
  };
  auto mine = [&](int32_t id) { return id >= begin && id < begin + columns; };
  for (size_t e = 0; e < row.penalty_token_ids.size(); ++e) {
    const int32_t id = row.penalty_token_ids[e];
    TESSERA_RETURN_IF_ERROR(in_vocab(id));
    if (!mine(id)) continue;
    local.penalty_token_ids.push_back(static_cast<int32_t>(id - begin));
    local.penalty_output_counts.push_back(row.penalty_output_counts[e]);
  }
  for (const int32_t id : row.banned_token_ids) {
    TESSERA_RETURN_IF_ERROR(in_vocab(id));
    if (mine(id)) local.banned_token_ids.push_back(static_cast<int32_t>(id - begin));
  }
  if (row.bias_token_ids.size() != row.bias_values.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Sample: ", row.bias_token_ids.size(),
                                                   " logit bias tokens with ",
                                                   row.bias_values.size(), " values"));
  }
  local.bias_token_ids.clear();
  local.bias_values.clear();
  for (size_t e = 0; e < row.bias_token_ids.size(); ++e) {
    const int32_t id = row.bias_token_ids[e];
    TESSERA_RETURN_IF_ERROR(in_vocab(id));
    if (!mine(id)) continue;
    local.bias_token_ids.push_back(static_cast<int32_t>(id - begin));
    local.bias_values.push_back(row.bias_values[e]);
  }
  if (!row.allowed_mask.empty()) {
    if (static_cast<int64_t>(row.allowed_mask.size()) != (vocab_size + 31) / 32) {
      return absl::InvalidArgumentError(absl::StrCat("Sample: an allowed-token mask of ",
                                                     row.allowed_mask.size(),
                                                     " words for a vocabulary of ", vocab_size));
    }
    local.allowed_mask.assign(static_cast<size_t>((columns + 31) / 32), 0u);
    for (int64_t j = 0; j < columns; ++j) {
      const int64_t t = begin + j;
      if ((row.allowed_mask[t / 32] >> (t % 32)) & 1u) {
        local.allowed_mask[j / 32] |= uint32_t{1} << (j % 32);
      }
    }
  }
  return local;
}

}  // namespace

bool CanSampleVocabParallel(const std::vector<SamplingRow>& rows) {
  return std::all_of(rows.begin(), rows.end(), [](const SamplingRow& r) {
    return !Sampled(r) || (r.top_k > 0 && r.top_k <= kMaxVocabParallelTopK);
  });
}

absl::StatusOr<std::unique_ptr<VocabParallelSampler>> VocabParallelSampler::Create(
    kernels::Backend& backend, int32_t max_rows) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<DeviceSampler> sampler,
                           DeviceSampler::Create(backend, max_rows));
  return std::unique_ptr<VocabParallelSampler>(
      new VocabParallelSampler(backend, std::move(sampler)));
}

absl::Status VocabParallelSampler::Reserve(kernels::DeviceBuffer& buffer, size_t bytes) {
  if (buffer.data() != nullptr && buffer.size() >= bytes) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(buffer, backend_.Allocate(std::max<size_t>(bytes, 2 * buffer.size())));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> VocabParallelSampler::GatherElements(
    const TensorView& matrix, const std::vector<int32_t>& columns, int64_t per_row,
    Stream& stream) {
  // The Embedding op gathers rows of a table; over the matrix's memory seen as a [elements, 1]
  // table it gathers single elements, one kernel for all of them.
  const int64_t stride = matrix.stride(0);
  const int64_t elements = (matrix.dim(0) - 1) * stride + matrix.dim(1);
  if (elements > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: logits of ", elements, " elements exceed 32-bit indexing"));
  }
  const auto rows = static_cast<int64_t>(columns.size());  // one element each
  std::vector<int32_t> flat(columns.size());
  for (int64_t i = 0; i < rows; ++i) {
    flat[i] = static_cast<int32_t>((i / per_row) * stride + columns[static_cast<size_t>(i)]);
  }
  const size_t bytes = flat.size() * sizeof(int32_t);
  TESSERA_RETURN_IF_ERROR(Reserve(element_ids_, bytes));
  TESSERA_RETURN_IF_ERROR(Reserve(elements_, flat.size() * sizeof(float)));
  TESSERA_RETURN_IF_ERROR(backend_.CopyToDevice(flat.data(), element_ids_.data(), bytes, stream));
  const TensorView table(matrix.data(), DataType::kF32, {elements, 1}, matrix.device());
  const MutableTensorView out = elements_.View(DataType::kF32, {rows, 1});
  TESSERA_RETURN_IF_ERROR(kernels::Embedding(
      backend_, {element_ids_.View(DataType::kI32, {rows}), table, out, 0}, stream));
  std::vector<float> values(static_cast<size_t>(rows));
  TESSERA_RETURN_IF_ERROR(
      backend_.CopyToHost(out.data(), values.data(), values.size() * sizeof(float), stream));
  TESSERA_RETURN_IF_ERROR(stream.Synchronize());
  return values;
}

template <typename T>
absl::StatusOr<std::vector<T>> VocabParallelSampler::Exchange(const std::vector<T>& mine,
                                                              int64_t rows, int64_t width,
                                                              DataType dtype,
                                                              parallel::Communicator& tp,
                                                              Stream& stream) {
  const size_t bytes = mine.size() * sizeof(T);
  const int64_t ranks = tp.size();
  TESSERA_RETURN_IF_ERROR(Reserve(send_, bytes));
  TESSERA_RETURN_IF_ERROR(Reserve(recv_, bytes * static_cast<size_t>(ranks)));
  TESSERA_RETURN_IF_ERROR(backend_.CopyToDevice(mine.data(), send_.data(), bytes, stream));
  TESSERA_RETURN_IF_ERROR(tp.AllGather(send_.View(dtype, {rows, width}),
                                       recv_.View(dtype, {ranks * rows, width}), stream));
  std::vector<T> all(mine.size() * static_cast<size_t>(ranks));
  TESSERA_RETURN_IF_ERROR(backend_.CopyToHost(recv_.data(), all.data(), bytes * ranks, stream));
  TESSERA_RETURN_IF_ERROR(stream.Synchronize());
  return all;
}

absl::StatusOr<StepResult> VocabParallelSampler::Sample(const TensorView& logits,
                                                        int64_t vocab_begin, int64_t vocab_size,
                                                        const std::vector<SamplingRow>& rows,
                                                        parallel::Communicator& tp,
                                                        Stream& stream) {
  const int64_t n = static_cast<int64_t>(rows.size());
  const int64_t columns = logits.rank() == 2 ? logits.dim(1) : -1;
  // A rank past the end of a small vocabulary holds no columns (and may begin past its end).
  if (logits.rank() != 2 || logits.dim(0) != n || vocab_begin < 0 ||
      (columns > 0 && vocab_begin + columns > vocab_size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: ", n, " sampling rows for logits ", logits.DebugString(),
                     " from token ", vocab_begin, " of a vocabulary of ", vocab_size));
  }
  if (!CanSampleVocabParallel(rows)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: a vocab-parallel step holds a sampled row without a top_k in [1, ",
                     kMaxVocabParallelTopK, "]"));
  }
  int32_t top_n = 0, k = 0;
  for (const SamplingRow& r : rows) {
    top_n = std::max(top_n, r.num_top_logprobs);
    if (Sampled(r)) k = std::max(k, r.top_k);
  }
  if (top_n > vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: ", top_n, " top logprobs asked, vocabulary of ", vocab_size));
  }
  std::vector<SamplingRow> local;
  local.reserve(rows.size());
  for (const SamplingRow& r : rows) {
    TESSERA_ASSIGN_OR_RETURN(SamplingRow row, LocalRow(r, vocab_begin, columns, vocab_size));
    row.temperature = 0.0f;  // each shard's greedy token; sampled rows draw after the exchange
    local.push_back(std::move(row));
  }

  const int64_t width = RecordWidth(top_n, k);
  const int64_t cand = kTop + 2 * static_cast<int64_t>(top_n);  // the candidates' first word
  std::vector<int32_t> mine(static_cast<size_t>(n * width), -1);
  if (columns > 0 && n > 0) {
    TensorView chosen_from;
    TESSERA_ASSIGN_OR_RETURN(StepResult own, sampler_->Sample(logits, local, stream, &chosen_from));
    TESSERA_ASSIGN_OR_RETURN(std::vector<float> values,
                             GatherElements(chosen_from, own.token_ids, 1, stream));
    TESSERA_ASSIGN_OR_RETURN(std::vector<float> raw,
                             GatherElements(logits, own.token_ids, 1, stream));
    if (k > 0) {
      // The shard's best K columns after penalties: the top-N of the penalised logits (ties by
      // column), with their values after penalties and raw.
      const auto shard_k = static_cast<int32_t>(std::min<int64_t>(k, columns));
      std::vector<SamplingRow> plain(static_cast<size_t>(n));
      for (SamplingRow& p : plain) p.num_top_logprobs = shard_k;
      TESSERA_ASSIGN_OR_RETURN(StepResult best, sampler_->Sample(chosen_from, plain, stream));
      TESSERA_ASSIGN_OR_RETURN(std::vector<float> best_values,
                               GatherElements(chosen_from, best.top_token_ids, shard_k, stream));
      TESSERA_ASSIGN_OR_RETURN(std::vector<float> best_raw,
                               GatherElements(logits, best.top_token_ids, shard_k, stream));
      for (int64_t r = 0; r < n; ++r) {
        if (!Sampled(rows[r])) continue;
        int32_t* record = mine.data() + r * width + cand;
        for (int32_t j = 0; j < shard_k; ++j) {
          const size_t at = static_cast<size_t>(r * shard_k + j);
          record[j] = best.top_token_ids[at] + static_cast<int32_t>(vocab_begin);
          record[k + j] = Bits(best_values[at]);
          record[2 * k + j] = Bits(best_raw[at]);
        }
      }
    }
    for (int64_t r = 0; r < n; ++r) {
      int32_t* record = mine.data() + r * width;
      record[kId] = own.token_ids[r] + static_cast<int32_t>(vocab_begin);
      record[kValue] = Bits(values[r]);
      record[kRaw] = Bits(raw[r]);
      // The chosen token's logprob within the shard is raw - log-normaliser.
      record[kLogNorm] = Bits(raw[r] - own.logprobs[r]);
      for (int32_t j = 0; j < own.top_n; ++j) {
        record[kTop + j] = own.top_token_ids[r * own.top_n + j] + static_cast<int32_t>(vocab_begin);
        record[kTop + top_n + j] = Bits(own.top_logprobs[r * own.top_n + j]);
      }
    }
  }
  TESSERA_ASSIGN_OR_RETURN(std::vector<int32_t> all,
                           Exchange(mine, n, width, DataType::kI32, tp, stream));

  StepResult result;
  result.token_ids.resize(static_cast<size_t>(n));
  result.logprobs.resize(static_cast<size_t>(n));
  result.top_n = top_n;
  result.top_token_ids.resize(static_cast<size_t>(n * top_n));
  result.top_logprobs.resize(static_cast<size_t>(n * top_n));
  const int64_t ranks = tp.size();
  std::vector<std::pair<float, int32_t>> candidates, drawn;
  std::vector<float> raws;
  for (int64_t r = 0; r < n; ++r) {
    auto record = [&](int64_t rank) { return all.data() + (rank * n + r) * width; };
    int64_t best = -1;
    double max_norm = -std::numeric_limits<double>::infinity();
    for (int64_t q = 0; q < ranks; ++q) {
      const int32_t* rec = record(q);
      if (rec[kId] < 0) continue;
      // Strictly greater: on equal values the lower rank, whose ids are lower, keeps the token.
      if (best < 0 || Float(rec[kValue]) > Float(record(best)[kValue])) best = q;
      max_norm = std::max<double>(max_norm, Float(rec[kLogNorm]));
    }
    if (best < 0) return absl::InternalError("Sample: no rank of the TP group holds vocabulary");
    double sum = 0.0;
    for (int64_t q = 0; q < ranks; ++q) {
      if (record(q)[kId] >= 0) sum += std::exp(Float(record(q)[kLogNorm]) - max_norm);
    }
    const double log_norm = max_norm + std::log(sum);
    result.token_ids[r] = record(best)[kId];
    result.logprobs[r] = static_cast<float>(Float(record(best)[kRaw]) - log_norm);
    if (Sampled(rows[r])) {
      // Every shard's candidates; the draw over them is the gathered sampler's.
      drawn.clear();
      raws.clear();
      for (int64_t q = 0; q < ranks; ++q) {
        const int32_t* rec = record(q) + cand;
        for (int32_t j = 0; j < k && rec[j] >= 0; ++j) {
          drawn.emplace_back(Float(rec[k + j]), rec[j]);
          raws.push_back(Float(rec[2 * k + j]));
        }
      }
      const int64_t at = DrawAmong(drawn, rows[r]);
      if (at >= 0) {  // else the largest value is not finite: greedy, as the kernel does
        result.token_ids[r] = drawn[at].second;
        result.logprobs[r] = static_cast<float>(raws[at] - log_norm);
      }
    }
    if (top_n == 0) continue;
    candidates.clear();
    for (int64_t q = 0; q < ranks; ++q) {
      const int32_t* rec = record(q);
      for (int32_t j = 0; j < top_n && rec[kTop + j] >= 0; ++j) {
        const double global = Float(rec[kTop + top_n + j]) + Float(rec[kLogNorm]) - log_norm;
        candidates.emplace_back(static_cast<float>(global), rec[kTop + j]);
      }
    }
    if (static_cast<int64_t>(candidates.size()) < top_n) {
      return absl::InternalError(absl::StrCat("Sample: the TP group offered ", candidates.size(),
                                              " top logprobs for ", top_n));
    }
    std::partial_sort(candidates.begin(), candidates.begin() + top_n, candidates.end(),
                      [](const auto& a, const auto& b) {
                        return a.first != b.first ? a.first > b.first : a.second < b.second;
                      });
    for (int32_t j = 0; j < top_n; ++j) {
      result.top_token_ids[r * top_n + j] = candidates[j].second;
      result.top_logprobs[r * top_n + j] = candidates[j].first;
    }
  }
  return result;
}

}  // namespace tessera::worker
