// Device helpers shared by the backend's .cu files: element loads and stores in f32 for the
// three floating-point types, warp and block reductions, and error-free launch checks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace tessera::kernels::cuda {

// Compile-time element types: T is float, __half or __nv_bfloat16.
template <typename T>
__device__ __forceinline__ float ToF32(T value);
template <>
__device__ __forceinline__ float ToF32<float>(float value) {
  return value;
}
template <>
__device__ __forceinline__ float ToF32<__half>(__half value) {
  return __half2float(value);
}
template <>
__device__ __forceinline__ float ToF32<__nv_bfloat16>(__nv_bfloat16 value) {
  return __bfloat162float(value);
}

template <typename T>
__device__ __forceinline__ T FromF32(float value);
template <>
__device__ __forceinline__ float FromF32<float>(float value) {
  return value;
}
template <>
__device__ __forceinline__ __half FromF32<__half>(float value) {
  return __float2half_rn(value);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromF32<__nv_bfloat16>(float value) {
  return __float2bfloat16_rn(value);
}

// Run-time element types (the branch is uniform across a launch).
__device__ __forceinline__ float LoadF32(const void* base, int64_t index, ElemType type) {
  switch (type) {
    case ElemType::kF16:
      return __half2float(static_cast<const __half*>(base)[index]);
    case ElemType::kBF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
    default:
      return static_cast<const float*>(base)[index];
  }
}

__device__ __forceinline__ void StoreF32(void* base, int64_t index, ElemType type, float value) {
  switch (type) {
    case ElemType::kF16:
      static_cast<__half*>(base)[index] = __float2half_rn(value);
      break;
    case ElemType::kBF16:
      static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16_rn(value);
      break;
    default:
      static_cast<float*>(base)[index] = value;
      break;
  }
}

// `value` rounded as storing it in `type` would.
__device__ __forceinline__ float RoundTo(ElemType type, float value) {
  switch (type) {
    case ElemType::kF16:
      return __half2float(__float2half_rn(value));
    case ElemType::kBF16:
      return __bfloat162float(__float2bfloat16_rn(value));
    default:
      return value;
  }
}

template <typename T>
__device__ __forceinline__ T WarpSum(T value) {
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ __forceinline__ float WarpMax(float value) {
  for (int offset = 16; offset > 0; offset /= 2) {
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024). Every thread gets the result.
// `scratch` holds 32 values; the call synchronises the block twice.
template <typename T>
__device__ T BlockSum(T value, T* scratch) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  value = WarpSum(value);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  T total = lane < warps ? scratch[lane] : T(0);
  return WarpSum(total);
}

__device__ __forceinline__ float BlockMax(float value, float* scratch) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  value = WarpMax(value);
  __syncthreads();
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  const float total = lane < warps ? scratch[lane] : -INFINITY;
  return WarpMax(total);
}

inline unsigned BlocksFor(int64_t work, int threads) {
  return static_cast<unsigned>((work + threads - 1) / threads);
}

}  // namespace tessera::kernels::cuda
