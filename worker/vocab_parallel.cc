#include "worker/vocab_parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/base/casts.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/ops.h"

namespace tessera::worker {
namespace {

// One row's record as every rank sends it, 32-bit words: the chosen id, the bits of its value
// after penalties, of its raw logit and of the shard's log-normaliser, then N top ids and the bits
// of their shard-local logprobs. A rank without columns sends id -1.
constexpr int64_t kId = 0, kValue = 1, kRaw = 2, kLogNorm = 3, kTop = 4;
int64_t RecordWidth(int32_t top_n) { return kTop + 2 * static_cast<int64_t>(top_n); }

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
  return local;
}

}  // namespace

bool CanSampleVocabParallel(const std::vector<SamplingRow>& rows) {
  return std::all_of(rows.begin(), rows.end(),
                     [](const SamplingRow& r) { return r.temperature <= 0.0f; });
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
    const TensorView& matrix, const std::vector<int32_t>& columns, Stream& stream) {
  // The Embedding op gathers rows of a table; over the matrix's memory seen as a [elements, 1]
  // table it gathers single elements, one kernel for every row.
  const int64_t rows = matrix.dim(0);
  const int64_t stride = matrix.stride(0);
  const int64_t elements = (rows - 1) * stride + matrix.dim(1);
  if (elements > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: logits of ", elements, " elements exceed 32-bit indexing"));
  }
  std::vector<int32_t> flat(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    flat[r] = static_cast<int32_t>(r * stride + columns[static_cast<size_t>(r)]);
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
        "Sample: a vocab-parallel step holds a row that is not greedy");
  }
  int32_t top_n = 0;
  for (const SamplingRow& r : rows) top_n = std::max(top_n, r.num_top_logprobs);
  if (top_n > vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: ", top_n, " top logprobs asked, vocabulary of ", vocab_size));
  }
  std::vector<SamplingRow> local;
  local.reserve(rows.size());
  for (const SamplingRow& r : rows) {
    TESSERA_ASSIGN_OR_RETURN(SamplingRow row, LocalRow(r, vocab_begin, columns, vocab_size));
    local.push_back(std::move(row));
  }

  const int64_t width = RecordWidth(top_n);
  std::vector<int32_t> mine(static_cast<size_t>(n * width), -1);
  if (columns > 0 && n > 0) {
    TensorView chosen_from;
    TESSERA_ASSIGN_OR_RETURN(StepResult own, sampler_->Sample(logits, local, stream, &chosen_from));
    TESSERA_ASSIGN_OR_RETURN(std::vector<float> values,
                             GatherElements(chosen_from, own.token_ids, stream));
    TESSERA_ASSIGN_OR_RETURN(std::vector<float> raw, GatherElements(logits, own.token_ids, stream));
    for (int64_t r = 0; r < n; ++r) {
      int32_t* record = mine.data() + r * width;
      record[kId] = own.token_ids[r] + static_cast<int32_t>(vocab_begin);
      record[kValue] = Bits(values[r]);
      record[kRaw] = Bits(raw[r]);
      // The chosen token's logprob within the shard is raw - log-normaliser.
      record[kLogNorm] = Bits(raw[r] - own.logprobs[r]);
      for (int32_t k = 0; k < own.top_n; ++k) {
        record[kTop + k] = own.top_token_ids[r * own.top_n + k] + static_cast<int32_t>(vocab_begin);
        record[kTop + top_n + k] = Bits(own.top_logprobs[r * own.top_n + k]);
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
  std::vector<std::pair<float, int32_t>> candidates;
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
    if (top_n == 0) continue;
    candidates.clear();
    for (int64_t q = 0; q < ranks; ++q) {
      const int32_t* rec = record(q);
      for (int32_t k = 0; k < top_n && rec[kTop + k] >= 0; ++k) {
        const double global = Float(rec[kTop + top_n + k]) + Float(rec[kLogNorm]) - log_norm;
        candidates.emplace_back(static_cast<float>(global), rec[kTop + k]);
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
    for (int32_t k = 0; k < top_n; ++k) {
      result.top_token_ids[r * top_n + k] = candidates[k].second;
      result.top_logprobs[r * top_n + k] = candidates[k].first;
    }
  }
  return result;
}

}  // namespace tessera::worker
