// The paged KV cache on the CPU: KvWrite and PagedAttention.
//
// PagedAttention splits the batch into work items (sequence, KV head, a chunk of query rows) and
// runs them on OpenMP threads. An item holds the queries of all the query heads that share its
// KV head, walks the sequence's blocks once, and keeps a running (online) softmax per query:
// each K/V block is read (and converted to f32 when the cache is f16/bf16) once per item.
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_internal.h"

namespace tessera::kernels::cpu {
namespace {

struct WorkItem {
  int64_t seq;
  int64_t head_begin;  // KV heads [head_begin, head_end)
  int64_t head_end;
  int64_t row_begin;  // query rows of the sequence, 0-based within it
  int64_t row_end;
};

// Checks the batch layout held in memory (query_start, seq_lens, block_tables).
absl::Status CheckBatchLayout(const PagedAttentionParams& p) {
  const int64_t num_seqs = p.seq_lens.dim(0);
  const int64_t tokens = p.query.dim(0);
  const int64_t num_blocks = p.key_cache.dim(0);
  const int64_t block_size = p.key_cache.dim(2);
  const int64_t max_blocks = p.block_tables.dim(1);
  const int32_t* query_start = p.query_start.data_as<int32_t>();
  const int32_t* seq_lens = p.seq_lens.data_as<int32_t>();
  if (query_start[0] != 0 || query_start[num_seqs] != tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("PagedAttention: query_start expected to run from 0 to tokens = ", tokens,
                     ", got ", query_start[0], " .. ", query_start[num_seqs]));
  }
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t q_len = query_start[s + 1] - query_start[s];
    const int64_t seq_len = seq_lens[s];
    if (q_len < 0 || seq_len < q_len) {
      return absl::InvalidArgumentError(
          absl::StrCat("PagedAttention: sequence ", s, " expected 0 <= query rows <= seq_len, got ",
                       q_len, " query rows (query_start ", query_start[s], " .. ",
                       query_start[s + 1], ") and seq_len ", seq_len));
    }
    if (q_len == 0) continue;
    const int64_t used_blocks = (seq_len + block_size - 1) / block_size;
    if (used_blocks > max_blocks) {
      return absl::InvalidArgumentError(absl::StrCat(
          "PagedAttention: sequence ", s, " expected at most ", max_blocks * block_size,
          " tokens (block_tables columns * block_size), got seq_len ", seq_len));
    }
    const int32_t* table = p.block_tables.data_as<int32_t>() + s * p.block_tables.stride(0);
    for (int64_t b = 0; b < used_blocks; ++b) {
      if (table[b] < 0 || table[b] >= num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("PagedAttention: block_tables[", s, ", ", b,
                                                       "] expected in [0, ", num_blocks, "), got ",
                                                       table[b]));
      }
    }
  }
  return absl::OkStatus();
}

// How the batch is cut into items. An item over several KV heads reads each block of the cache
// as one contiguous run ([kv_head][token][head_dim] inside a block), which memory streams far
// better than one head's slice; so items take as many heads as still leave every thread a few
// items, and few enough queries that their state stays in L2.
struct Plan {
  int64_t rows_per_item;
  int64_t heads_per_item;
};

Plan PlanItems(const PagedAttentionParams& p, int threads) {
  const int64_t kv_heads = p.key_cache.dim(1);
  const int64_t group = p.query.dim(1) / kv_heads;
  constexpr int64_t kMaxQueries = 128;
  Plan plan{std::max<int64_t>(1, kMaxQueries / 2 / group), kv_heads};
  const int32_t* query_start = p.query_start.data_as<int32_t>();
  int64_t chunks = 0;
  for (int64_t s = 0; s < p.seq_lens.dim(0); ++s) {
    chunks += (query_start[s + 1] - query_start[s] + plan.rows_per_item - 1) / plan.rows_per_item;
  }
  const auto fits = [&](int64_t heads) {
    return chunks * (kv_heads / heads) >= 4 * threads &&
           heads * std::min(plan.rows_per_item, p.query.dim(0)) * group <= kMaxQueries;
  };
  while (plan.heads_per_item > 1 && !fits(plan.heads_per_item)) {
    do {
      --plan.heads_per_item;
    } while (kv_heads % plan.heads_per_item != 0);
  }
  return plan;
}

std::vector<WorkItem> MakeItems(const PagedAttentionParams& p, const Plan& plan) {
  std::vector<WorkItem> items;
  const int32_t* query_start = p.query_start.data_as<int32_t>();
  for (int64_t s = 0; s < p.seq_lens.dim(0); ++s) {
    const int64_t q_len = query_start[s + 1] - query_start[s];
    for (int64_t r = 0; r < q_len; r += plan.rows_per_item) {
      for (int64_t h = 0; h < p.key_cache.dim(1); h += plan.heads_per_item) {
        items.push_back(
            {s, h, h + plan.heads_per_item, r, std::min(q_len, r + plan.rows_per_item)});
      }
    }
  }
  return items;
}

// Per-thread buffers of one PagedAttention call. Query i of an item is (head hh of the item,
// row r of the item, head g of the group) at i = (hh * rows + r) * group + g.
struct Scratch {
  std::vector<float> query;   // [queries, head_dim], pre-scaled
  std::vector<float> acc;     // [queries, head_dim]
  std::vector<float> max;     // [queries]
  std::vector<float> sum;     // [queries]
  std::vector<float> scores;  // [queries of one head, block_size]
  std::vector<float> key;     // [block_size, head_dim] f32 copy of a block
  std::vector<float> value;
};

// Rows [0, count) of one block and head of a cache, as contiguous f32: in place when the cache
// already is, else converted into `buffer`.
const float* BlockRows(const SimdKernels& simd, const TensorView& cache, int64_t block,
                       int64_t head, int64_t count, std::vector<float>& buffer) {
  const int64_t head_dim = cache.dim(3);
  const int64_t offset = block * cache.stride(0) + head * cache.stride(1);
  const size_t size = cache.element_size();
  if (cache.dtype() == DataType::kF32 && (count <= 1 || cache.stride(2) == head_dim)) {
    return cache.data_as<float>() + offset;
  }
  if (count > 1 && cache.stride(2) == head_dim) {
    simd.to_f32(cache.dtype(), ElementPtr(cache.data(), offset, size), buffer.data(),
                count * head_dim);
  } else {
    for (int64_t j = 0; j < count; ++j) {
      simd.to_f32(cache.dtype(), ElementPtr(cache.data(), offset + j * cache.stride(2), size),
                  buffer.data() + j * head_dim, head_dim);
    }
  }
  return buffer.data();
}

// Prefetches rows [0, count) of one block and head of a cache into the caches.
void PrefetchBlockRows(const TensorView& cache, int64_t block, int64_t head, int64_t count) {
  const size_t size = cache.element_size();
  const auto* base = static_cast<const char*>(cache.data());
  const int64_t row_bytes = cache.dim(3) * static_cast<int64_t>(size);
  for (int64_t j = 0; j < count; ++j) {
    const char* row =
        base + (block * cache.stride(0) + head * cache.stride(1) + j * cache.stride(2)) *
                   static_cast<int64_t>(size);
    for (int64_t byte = 0; byte < row_bytes; byte += 64) __builtin_prefetch(row + byte, 0, 3);
  }
}

// The online-softmax step of `rows` x `group` queries (state at max/sum/acc) over the scores of
// one block: rescales the running sums to the new maximum and turns scores into weights (zero
// past each row's causal limit). Row r sees block columns [0, first_limit + r).
void SoftmaxStep(const SimdKernels& simd, float* scores, int64_t block_size, int64_t valid,
                 int64_t rows, int64_t group, int64_t first_limit, int64_t head_dim, float* max,
                 float* sum, float* acc) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t limit = std::min(valid, first_limit + r);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t i = r * group + g;
      float* row = scores + i * block_size;
      if (limit <= 0) {
        std::fill_n(row, valid, 0.0f);
        continue;
      }
      float block_max = row[0];
      for (int64_t j = 1; j < limit; ++j) block_max = std::max(block_max, row[j]);
      const float new_max = std::max(max[i], block_max);
      const float correction = std::exp(max[i] - new_max);
      const float block_sum = simd.exp_shifted(row, limit, new_max);
      std::fill(row + limit, row + valid, 0.0f);
      sum[i] = sum[i] * correction + block_sum;
      max[i] = new_max;
      if (correction != 1.0f) {
        float* a = acc + i * head_dim;
#pragma omp simd
        for (int64_t c = 0; c < head_dim; ++c) a[c] *= correction;
      }
    }
  }
}

void RunItem(const SimdKernels& simd, const PagedAttentionParams& p, const WorkItem& item,
             Scratch& scratch) {
  const int64_t head_dim = p.query.dim(2);
  const int64_t block_size = p.key_cache.dim(2);
  const int64_t group = p.query.dim(1) / p.key_cache.dim(1);
  const int64_t first_row = p.query_start.data_as<int32_t>()[item.seq];
  const int64_t seq_len = p.seq_lens.data_as<int32_t>()[item.seq];
  const int64_t q_len = p.query_start.data_as<int32_t>()[item.seq + 1] - first_row;
  const int64_t first_pos = seq_len - q_len;  // position of query row 0
  const int64_t rows = item.row_end - item.row_begin;
  const int64_t heads = item.head_end - item.head_begin;
  const int64_t per_head = rows * group;  // queries per KV head
  const int64_t queries = heads * per_head;
  const int32_t* table = p.block_tables.data_as<int32_t>() + item.seq * p.block_tables.stride(0);
  const float scale = p.scale;
  const auto query_row = [&](const TensorView& view, int64_t hh, int64_t r, int64_t g) {
    return (first_row + item.row_begin + r) * view.stride(0) +
           ((item.head_begin + hh) * group + g) * view.stride(1);
  };

  for (int64_t hh = 0; hh < heads; ++hh) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t g = 0; g < group; ++g) {
        const float* src = p.query.data_as<float>() + query_row(p.query, hh, r, g);
        float* dst = scratch.query.data() + ((hh * rows + r) * group + g) * head_dim;
#pragma omp simd
        for (int64_t c = 0; c < head_dim; ++c) dst[c] = src[c] * scale;
      }
    }
  }
  std::fill_n(scratch.acc.begin(), queries * head_dim, 0.0f);
  std::fill_n(scratch.max.begin(), queries, -std::numeric_limits<float>::infinity());
  std::fill_n(scratch.sum.begin(), queries, 0.0f);

  const int64_t last_pos = first_pos + item.row_end - 1;
  for (int64_t b = 0; b * block_size <= last_pos; ++b) {
    const int64_t start = b * block_size;
    const int64_t valid = std::min(block_size, last_pos + 1 - start);
    // The next block's rows are somewhere else in memory (a page of their own, often): ask for
    // them now, so that they arrive while this block computes instead of stalling its reads.
    if ((b + 1) * block_size <= last_pos) {
      const int64_t next_valid = std::min(block_size, last_pos + 1 - (b + 1) * block_size);
      for (int64_t hh = 0; hh < heads; ++hh) {
        PrefetchBlockRows(p.key_cache, table[b + 1], item.head_begin + hh, next_valid);
        PrefetchBlockRows(p.value_cache, table[b + 1], item.head_begin + hh, next_valid);
      }
    }
    for (int64_t hh = 0; hh < heads; ++hh) {
      const int64_t head = item.head_begin + hh;
      const int64_t q0 = hh * per_head;
      const float* keys = BlockRows(simd, p.key_cache, table[b], head, valid, scratch.key);
      simd.qk_scores(scratch.query.data() + q0 * head_dim, per_head, keys, valid, head_dim,
                     scratch.scores.data(), block_size);
      SoftmaxStep(simd, scratch.scores.data(), block_size, valid, rows, group,
                  first_pos + item.row_begin + 1 - start, head_dim, scratch.max.data() + q0,
                  scratch.sum.data() + q0, scratch.acc.data() + q0 * head_dim);
      const float* values = BlockRows(simd, p.value_cache, table[b], head, valid, scratch.value);
      simd.pv_accumulate(scratch.scores.data(), per_head, block_size, values, valid, head_dim,
                         scratch.acc.data() + q0 * head_dim);
    }
  }

  for (int64_t hh = 0; hh < heads; ++hh) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t g = 0; g < group; ++g) {
        const int64_t i = (hh * rows + r) * group + g;
        float* dst = p.output.data_as<float>() + query_row(p.output, hh, r, g);
        const float* acc = scratch.acc.data() + i * head_dim;
        const float inv_sum = 1.0f / scratch.sum[i];
#pragma omp simd
        for (int64_t c = 0; c < head_dim; ++c) dst[c] = acc[c] * inv_sum;
      }
    }
  }
}

}  // namespace

absl::Status CpuKvWrite(Backend& backend, const KvWriteParams& p, Stream&) {
  const CpuBackend& cpu = CpuBackend::From(backend);
  const int64_t tokens = p.key.dim(0);
  const int64_t kv_heads = p.key.dim(1);
  const int64_t head_dim = p.key.dim(2);
  const int64_t block_size = p.key_cache.dim(2);
  const int64_t slots = p.key_cache.dim(0) * block_size;
  const int64_t* slot_mapping = p.slot_mapping.data_as<int64_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    if (slot_mapping[t] >= slots) {
      return absl::InvalidArgumentError(absl::StrCat(
          "KvWrite: slot_mapping[", t, "] expected < num_blocks * block_size = ", slots,
          " (or negative to skip), got ", slot_mapping[t]));
    }
  }
  const DataType cache_dtype = p.key_cache.dtype();
  const size_t size = p.key_cache.element_size();
  const SimdKernels& simd = cpu.simd();
  const int threads = ThreadsFor(cpu, tokens, kv_heads * head_dim * 2);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t slot = slot_mapping[t];
    if (slot < 0) continue;
    const int64_t block = slot / block_size;
    const int64_t offset = slot % block_size;
    const auto write = [&](const TensorView& src, const MutableTensorView& cache) {
      for (int64_t h = 0; h < kv_heads; ++h) {
        const float* from = src.data_as<float>() + t * src.stride(0) + h * src.stride(1);
        const int64_t to = block * cache.stride(0) + h * cache.stride(1) + offset * cache.stride(2);
        simd.from_f32(from, cache_dtype, ElementPtr(cache.data(), to, size), head_dim);
      }
    };
    write(p.key, p.key_cache);
    write(p.value, p.value_cache);
  }
  return absl::OkStatus();
}

absl::Status CpuPagedAttention(Backend& backend, const PagedAttentionParams& p, Stream&) {
  const CpuBackend& cpu = CpuBackend::From(backend);
  if (absl::Status status = CheckBatchLayout(p); !status.ok()) return status;
  const int64_t head_dim = p.query.dim(2);
  const int64_t block_size = p.key_cache.dim(2);
  const int64_t group = p.query.dim(1) / p.key_cache.dim(1);
  const Plan plan = PlanItems(p, cpu.num_threads());
  const std::vector<WorkItem> items = MakeItems(p, plan);
  const auto work = static_cast<int64_t>(items.size());
  if (work == 0) return absl::OkStatus();
  const int64_t queries = plan.heads_per_item * plan.rows_per_item * group;
  const int threads = ThreadsFor(cpu, work, queries * head_dim * 64);
  const SimdKernels& simd = cpu.simd();
#pragma omp parallel num_threads(threads)
  {
    Scratch scratch;
    scratch.query.resize(queries * head_dim);
    scratch.acc.resize(queries * head_dim);
    scratch.max.resize(queries);
    scratch.sum.resize(queries);
    scratch.scores.resize(plan.rows_per_item * group * block_size);
    scratch.key.resize(block_size * head_dim);
    scratch.value.resize(block_size * head_dim);
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < work; ++w) RunItem(simd, p, items[w], scratch);
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels::cpu
