// The Matmul kernels cuBLAS does not provide: products whose input and weight element types
// differ (f32 activations with bf16 weights, ...), and the bias epilogue of cuBLAS products.
// f32 accumulation throughout, so results match the CPU's within f32 rounding.
//
// - Skinny (m <= kSkinnyRows, decode): one warp per output column reads that weight row once,
//   converting in registers, and accumulates every input row against it.
// - Tiled (larger m): 64 x 64 output tiles, 16-deep k slices staged in shared memory as f32,
//   4 x 4 outputs per thread.
#include "kernels/cuda/cuda_common.cuh"

namespace tessera::kernels::cuda {
namespace {

constexpr int kSkinnyRows = 8;
constexpr int kSkinnyWarps = 8;
constexpr int kTile = 64;
constexpr int kTileK = 16;
constexpr int kTileThreads = 256;

template <typename TIn, typename TW>
__global__ void __launch_bounds__(kSkinnyWarps * 32) SkinnyKernel(MatmulArgs a) {
  const int lane = threadIdx.x % 32;
  const int64_t col = blockIdx.x * static_cast<int64_t>(kSkinnyWarps) + threadIdx.x / 32;
  if (col >= a.n) return;
  const TW* w = static_cast<const TW*>(a.weight) + col * a.k;
  const TIn* x = static_cast<const TIn*>(a.input);
  float acc[kSkinnyRows];
#pragma unroll
  for (int r = 0; r < kSkinnyRows; ++r) acc[r] = 0.0f;
  for (int64_t t = lane; t < a.k; t += 32) {
    const float wt = ToF32(w[t]);
#pragma unroll
    for (int r = 0; r < kSkinnyRows; ++r) {
      if (r < a.m) acc[r] = fmaf(ToF32(x[r * a.input_stride + t]), wt, acc[r]);
    }
  }
  const float bias = a.bias != nullptr ? LoadF32(a.bias, col, a.bias_type) : 0.0f;
#pragma unroll
  for (int r = 0; r < kSkinnyRows; ++r) {
    const float sum = WarpSum(acc[r]);
    if (lane == 0 && r < a.m) {
      StoreF32(a.output, r * a.output_stride + col, a.output_type, sum + bias);
    }
  }
}

template <typename TIn, typename TW>
__global__ void __launch_bounds__(kTileThreads) TiledKernel(MatmulArgs a) {
  __shared__ float x_s[kTileK][kTile + 1];  // [k][row]
  __shared__ float w_s[kTileK][kTile + 1];  // [k][col]
  const int64_t row0 = blockIdx.y * static_cast<int64_t>(kTile);
  const int64_t col0 = blockIdx.x * static_cast<int64_t>(kTile);
  const int tr = threadIdx.x / 16;  // 16 x 16 threads, 4 x 4 outputs each
  const int tc = threadIdx.x % 16;
  const TIn* x = static_cast<const TIn*>(a.input);
  const TW* w = static_cast<const TW*>(a.weight);
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < a.k; k0 += kTileK) {
    // 64 rows x 16 k of each operand: 4 elements per thread, consecutive threads along k.
    for (int i = threadIdx.x; i < kTile * kTileK; i += kTileThreads) {
      const int rr = i / kTileK;
      const int kk = i % kTileK;
      const int64_t kt = k0 + kk;
      const int64_t row = row0 + rr;
      const int64_t col = col0 + rr;
      x_s[kk][rr] = (row < a.m && kt < a.k) ? ToF32(x[row * a.input_stride + kt]) : 0.0f;
      w_s[kk][rr] = (col < a.n && kt < a.k) ? ToF32(w[col * a.k + kt]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float xv[4];
      float wv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        xv[i] = x_s[kk][tr + 16 * i];
        wv[i] = w_s[kk][tc + 16 * i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(xv[i], wv[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + tr + 16 * i;
    if (row >= a.m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = col0 + tc + 16 * j;
      if (col >= a.n) continue;
      const float bias = a.bias != nullptr ? LoadF32(a.bias, col, a.bias_type) : 0.0f;
      StoreF32(a.output, row * a.output_stride + col, a.output_type, acc[i][j] + bias);
    }
  }
}

__global__ void BiasEpilogueKernel(BiasEpilogueArgs a) {
  const int64_t total = a.m * a.n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / a.n;
    const int64_t col = i % a.n;
    float value = a.accumulator[row * a.accumulator_stride + col];
    if (a.bias != nullptr) value += LoadF32(a.bias, col, a.bias_type);
    StoreF32(a.output, row * a.output_stride + col, a.output_type, value);
  }
}

template <typename TIn, typename TW>
cudaError_t Launch(const MatmulArgs& a, cudaStream_t stream) {
  if (a.m <= kSkinnyRows) {
    const auto blocks = static_cast<unsigned>((a.n + kSkinnyWarps - 1) / kSkinnyWarps);
    SkinnyKernel<TIn, TW><<<blocks, kSkinnyWarps * 32, 0, stream>>>(a);
  } else {
    const dim3 grid(static_cast<unsigned>((a.n + kTile - 1) / kTile),
                    static_cast<unsigned>((a.m + kTile - 1) / kTile));
    TiledKernel<TIn, TW><<<grid, kTileThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <typename TIn>
cudaError_t LaunchForWeight(const MatmulArgs& a, cudaStream_t stream) {
  switch (a.weight_type) {
    case ElemType::kF16:
      return Launch<TIn, __half>(a, stream);
    case ElemType::kBF16:
      return Launch<TIn, __nv_bfloat16>(a, stream);
    default:
      return Launch<TIn, float>(a, stream);
  }
}

}  // namespace

cudaError_t LaunchMatmul(const MatmulArgs& args, cudaStream_t stream) {
  if (args.m == 0 || args.n == 0) return cudaSuccess;
  switch (args.input_type) {
    case ElemType::kF16:
      return LaunchForWeight<__half>(args, stream);
    case ElemType::kBF16:
      return LaunchForWeight<__nv_bfloat16>(args, stream);
    default:
      return LaunchForWeight<float>(args, stream);
  }
}

cudaError_t LaunchBiasEpilogue(const BiasEpilogueArgs& args, cudaStream_t stream) {
  const int64_t total = args.m * args.n;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = (total + 255) / 256;
  BiasEpilogueKernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), 256, 0, stream>>>(
      args);
  return cudaGetLastError();
}

}  // namespace tessera::kernels::cuda
