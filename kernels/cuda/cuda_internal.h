// Internals of the CUDA backend shared by its host files: the backend and stream classes, the
// op functions installed in its OpTable, and the conversion of CUDA/cuBLAS codes to Status.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/stream.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/op_params.h"

namespace tessera::kernels::cuda {

// OK for cudaSuccess; else "<call>: <error name>: <description>" with a canonical code
// (kResourceExhausted for out-of-memory, kUnavailable for a missing device or driver,
// kInternal otherwise).
absl::Status CudaStatus(absl::string_view call, cudaError_t error);
absl::Status CublasStatus(absl::string_view call, cublasStatus_t status);

// A cudaStream_t (non-blocking) on one device, with a cuBLAS handle bound to it on first use.
// Destruction does not wait: CUDA releases the stream once its work is done.
class CudaStream final : public Stream {
 public:
  static absl::StatusOr<std::unique_ptr<CudaStream>> Create(int device);
  ~CudaStream() override;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;

  Device device() const override { return Device::Cuda(device_); }
  absl::Status Synchronize() override;
  void* native_handle() const override { return stream_; }
  cudaStream_t stream() const { return stream_; }
  // The stream's cuBLAS handle, created on first use (the device must be current).
  absl::StatusOr<cublasHandle_t> Cublas();

 private:
  CudaStream(int device, cudaStream_t stream) : device_(device), stream_(stream) {}

  const int device_;
  cudaStream_t stream_;
  cublasHandle_t cublas_ = nullptr;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, const DeviceLimits& limits, std::string description);

  absl::string_view name() const override { return "cuda"; }
  Device device() const override { return Device::Cuda(device_); }
  std::string Describe() const override { return description_; }
  absl::StatusOr<DeviceBuffer> Allocate(size_t bytes) override;
  // Page-locked (cudaHostAlloc, portable to every device), zeroed.
  absl::StatusOr<DeviceBuffer> AllocateHost(size_t bytes) override;
  absl::Status CopyToDevice(const void* host, void* device, size_t bytes, Stream& stream) override;
  absl::Status CopyToHost(const void* device, void* host, size_t bytes, Stream& stream) override;
  absl::Status CopyOnDevice(const void* src, void* dst, size_t bytes, Stream& stream) override;
  absl::Status Memset(void* device, int value, size_t bytes, Stream& stream) override;
  absl::StatusOr<std::unique_ptr<Stream>> CreateStream() override;
  bool supports_graphs() const override { return true; }
  // Stream capture (thread-local mode) into a cudaGraph_t, instantiated once.
  absl::StatusOr<std::unique_ptr<Graph>> CaptureGraph(Stream& stream,
                                                      const GraphBody& body) override;

  int device_index() const { return device_; }
  const DeviceLimits& limits() const { return limits_; }
  // Makes this backend's device current on the calling thread.
  absl::Status Activate() const;

  // The CudaBackend behind an op call (the CUDA OpTable is installed only in CudaBackend).
  static const CudaBackend& From(const Backend& backend) {
    return static_cast<const CudaBackend&>(backend);
  }

 private:
  const int device_;
  const DeviceLimits limits_;
  const std::string description_;
};

absl::Status CudaEmbedding(Backend& backend, const EmbeddingParams& params, Stream& stream);
absl::Status CudaRmsNorm(Backend& backend, const RmsNormParams& params, Stream& stream);
absl::Status CudaMatmul(Backend& backend, const MatmulParams& params, Stream& stream);
absl::Status CudaRope(Backend& backend, const RopeParams& params, Stream& stream);
absl::Status CudaSwiglu(Backend& backend, const SwigluParams& params, Stream& stream);
absl::Status CudaKvWrite(Backend& backend, const KvWriteParams& params, Stream& stream);
absl::Status CudaPagedAttention(Backend& backend, const PagedAttentionParams& params,
                                Stream& stream);
absl::Status CudaSample(Backend& backend, const SampleParams& params, Stream& stream);
absl::Status CudaApplyPenalties(Backend& backend, const ApplyPenaltiesParams& params,
                                Stream& stream);

}  // namespace tessera::kernels::cuda
