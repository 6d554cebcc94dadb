// Row-wise ops on CUDA: Embedding, RmsNorm, Rope, Swiglu and KvWrite. Memory-bound kernels with
// run-time element types (the type switch is uniform across a launch); arithmetic in f32 in the
// order the CPU backend uses (kernels/cpu/cpu_elementwise.cc), so results agree within rounding.
#include <cmath>

#include "kernels/cuda/cuda_common.cuh"

namespace tessera::kernels::cuda {
namespace {

constexpr int kRowThreads = 256;

__device__ __forceinline__ int64_t RowOffset(const RowLayout& layout, int64_t row) {
  return (row / layout.inner) * layout.stride0 + (row % layout.inner) * layout.stride1;
}

// One block per token: the row of the table, or zeros for ids of other shards.
__global__ void EmbeddingKernel(EmbeddingArgs a) {
  const int64_t t = blockIdx.x;
  const int64_t row = static_cast<int64_t>(a.ids[t]) - a.row_offset;
  const bool inside = row >= 0 && row < a.rows;
  for (int64_t c = threadIdx.x; c < a.hidden; c += blockDim.x) {
    const float value = inside ? LoadF32(a.table, row * a.table_stride + c, a.table_type) : 0.0f;
    StoreF32(a.output, t * a.output_stride + c, a.output_type, value);
  }
}

// One block per row. The fused form stores residual = input + residual (rounded to the
// activation type) and normalises the stored value, as a model running in that type would.
__global__ void RmsNormKernel(RmsNormArgs a) {
  __shared__ double scratch[32];
  const int64_t r = blockIdx.x;
  const int64_t in_row = RowOffset(a.input_layout, r);
  const int64_t out_row = RowOffset(a.output_layout, r);
  const bool fused = a.residual != nullptr;
  const int64_t res_row = fused ? RowOffset(a.residual_layout, r) : 0;
  double sum = 0.0;
  for (int64_t c = threadIdx.x; c < a.hidden; c += blockDim.x) {
    float x = LoadF32(a.input, in_row + c, a.type);
    if (fused) {
      x = RoundTo(a.type, x + LoadF32(a.residual, res_row + c, a.type));
      StoreF32(a.residual, res_row + c, a.type, x);
    }
    sum += static_cast<double>(x * x);
  }
  sum = BlockSum(sum, scratch);
  const float variance = static_cast<float>(sum) / static_cast<float>(a.hidden);
  const float inv_rms = 1.0f / sqrtf(variance + a.epsilon);
  // Each thread reads back only the elements it wrote above (same c), so no barrier is needed
  // between the residual store and this read; output may alias input element by element.
  for (int64_t c = threadIdx.x; c < a.hidden; c += blockDim.x) {
    const float x =
        fused ? LoadF32(a.residual, res_row + c, a.type) : LoadF32(a.input, in_row + c, a.type);
    const float w = LoadF32(a.weight, c, a.weight_type);
    StoreF32(a.output, out_row + c, a.type, w * (x * inv_rms));
  }
}

// Block (token, head) over the rotary pairs; heads [0, q_heads) are the query's, the rest the
// key's. Angles are f32 products position * inv_freq, as Hugging Face computes them.
__global__ void RopeKernel(RopeArgs a) {
  const int64_t t = blockIdx.x;
  const int64_t h = blockIdx.y;
  const bool is_query = h < a.q_heads;
  void* base = is_query ? a.query : a.key;
  const int64_t offset = is_query ? t * a.query_stride0 + h * a.query_stride1
                                  : t * a.key_stride0 + (h - a.q_heads) * a.key_stride1;
  const float position = static_cast<float>(a.positions[t]);
  for (int64_t j = threadIdx.x; j < a.half; j += blockDim.x) {
    const float angle = position * a.inv_freq[j];
    const float cos_a = cosf(angle);
    const float sin_a = sinf(angle);
    const float x1 = LoadF32(base, offset + j, a.type);
    const float x2 = LoadF32(base, offset + j + a.half, a.type);
    StoreF32(base, offset + j, a.type, x1 * cos_a - x2 * sin_a);
    StoreF32(base, offset + j + a.half, a.type, x2 * cos_a + x1 * sin_a);
  }
}

// Grid-stride over [tokens, inter]. Writing over the gate half in place is safe: element j of
// the output is computed from gate j (read first) and up j (never written).
__global__ void SwigluKernel(SwigluArgs a) {
  const int64_t total = a.tokens * a.inter;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / a.inter;
    const int64_t j = i % a.inter;
    const float g = LoadF32(a.gate_up, t * a.gate_up_stride + j, a.type);
    const float u = LoadF32(a.gate_up, t * a.gate_up_stride + a.inter + j, a.type);
    StoreF32(a.output, t * a.output_stride + j, a.type, g / (1.0f + expf(-g)) * u);
  }
}

// Grid-stride over [tokens, kv_heads, head_dim]; negative slots are skipped, and so are slots
// past the cache (the CPU backend rejects those; a kernel cannot report them synchronously).
__global__ void KvWriteKernel(KvWriteArgs a) {
  const int64_t total = a.tokens * a.kv_heads * a.head_dim;
  const int64_t slots = a.num_blocks * a.block_size;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / (a.kv_heads * a.head_dim);
    const int64_t h = (i / a.head_dim) % a.kv_heads;
    const int64_t c = i % a.head_dim;
    const int64_t slot = a.slot_mapping[t];
    if (slot < 0 || slot >= slots) continue;
    const int64_t block = slot / a.block_size;
    const int64_t offset = slot % a.block_size;
    const float k = LoadF32(a.key, t * a.key_stride0 + h * a.key_stride1 + c, a.type);
    const float v = LoadF32(a.value, t * a.value_stride0 + h * a.value_stride1 + c, a.type);
    StoreF32(
        a.key_cache,
        block * a.key_layout.stride0 + h * a.key_layout.stride1 + offset * a.key_layout.stride2 + c,
        a.cache_type, k);
    StoreF32(a.value_cache,
             block * a.value_layout.stride0 + h * a.value_layout.stride1 +
                 offset * a.value_layout.stride2 + c,
             a.cache_type, v);
  }
}

// Blocks for a grid-stride loop over `total` elements: enough to fill the device several times,
// no more than the work needs.
unsigned GridStrideBlocks(int64_t total) {
  constexpr int64_t kMaxBlocks = 65535;
  const int64_t blocks = (total + kRowThreads - 1) / kRowThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? (blocks > 0 ? blocks : 1) : kMaxBlocks);
}

}  // namespace

cudaError_t LaunchEmbedding(const EmbeddingArgs& args, cudaStream_t stream) {
  if (args.tokens == 0 || args.hidden == 0) return cudaSuccess;
  EmbeddingKernel<<<static_cast<unsigned>(args.tokens), kRowThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t LaunchRmsNorm(const RmsNormArgs& args, cudaStream_t stream) {
  if (args.rows == 0) return cudaSuccess;
  RmsNormKernel<<<static_cast<unsigned>(args.rows), kRowThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t LaunchRope(const RopeArgs& args, cudaStream_t stream) {
  const int64_t heads = args.q_heads + args.kv_heads;
  if (args.tokens == 0 || heads == 0 || args.half == 0) return cudaSuccess;
  const int threads = args.half >= 64 ? 128 : (args.half >= 32 ? 64 : 32);
  const dim3 grid(static_cast<unsigned>(args.tokens), static_cast<unsigned>(heads));
  RopeKernel<<<grid, threads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t LaunchSwiglu(const SwigluArgs& args, cudaStream_t stream) {
  const int64_t total = args.tokens * args.inter;
  if (total == 0) return cudaSuccess;
  SwigluKernel<<<GridStrideBlocks(total), kRowThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t LaunchKvWrite(const KvWriteArgs& args, cudaStream_t stream) {
  const int64_t total = args.tokens * args.kv_heads * args.head_dim;
  if (total == 0) return cudaSuccess;
  KvWriteKernel<<<GridStrideBlocks(total), kRowThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace tessera::kernels::cuda
