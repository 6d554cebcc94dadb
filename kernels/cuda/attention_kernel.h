// Which PagedAttention kernel the CUDA backend runs (kernels/cuda/README.md). A header of its own,
// with no includes, so that both the public options (cuda_backend.h) and the launchers' plain
// structs (cuda_kernels.h, also compiled by nvcc) name the one enum.
#pragma once

namespace tessera::kernels {

// kAuto: the tensor-core tile for batches with a multi-row sequence where it applies (f16/bf16
// queries over a cache of the same type, head_dim 32/64/128, sm_80+), the SIMT kernel otherwise.
// kTensorCores also takes the tile for decode-only batches where it applies; kSimt never takes
// it. For measuring one against the other (`--attention-kernel`).
enum class CudaAttentionKernel { kAuto, kSimt, kTensorCores };

}  // namespace tessera::kernels
