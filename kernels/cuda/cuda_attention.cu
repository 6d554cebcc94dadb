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
#include <utility>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/mma_attention.h"

namespace tessera::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTileKeys = 32;  // one key per lane in the softmax step
constexpr int kTargetVectors = 32;
constexpr int64_t kMinSplitTokens = 256;
constexpr size_t kMaxPartialBytes = size_t{256} << 20;

using Plan = AttentionPlan;  // mma_attention.h: the plan of both kernels

size_t SharedBytes(int vectors, int64_t head_dim) {
  const int64_t floats = 2 * vectors * head_dim + kTileKeys * (head_dim + 1) +
                         kTileKeys * head_dim + vectors * kTileKeys + 3 * vectors;
  return static_cast<size_t>(floats) * sizeof(float);
}

// One thread: the items of every well-formed sequence (PlanItems).
__global__ void PlanItemsKernel(PagedAttentionArgs a, int rows_per_item, int capacity,
                                int32_t* items, int* count) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  *count = PlanItems(a.query_start, a.seq_lens, a.num_seqs, a.tokens,
                     a.max_blocks_per_seq * a.block_size, rows_per_item, capacity, items);
}

__global__ void __launch_bounds__(kThreads)
    AttentionKernel(PagedAttentionArgs a, Plan p, const int32_t* items, const int* count) {
  extern __shared__ float smem[];
  if (static_cast<int>(blockIdx.x) >= *count) return;
  const int64_t s = items[2 * blockIdx.x];
  const int64_t row0 = items[2 * blockIdx.x + 1];
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

// The hardware behind mma::AttentionTile (sm_80 and later).
struct DeviceMmaContext {
  uint16_t* smem;
  __device__ int thread() const { return static_cast<int>(threadIdx.x); }
  __device__ void sync() const { __syncthreads(); }
  __device__ uint16_t* shared() const { return smem; }
  __device__ float ShuffleXor(float value, int mask) const {
    return __shfl_xor_sync(0xffffffffu, value, mask);
  }
  __device__ float Exp2(float x) const { return exp2f(x); }
  // 16 bytes global -> shared, asynchronously (cp.async, sm_80+), completed by WaitCopies.
  __device__ void CopyAsync16(uint16_t* shared, const uint16_t* global) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const auto address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(global)
                 : "memory");
#else
    __trap();
#endif
  }
  __device__ void CommitCopies() const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
  }
  template <int kPending>
  __device__ void WaitCopies() const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
  }
  // (lo, hi) rounded to nearest even, lo in the low 16 bits.
  template <bool kBf16>
  __device__ uint32_t Pack(float lo, float hi) const {
    if constexpr (kBf16) {
      const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
      return *reinterpret_cast<const uint32_t*>(&pair);
    } else {
      const __half2 pair = __floats2half2_rn(lo, hi);
      return *reinterpret_cast<const uint32_t*>(&pair);
    }
  }
  // c += a b: one mma.sync.m16n8k16 with f32 accumulators.
  template <bool kBf16>
  __device__ void Mma(const uint32_t (&a)[4], const uint32_t (&b)[2], float (&c)[4]) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (kBf16) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
          "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
          "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#else
    __trap();  // the launcher picks this kernel only on sm_80 and later
#endif
  }
};

template <int D, bool kBf16>
__global__ void __launch_bounds__(mma::kThreads)
    MmaAttentionKernel(mma::MmaArgs a, const int32_t* items, const int* count) {
  extern __shared__ __align__(16) unsigned char mma_smem[];
  if (static_cast<int>(blockIdx.x) >= *count) return;
  DeviceMmaContext ctx{reinterpret_cast<uint16_t*>(mma_smem)};
  mma::AttentionTile<D, kBf16>(ctx, a, items[2 * blockIdx.x], items[2 * blockIdx.x + 1], blockIdx.y,
                               blockIdx.z);
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

namespace {

bool Aligned(const void* pointer, size_t bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}

}  // namespace

// The tensor-core tile takes f16/bf16 queries over a cache of the same type, head dims it is
// built for, 4-byte aligned query and output pairs and 16-byte aligned cache vectors. Unless
// the backend asks for it (CudaAttentionKernel::kTensorCores), batches of decode rows only (one
// query row per sequence) stay with the SIMT kernel: their tiles would be mostly padding, and
// decode is bound by reading the cache, not by arithmetic.
bool PagedAttentionTakesTensorCores(const PagedAttentionArgs& a, const DeviceLimits& limits) {
  if (limits.attention == CudaAttentionKernel::kSimt) return false;
  if (limits.compute_major < 8 || a.type != a.cache_type || a.type == ElemType::kF32) return false;
  if (!mma::SupportsHeadDim(a.head_dim)) return false;
  if (a.tokens <= a.num_seqs && limits.attention != CudaAttentionKernel::kTensorCores) {
    return false;
  }
  if (mma::SharedBytes(a.head_dim) > static_cast<size_t>(limits.max_shared_bytes)) return false;
  const bool pairs = Aligned(a.query, 4) && Aligned(a.output, 4) && a.query_stride0 % 2 == 0 &&
                     a.query_stride1 % 2 == 0 && a.output_stride0 % 2 == 0 &&
                     a.output_stride1 % 2 == 0;
  const auto vectors = [](const void* cache, const CacheLayout& layout) {
    return Aligned(cache, 16) && layout.stride0 % 8 == 0 && layout.stride1 % 8 == 0 &&
           layout.stride2 % 8 == 0;
  };
  return pairs && vectors(a.key_cache, a.key_layout) && vectors(a.value_cache, a.value_layout);
}

namespace {

template <int D>
cudaError_t LaunchMmaTile(const PagedAttentionArgs& a, const mma::MmaArgs& m, dim3 grid,
                          const int32_t* items, const int* count, cudaStream_t stream) {
  const size_t shared = mma::SharedBytes(D);  // opted into by PrepareAttentionKernels
  if (a.type == ElemType::kBF16) {
    MmaAttentionKernel<D, true><<<grid, mma::kThreads, shared, stream>>>(m, items, count);
  } else {
    MmaAttentionKernel<D, false><<<grid, mma::kThreads, shared, stream>>>(m, items, count);
  }
  return cudaGetLastError();
}

// The tile's opt-in to more than 48 KiB of dynamic shared memory, for one head_dim's kernels.
template <int D>
cudaError_t OptInSharedMemory() {
  const int shared = static_cast<int>(mma::SharedBytes(D));
  if (shared <= 48 * 1024) return cudaSuccess;
  const cudaError_t error = cudaFuncSetAttribute(
      MmaAttentionKernel<D, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, shared);
  if (error != cudaSuccess) return error;
  return cudaFuncSetAttribute(MmaAttentionKernel<D, false>,
                              cudaFuncAttributeMaxDynamicSharedMemorySize, shared);
}

}  // namespace

cudaError_t PrepareAttentionKernels(const DeviceLimits& limits) {
  // The SIMT kernel's tile grows with head_dim and the GQA group (the launcher refuses what the
  // device cannot hold): it may use up to the device's opt-in limit.
  if (limits.max_shared_bytes > 48 * 1024) {
    const cudaError_t error = cudaFuncSetAttribute(
        AttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limits.max_shared_bytes);
    if (error != cudaSuccess) return error;
  }
  if (limits.compute_major < 8) return cudaSuccess;  // the tile never runs there
  for (const auto& [head_dim, opt_in] :
       {std::pair{32, &OptInSharedMemory<32>}, std::pair{64, &OptInSharedMemory<64>},
        std::pair{128, &OptInSharedMemory<128>}}) {
    if (mma::SharedBytes(head_dim) > static_cast<size_t>(limits.max_shared_bytes)) continue;
    if (const cudaError_t error = opt_in(); error != cudaSuccess) return error;
  }
  return cudaSuccess;
}

cudaError_t LaunchPagedAttention(const PagedAttentionArgs& a, const DeviceLimits& limits,
                                 cudaStream_t stream) {
  if (a.tokens == 0 || a.num_seqs == 0 || a.q_heads == 0) return cudaSuccess;
  const bool use_mma = PagedAttentionTakesTensorCores(a, limits);
  const int64_t tile_keys = use_mma ? mma::kTileKeys : kTileKeys;
  const int group = static_cast<int>(a.q_heads / a.kv_heads);
  Plan p = mma::TilePlan(group);
  if (!use_mma) {
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
  }
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
  SplitContext(max_context, splits, tile_keys, p);
  splits = p.splits;

  const size_t items_bytes =
      AlignUp(static_cast<size_t>(capacity) * 2 * sizeof(int32_t) + sizeof(int));
  const size_t slots = static_cast<size_t>(a.tokens * a.q_heads) * static_cast<size_t>(splits);
  const size_t ml_bytes = splits > 1 ? AlignUp(slots * 2 * sizeof(float)) : 0;
  const size_t out_bytes = splits > 1 ? slots * static_cast<size_t>(a.head_dim) * sizeof(float) : 0;
  void* workspace = nullptr;
  cudaError_t error = cudaMallocAsync(&workspace, items_bytes + ml_bytes + out_bytes, stream);
  if (error != cudaSuccess) return error;
  char* bytes = static_cast<char*>(workspace);
  auto* items = reinterpret_cast<int32_t*>(bytes);
  int* count = reinterpret_cast<int*>(bytes + static_cast<size_t>(capacity) * 2 * sizeof(int32_t));
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
  const dim3 grid(static_cast<unsigned>(capacity),
                  static_cast<unsigned>(a.kv_heads * p.head_chunks), static_cast<unsigned>(splits));
  if (error == cudaSuccess && use_mma) {
    mma::MmaArgs m{};
    m.query = static_cast<const uint16_t*>(a.query);
    m.query_stride0 = a.query_stride0;
    m.query_stride1 = a.query_stride1;
    m.output = static_cast<uint16_t*>(a.output);
    m.output_stride0 = a.output_stride0;
    m.output_stride1 = a.output_stride1;
    m.key_cache = static_cast<const uint16_t*>(a.key_cache);
    m.key_stride0 = a.key_layout.stride0;
    m.key_stride1 = a.key_layout.stride1;
    m.key_stride2 = a.key_layout.stride2;
    m.value_cache = static_cast<const uint16_t*>(a.value_cache);
    m.value_stride0 = a.value_layout.stride0;
    m.value_stride1 = a.value_layout.stride1;
    m.value_stride2 = a.value_layout.stride2;
    m.block_tables = a.block_tables;
    m.block_tables_stride = a.block_tables_stride;
    m.query_start = a.query_start;
    m.seq_lens = a.seq_lens;
    m.q_heads = a.q_heads;
    m.num_blocks = a.num_blocks;
    m.block_size = a.block_size;
    m.scale = a.scale;
    m.plan = p;
    switch (a.head_dim) {
      case 32:
        error = LaunchMmaTile<32>(a, m, grid, items, count, stream);
        break;
      case 64:
        error = LaunchMmaTile<64>(a, m, grid, items, count, stream);
        break;
      default:
        error = LaunchMmaTile<128>(a, m, grid, items, count, stream);
        break;
    }
  } else if (error == cudaSuccess) {
    // Opted into up to the device's limit by PrepareAttentionKernels.
    const size_t shared = SharedBytes(p.rows_per_item * p.heads_per_item, a.head_dim);
    AttentionKernel<<<grid, kThreads, shared, stream>>>(a, p, items, count);
    error = cudaGetLastError();
  }
  if (error == cudaSuccess && splits > 1) {
    const dim3 combine(static_cast<unsigned>(a.tokens), static_cast<unsigned>(a.q_heads));
    CombineKernel<<<combine, a.head_dim >= 128 ? 128 : 32, 0, stream>>>(a, p);
    error = cudaGetLastError();
  }
  const cudaError_t free_error = cudaFreeAsync(workspace, stream);
  return error != cudaSuccess ? error : free_error;
}

}  // namespace tessera::kernels::cuda
