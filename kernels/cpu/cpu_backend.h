// The CPU backend: host memory, synchronous streams (CpuStream), and ops computed in f32 with
// OpenMP across rows and OpenBLAS for large matrix products. Weights, embedding tables, norm
// weights and KV caches may be f32, f16 or bf16 (converted on the fly); activations are f32.
//
// Inner loops come in two builds, portable C++ and AVX2+FMA+F16C, picked once from the CPU's
// features (CpuBackendOptions::portable_kernels forces the first, for tests).
//
// Construction calls openblas_set_num_threads(1): OpenBLAS runs inside the backend's own OpenMP
// regions, one call per thread, so its thread pool would only compete with them. Every op may
// be called from any thread; ops on one stream are driven by one thread (kernels/backend.h).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace tessera::kernels {

struct CpuBackendOptions {
  // OpenMP threads per op; 0 = the OpenMP default (OMP_NUM_THREADS, else one per core).
  int num_threads = 0;
  // Use the portable inner loops even when the CPU has AVX2 (for tests and comparisons).
  bool portable_kernels = false;
  // Graphs for tests: CaptureGraph keeps the body and each Launch calls it again on the stream it
  // is given. That is a CUDA graph's contract (the same work over memory whose contents changed),
  // so code that records graphs (worker/llama_model.h's decode graphs) runs in CI without a GPU.
  // It saves no time, and a body's errors surface from Launch (CUDA reports them when recording).
  bool emulate_graphs = false;
};

// kInvalidArgument for a negative num_threads.
absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const CpuBackendOptions& options);

}  // namespace tessera::kernels
