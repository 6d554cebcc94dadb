// Internals of the CPU backend shared by its op files: the backend class and one function per
// op (installed in its OpTable). Params arrive validated by kernels/ops.cc; the functions check
// only what lives in memory (ids, slots, block tables) and return kInvalidArgument for it.
#pragma once

#include <algorithm>
#include <string>

#include "absl/status/status.h"
#include "common/stream.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_simd.h"
#include "kernels/op_params.h"

namespace tessera::kernels::cpu {

class CpuBackend final : public Backend {
 public:
  CpuBackend(int num_threads, const SimdKernels& simd, bool emulate_graphs);

  absl::string_view name() const override { return "cpu"; }
  Device device() const override { return Device::Cpu(); }
  std::string Describe() const override;
  absl::StatusOr<DeviceBuffer> Allocate(size_t bytes) override;
  absl::StatusOr<DeviceBuffer> AllocateHost(size_t bytes) override;  // Allocate, zeroed
  absl::Status CopyToDevice(const void* host, void* device, size_t bytes, Stream& stream) override;
  absl::Status CopyToHost(const void* device, void* host, size_t bytes, Stream& stream) override;
  absl::Status CopyOnDevice(const void* src, void* dst, size_t bytes, Stream& stream) override;
  absl::Status Memset(void* device, int value, size_t bytes, Stream& stream) override;
  absl::StatusOr<std::unique_ptr<Stream>> CreateStream() override;
  bool supports_graphs() const override { return emulate_graphs_; }
  absl::StatusOr<std::unique_ptr<Graph>> CaptureGraph(Stream& stream,
                                                      const GraphBody& body) override;

  int num_threads() const { return num_threads_; }
  const SimdKernels& simd() const { return simd_; }

  // The CpuBackend behind an op call (the CPU OpTable is installed only in CpuBackend).
  static const CpuBackend& From(const Backend& backend) {
    return static_cast<const CpuBackend&>(backend);
  }

 private:
  const int num_threads_;
  const SimdKernels& simd_;
  const bool emulate_graphs_;
};

// Threads for a loop of `work` units of roughly `unit_cost` element operations each: one thread
// for small work, where starting a parallel region costs more than it saves.
inline int ThreadsFor(const CpuBackend& backend, int64_t work, int64_t unit_cost) {
  constexpr int64_t kMinCostPerThread = 32 * 1024;
  const int64_t useful = std::max<int64_t>(1, work * unit_cost / kMinCostPerThread);
  return static_cast<int>(
      std::min<int64_t>({backend.num_threads(), useful, std::max<int64_t>(work, 1)}));
}

// Element address helper: base + offset elements of `dtype`.
inline const char* ElementPtr(const void* base, int64_t offset, size_t element_size) {
  return static_cast<const char*>(base) + offset * static_cast<int64_t>(element_size);
}
inline char* ElementPtr(void* base, int64_t offset, size_t element_size) {
  return static_cast<char*>(base) + offset * static_cast<int64_t>(element_size);
}

absl::Status CpuEmbedding(Backend& backend, const EmbeddingParams& params, Stream& stream);
absl::Status CpuRmsNorm(Backend& backend, const RmsNormParams& params, Stream& stream);
absl::Status CpuMatmul(Backend& backend, const MatmulParams& params, Stream& stream);
absl::Status CpuRope(Backend& backend, const RopeParams& params, Stream& stream);
absl::Status CpuSwiglu(Backend& backend, const SwigluParams& params, Stream& stream);
absl::Status CpuKvWrite(Backend& backend, const KvWriteParams& params, Stream& stream);
absl::Status CpuPagedAttention(Backend& backend, const PagedAttentionParams& params,
                               Stream& stream);
absl::Status CpuSample(Backend& backend, const SampleParams& params, Stream& stream);
absl::Status CpuApplyPenalties(Backend& backend, const ApplyPenaltiesParams& params,
                               Stream& stream);

}  // namespace tessera::kernels::cpu
