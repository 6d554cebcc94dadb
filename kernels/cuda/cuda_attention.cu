// PagedAttention on CUDA: FlashAttention-2-style tiles over the paged cache with an online
// softmax, grouped-query heads packed into the tile's rows, and split-KV for long contexts.
//
// Work item = (sequence, a chunk of its query rows) x (KV head, a range of its query heads) x
// (a split of the context). A tile's "rows" are the query vectors (query row, query head) of one
// KV head, so a decode step reads each K/V block once for all query heads of its group, and a
// prefill chunk reads it once for up to kTargetVectors queries. Keys stream through shared
// memory kTileKeys at a time (gathered through the block table, converted to f32).
//
// The batch layout lives in device memory, so the host cannot plan per sequence without a
// synchronisation: a one-thread planning kernel turns query_start into the item list, and the
// grid is sized by an upper bound on the item count (surplus blocks exit at once). With
// several splits, each block writes a partial (max, sum, unnormalised output) and a combine
// kernel merges them.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/cuda_common.cuh"

namespace tessera::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTileKeys = 32;  // one key per lane in the softmax step
constexpr int kTargetVectors = 32;
constexpr int64_t kMinSplitTokens = 256;
constexpr size_t kMaxPartialBytes = size_t{256} << 20;

struct Plan {
  int rows_per_item;   // query rows of one sequence per item
  int heads_per_item;  // query heads of one KV head per item (<= group)
  int head_chunks;     // ceil(group / heads_per_item)
  int group;           // q_heads / kv_heads
  int splits;          // context splits
  int64_t chunk;       // keys per split, a multiple of kTileKeys
  float* partial_out;  // [tokens, q_heads, splits, head_dim] when splits > 1
  float* partial_ml;   // [tokens, q_heads, splits, 2] (max, sum)
};

size_t SharedBytes(int vectors, int64_t head_dim) {
  const int64_t floats = 2 * vectors * head_dim + kTileKeys * (head_dim + 1) +
                         kTileKeys * head_dim + vectors * kTileKeys + 3 * vectors;
  return static_cast<size_t>(floats) * sizeof(float);
}

// One thread: the items (sequence, first row) of every well-formed sequence. Sequences whose
// layout is inconsistent (rows outside [0, tokens], seq_len < rows, more tokens than the block
// table holds) get no item; their output rows stay unwritten.
__global__ void PlanItemsKernel(PagedAttentionArgs a, int rows_per_item, int capacity, int2* items,
                                int* count) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  const int64_t max_context = a.max_blocks_per_seq * a.block_size;
  int n = 0;
  for (int64_t s = 0; s < a.num_seqs; ++s) {
    const int64_t begin = a.query_start[s];
    const int64_t end = a.query_start[s + 1];
    const int64_t seq_len = a.seq_lens[s];
    if (begin < 0 || end < begin || end > a.tokens || seq_len < end - begin ||
        seq_len > max_context) {
      continue;
    }
    for (int64_t r = 0; r < end - begin && n < capacity; r += rows_per_item) {
      items[n++] = make_int2(static_cast<int>(s), static_cast<int>(r));
    }
  }
  *count = n;
}

__global__ void __launch_bounds__(kThreads)
    AttentionKernel(PagedAttentionArgs a, Plan p, const int2* items, const int* count) {
  extern __shared__ float smem[];
  if (static_cast<int>(blockIdx.x) >= *count) return;
  const int2 item = items[blockIdx.x];
  const int64_t s = item.x;
  const int64_t row0 = item.y;
  const int64_t kv_head = blockIdx.y / p.head_chunks;
  const int g0 = static_cast<int>(blockIdx.y % p.head_chunks) * p.heads_per_item;
  const int heads = min(p.heads_per_item, p.group - g0);
  const int64_t split = blockIdx.z;
  const int64_t D = a.head_dim;

  const int64_t q_begin = a.query_start[s];
  const int64_t q_len = a.query_start[s + 1] - q_begin;
  const int64_t first_pos = a.seq_lens[s] - q_len;  // position of query row 0
  const int rows = static_cast<int>(min(static_cast<int64_t>(p.rows_per_item), q_len - row0));
  const int vectors = rows * heads;
  const int capacity = p.rows_per_item * p.heads_per_item;
  const int64_t last_pos = first_pos + row0 + rows - 1;
  const int64_t key_begin = split * p.chunk;
  const int64_t key_end = min((split + 1) * p.chunk, last_pos + 1);

  float* q_s = smem;                        // [capacity, D], pre-scaled
  float* o_s = q_s + capacity * D;          // [capacity, D]
  float* k_s = o_s + capacity * D;          // [kTileKeys, D + 1]
  float* v_s = k_s + kTileKeys * (D + 1);   // [kTileKeys, D]
  float* p_s = v_s + kTileKeys * D;         // [capacity, kTileKeys]
  float* m_s = p_s + capacity * kTileKeys;  // [capacity]
  float* l_s = m_s + capacity;              // [capacity]
  float* c_s = l_s + capacity;              // [capacity]

  // Vector v is (row v / heads, query head kv_head * group + g0 + v % heads).
  const auto token_of = [&](int v) { return q_begin + row0 + v / heads; };
  const auto head_of = [&](int v) { return kv_head * p.group + g0 + v % heads; };

  for (int64_t i = threadIdx.x; i < vectors * D; i += kThreads) {
    const int v = static_cast<int>(i / D);
    const int64_t d = i % D;
    q_s[i] =
        LoadF32(a.query, token_of(v) * a.query_stride0 + head_of(v) * a.query_stride1 + d, a.type) *
        a.scale;
    o_s[i] = 0.0f;
  }
  for (int v = threadIdx.x; v < vectors; v += kThreads) {
    m_s[v] = -INFINITY;
    l_s[v] = 0.0f;
  }
  __syncthreads();

  const int32_t* table = a.block_tables + s * a.block_tables_stride;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  for (int64_t j0 = key_begin; j0 < key_end; j0 += kTileKeys) {
    const int n = static_cast<int>(min(static_cast<int64_t>(kTileKeys), key_end - j0));
    // Gather the tile's keys and values; a block id outside the cache reads as NaN, which
    // poisons exactly the outputs that would have used it.
    for (int64_t i = threadIdx.x; i < n * D; i += kThreads) {
      const int jj = static_cast<int>(i / D);
      const int64_t d = i % D;
      const int64_t j = j0 + jj;
      const int64_t block = table[j / a.block_size];
      const int64_t offset = j % a.block_size;
      float k = NAN;
      float val = NAN;
      if (block >= 0 && block < a.num_blocks) {
        k = LoadF32(a.key_cache,
                    block * a.key_layout.stride0 + kv_head * a.key_layout.stride1 +
                        offset * a.key_layout.stride2 + d,
                    a.cache_type);
        val = LoadF32(a.value_cache,
                      block * a.value_layout.stride0 + kv_head * a.value_layout.stride1 +
                          offset * a.value_layout.stride2 + d,
                      a.cache_type);
      }
      k_s[jj * (D + 1) + d] = k;
      v_s[jj * D + d] = val;
    }
    __syncthreads();
    // Scores, -inf past each vector's causal limit.
    for (int i = threadIdx.x; i < vectors * kTileKeys; i += kThreads) {
      const int v = i / kTileKeys;
      const int jj = i % kTileKeys;
      const int64_t pos = first_pos + row0 + v / heads;
      float score = -INFINITY;
      if (jj < n && j0 + jj <= pos) {
        const float* q = q_s + v * D;
        const float* k = k_s + jj * (D + 1);
        float dot = 0.0f;
        for (int64_t d = 0; d < D; ++d) dot = fmaf(q[d], k[d], dot);
        score = dot;
      }
      p_s[i] = score;
    }
    __syncthreads();
    // Online softmax: one warp per vector, one key per lane.
    for (int v = warp; v < vectors; v += kWarps) {
      const float score = p_s[v * kTileKeys + lane];
      const float m_old = m_s[v];
      const float m_new = fmaxf(m_old, WarpMax(score));
      float weight = 0.0f;
      float correction = 1.0f;
      if (m_new != -INFINITY) {
        weight = expf(score - m_new);
        correction = expf(m_old - m_new);
      }
      p_s[v * kTileKeys + lane] = weight;
      const float sum = WarpSum(weight);
      if (lane == 0) {
        l_s[v] = l_s[v] * correction + sum;
        m_s[v] = m_new;
        c_s[v] = correction;
      }
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < vectors * D; i += kThreads) {
      const int v = static_cast<int>(i / D);
      const int64_t d = i % D;
      const float* w = p_s + v * kTileKeys;
      float acc = o_s[i] * c_s[v];
      for (int jj = 0; jj < n; ++jj) acc = fmaf(w[jj], v_s[jj * D + d], acc);
      o_s[i] = acc;
    }
    __syncthreads();
  }

  for (int64_t i = threadIdx.x; i < vectors * D; i += kThreads) {
    const int v = static_cast<int>(i / D);
    const int64_t d = i % D;
    const int64_t token = token_of(v);
    const int64_t head = head_of(v);
    if (p.splits == 1) {
      StoreF32(a.output, token * a.output_stride0 + head * a.output_stride1 + d, a.type,
               o_s[i] / l_s[v]);
    } else {
      const int64_t slot = (token * a.q_heads + head) * p.splits + split;
      p.partial_out[slot * D + d] = o_s[i];
      if (d == 0) {
        p.partial_ml[slot * 2] = m_s[v];
        p.partial_ml[slot * 2 + 1] = l_s[v];
      }
    }
  }
}

// Merges the splits of one (token, query head). Partials of rows no item covered keep the NaN
// the launch filled them with, and so do their outputs.
__global__ void CombineKernel(PagedAttentionArgs a, Plan p) {
  const int64_t token = blockIdx.x;
  const int64_t head = blockIdx.y;
  const int64_t base = (token * a.q_heads + head) * p.splits;
  float m_max = -INFINITY;
  bool poisoned = false;
  for (int z = 0; z < p.splits; ++z) {
    const float m = p.partial_ml[(base + z) * 2];
    poisoned |= isnan(m);
    m_max = fmaxf(m_max, m);
  }
  if (poisoned) m_max = NAN;
  float denominator = 0.0f;
  for (int z = 0; z < p.splits; ++z) {
    const float m = p.partial_ml[(base + z) * 2];
    if (m != -INFINITY) denominator += expf(m - m_max) * p.partial_ml[(base + z) * 2 + 1];
  }
  for (int64_t d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int z = 0; z < p.splits; ++z) {
      const float m = p.partial_ml[(base + z) * 2];
      if (m != -INFINITY) acc += expf(m - m_max) * p.partial_out[(base + z) * a.head_dim + d];
    }
    StoreF32(a.output, token * a.output_stride0 + head * a.output_stride1 + d, a.type,
             acc / denominator);
  }
}

size_t AlignUp(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

size_t PagedAttentionMinSharedBytes(int64_t head_dim) { return SharedBytes(1, head_dim); }

cudaError_t LaunchPagedAttention(const PagedAttentionArgs& a, const DeviceLimits& limits,
                                 cudaStream_t stream) {
  if (a.tokens == 0 || a.num_seqs == 0 || a.q_heads == 0) return cudaSuccess;
  Plan p{};
  p.group = static_cast<int>(a.q_heads / a.kv_heads);
  p.heads_per_item = p.group;
  p.rows_per_item = std::max(1, kTargetVectors / p.group);
  while (SharedBytes(p.rows_per_item * p.heads_per_item, a.head_dim) >
         static_cast<size_t>(limits.max_shared_bytes)) {
    if (p.rows_per_item > 1) {
      p.rows_per_item /= 2;
    } else if (p.heads_per_item > 1) {
      p.heads_per_item = (p.heads_per_item + 1) / 2;
    } else {
      return cudaErrorInvalidValue;  // head_dim too large for one tile in shared memory
    }
  }
  p.head_chunks = (p.group + p.heads_per_item - 1) / p.heads_per_item;
  const int64_t capacity =
      std::min<int64_t>(a.tokens, a.num_seqs + (a.tokens + p.rows_per_item - 1) / p.rows_per_item);
  const int64_t blocks = capacity * a.kv_heads * p.head_chunks;

  // Split the context only when the items alone leave the device idle and the context is long.
  const int64_t max_context = std::max<int64_t>(1, a.max_blocks_per_seq * a.block_size);
  int64_t splits = 1;
  const int64_t wanted_blocks = 4 * static_cast<int64_t>(limits.multiprocessors);
  if (blocks < wanted_blocks && max_context >= 2 * kMinSplitTokens) {
    splits = std::min<int64_t>((max_context + kMinSplitTokens - 1) / kMinSplitTokens,
                               (wanted_blocks + blocks - 1) / blocks);
    const size_t per_split =
        static_cast<size_t>(a.tokens * a.q_heads) * static_cast<size_t>(a.head_dim + 2) * 4;
    splits = std::max<int64_t>(
        1, std::min<int64_t>({splits, static_cast<int64_t>(kMaxPartialBytes / per_split), 65535}));
  }
  int64_t chunk = (max_context + splits - 1) / splits;
  chunk = (chunk + kTileKeys - 1) / kTileKeys * kTileKeys;
  splits = (max_context + chunk - 1) / chunk;
  p.splits = static_cast<int>(splits);
  p.chunk = chunk;

  const size_t items_bytes = AlignUp(static_cast<size_t>(capacity) * sizeof(int2) + sizeof(int));
  const size_t slots = static_cast<size_t>(a.tokens * a.q_heads) * static_cast<size_t>(splits);
  const size_t ml_bytes = splits > 1 ? AlignUp(slots * 2 * sizeof(float)) : 0;
  const size_t out_bytes = splits > 1 ? slots * static_cast<size_t>(a.head_dim) * sizeof(float) : 0;
  void* workspace = nullptr;
  cudaError_t error = cudaMallocAsync(&workspace, items_bytes + ml_bytes + out_bytes, stream);
  if (error != cudaSuccess) return error;
  char* bytes = static_cast<char*>(workspace);
  auto* items = reinterpret_cast<int2*>(bytes);
  int* count = reinterpret_cast<int*>(bytes + static_cast<size_t>(capacity) * sizeof(int2));
  if (splits > 1) {
    p.partial_ml = reinterpret_cast<float*>(bytes + items_bytes);
    p.partial_out = reinterpret_cast<float*>(bytes + items_bytes + ml_bytes);
    error = cudaMemsetAsync(p.partial_ml, 0xff, ml_bytes, stream);  // NaN: not covered
  }
  if (error == cudaSuccess) {
    PlanItemsKernel<<<1, 32, 0, stream>>>(a, p.rows_per_item, static_cast<int>(capacity), items,
                                          count);
    error = cudaGetLastError();
  }
  const size_t shared = SharedBytes(p.rows_per_item * p.heads_per_item, a.head_dim);
  if (error == cudaSuccess && shared > 48 * 1024) {
    error = cudaFuncSetAttribute(AttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(shared));
  }
  if (error == cudaSuccess) {
    const dim3 grid(static_cast<unsigned>(capacity),
                    static_cast<unsigned>(a.kv_heads * p.head_chunks),
                    static_cast<unsigned>(splits));
    AttentionKernel<<<grid, kThreads, shared, stream>>>(a, p, items, count);
    error = cudaGetLastError();
  }
  if (error == cudaSuccess && splits > 1) {
    const dim3 grid(static_cast<unsigned>(a.tokens), static_cast<unsigned>(a.q_heads));
    CombineKernel<<<grid, a.head_dim >= 128 ? 128 : 32, 0, stream>>>(a, p);
    error = cudaGetLastError();
  }
  const cudaError_t free_error = cudaFreeAsync(workspace, stream);
  return error != cudaSuccess ? error : free_error;
}

}  // namespace tessera::kernels::cuda
