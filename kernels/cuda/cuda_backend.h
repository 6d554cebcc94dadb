// The CUDA backend: one GPU seen as a kernels::Backend. Device memory from cudaMalloc, streams
// wrapping cudaStream_t, copies and memsets ordered on them, and every op of kernels/ops.h
// computed in f32 (kernels/cuda/README.md lists the kernels). Activations and outputs may be
// f32, f16 or bf16; weights, embedding tables, norm weights and KV caches f32, f16 or bf16.
//
// Every CUDA and cuBLAS return code is turned into an absl::Status naming the call and the
// vendor's error name. An OK op means "enqueued"; errors of running kernels surface from
// Stream::Synchronize(). The backend is thread-compatible like every Backend: each call sets
// its device on the calling thread first; a stream (and its cuBLAS handle) is driven by one
// thread at a time.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cuda/attention_kernel.h"

namespace tessera::kernels {

struct CudaBackendOptions {
  // The CUDA device ordinal (as CUDA_VISIBLE_DEVICES numbers them).
  int device = 0;
  CudaAttentionKernel attention_kernel = CudaAttentionKernel::kAuto;
};

// kUnavailable when this machine has no CUDA device (no driver, no GPU) or fewer than
// device + 1; kInvalidArgument for a negative device.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options);

}  // namespace tessera::kernels
