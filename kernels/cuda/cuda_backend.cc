// The CUDA backend's memory, copies and streams, and its factory.
#include "kernels/cuda/cuda_backend.h"

#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_internal.h"

namespace tessera::kernels {
namespace cuda {
namespace {

OpTable CudaOpTable() {
  OpTable table;
  table.embedding = &CudaEmbedding;
  table.rms_norm = &CudaRmsNorm;
  table.matmul = &CudaMatmul;
  table.rope = &CudaRope;
  table.swiglu = &CudaSwiglu;
  table.kv_write = &CudaKvWrite;
  table.paged_attention = &CudaPagedAttention;
  table.sample = &CudaSample;
  table.apply_penalties = &CudaApplyPenalties;
  return table;
}

absl::Status CheckPointers(absl::string_view call, const void* a, const void* b, size_t bytes) {
  if (bytes != 0 && (a == nullptr || b == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("CudaBackend::", call, ": null pointer for ", bytes, " bytes"));
  }
  return absl::OkStatus();
}

cudaStream_t NativeStream(const Stream& stream) {
  return static_cast<cudaStream_t>(stream.native_handle());
}

// Streams of other devices (or the CPU) would make CUDA copy on the wrong queue.
absl::Status CheckStream(absl::string_view call, const Stream& stream, Device device) {
  if (stream.device() == device) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("CudaBackend::", call, ": stream of device ",
                                                 stream.device().ToString(), ", expected ",
                                                 device.ToString()));
}

absl::Status CopyAsync(const CudaBackend& backend, absl::string_view call, void* dst,
                       const void* src, size_t bytes, cudaMemcpyKind kind, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(CheckPointers(call, src, dst, bytes));
  TESSERA_RETURN_IF_ERROR(CheckStream(call, stream, backend.device()));
  if (bytes == 0) return absl::OkStatus();
  TESSERA_RETURN_IF_ERROR(backend.Activate());
  return CudaStatus("cudaMemcpyAsync",
                    cudaMemcpyAsync(dst, src, bytes, kind, NativeStream(stream)));
}

// An instantiated CUDA graph and the graph it came from, destroyed on their device.
class CudaGraph final : public Graph {
 public:
  CudaGraph(int device, cudaGraph_t graph, cudaGraphExec_t exec)
      : device_(device), graph_(graph), exec_(exec) {}
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  ~CudaGraph() override {
    if (cudaSetDevice(device_) == cudaSuccess) {
      cudaGraphExecDestroy(exec_);
      cudaGraphDestroy(graph_);
    }
  }

  absl::Status Launch(Stream& stream) override {
    TESSERA_RETURN_IF_ERROR(CheckStream("Graph::Launch", stream, Device::Cuda(device_)));
    TESSERA_RETURN_IF_ERROR(CudaStatus("cudaSetDevice", cudaSetDevice(device_)));
    return CudaStatus("cudaGraphLaunch", cudaGraphLaunch(exec_, NativeStream(stream)));
  }

 private:
  const int device_;
  cudaGraph_t graph_;
  cudaGraphExec_t exec_;
};

}  // namespace

absl::Status CudaStatus(absl::string_view call, cudaError_t error) {
  if (error == cudaSuccess) return absl::OkStatus();
  const std::string message =
      absl::StrCat(call, ": ", cudaGetErrorName(error), ": ", cudaGetErrorString(error));
  switch (error) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
    case cudaErrorDevicesUnavailable:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status CublasStatus(absl::string_view call, cublasStatus_t status) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string message =
      absl::StrCat(call, ": ", cublasGetStatusName(status), ": ", cublasGetStatusString(status));
  if (status == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(message);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) return absl::UnimplementedError(message);
  return absl::InternalError(message);
}

absl::StatusOr<std::unique_ptr<CudaStream>> CudaStream::Create(int device) {
  TESSERA_RETURN_IF_ERROR(CudaStatus("cudaSetDevice", cudaSetDevice(device)));
  cudaStream_t stream = nullptr;
  TESSERA_RETURN_IF_ERROR(CudaStatus("cudaStreamCreateWithFlags",
                                     cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)));
  return std::unique_ptr<CudaStream>(new CudaStream(device, stream));
}

CudaStream::~CudaStream() {
  // Errors here have nowhere to go; a destroyed context already freed both.
  if (cudaSetDevice(device_) == cudaSuccess) {
    if (cublas_ != nullptr) cublasDestroy(cublas_);
    cudaStreamDestroy(stream_);
  }
}

absl::Status CudaStream::Synchronize() {
  TESSERA_RETURN_IF_ERROR(CudaStatus("cudaSetDevice", cudaSetDevice(device_)));
  return CudaStatus("cudaStreamSynchronize", cudaStreamSynchronize(stream_));
}

absl::StatusOr<cublasHandle_t> CudaStream::Cublas() {
  if (cublas_ != nullptr) return cublas_;
  cublasHandle_t handle = nullptr;
  TESSERA_RETURN_IF_ERROR(CublasStatus("cublasCreate", cublasCreate(&handle)));
  absl::Status status = CublasStatus("cublasSetStream", cublasSetStream(handle, stream_));
  // f32 reductions throughout, also for f16/bf16 outputs (no TF32, no reduced-precision sums).
  if (status.ok()) {
    status = CublasStatus(
        "cublasSetMathMode",
        cublasSetMathMode(
            handle, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                              CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  }
  if (!status.ok()) {
    cublasDestroy(handle);
    return status;
  }
  cublas_ = handle;
  return cublas_;
}

CudaBackend::CudaBackend(int device, const DeviceLimits& limits, std::string description)
    : Backend(CudaOpTable()),
      device_(device),
      limits_(limits),
      description_(std::move(description)) {}

absl::Status CudaBackend::Activate() const {
  return CudaStatus("cudaSetDevice", cudaSetDevice(device_));
}

absl::StatusOr<DeviceBuffer> CudaBackend::Allocate(size_t bytes) {
  TESSERA_RETURN_IF_ERROR(Activate());
  void* data = nullptr;
  // cudaMalloc aligns to at least 256 bytes; a zero-byte buffer still gets a pointer.
  const cudaError_t error = cudaMalloc(&data, bytes == 0 ? 256 : bytes);
  if (error != cudaSuccess) {
    (void)cudaGetLastError();  // out-of-memory is not sticky: clear it for later calls
    return CudaStatus(absl::StrCat("cudaMalloc(", bytes, " bytes)"), error);
  }
  const int device = device_;
  return DeviceBuffer(data, bytes, Device::Cuda(device), [device](void* p) {
    int previous = 0;
    const bool restore = cudaGetDevice(&previous) == cudaSuccess && previous != device;
    if (cudaSetDevice(device) == cudaSuccess) cudaFree(p);
    if (restore) cudaSetDevice(previous);
  });
}

absl::StatusOr<DeviceBuffer> CudaBackend::AllocateHost(size_t bytes) {
  TESSERA_RETURN_IF_ERROR(Activate());
  void* data = nullptr;
  const size_t size = bytes == 0 ? 256 : bytes;
  const cudaError_t error = cudaHostAlloc(&data, size, cudaHostAllocPortable);
  if (error != cudaSuccess) {
    (void)cudaGetLastError();
    return CudaStatus(absl::StrCat("cudaHostAlloc(", bytes, " bytes)"), error);
  }
  std::memset(data, 0, size);
  return DeviceBuffer(data, bytes, Device::Cpu(), [](void* p) { cudaFreeHost(p); });
}

absl::Status CudaBackend::CopyToDevice(const void* host, void* device, size_t bytes,
                                       Stream& stream) {
  return CopyAsync(*this, "CopyToDevice", device, host, bytes, cudaMemcpyHostToDevice, stream);
}

absl::Status CudaBackend::CopyToHost(const void* device, void* host, size_t bytes, Stream& stream) {
  return CopyAsync(*this, "CopyToHost", host, device, bytes, cudaMemcpyDeviceToHost, stream);
}

absl::Status CudaBackend::CopyOnDevice(const void* src, void* dst, size_t bytes, Stream& stream) {
  return CopyAsync(*this, "CopyOnDevice", dst, src, bytes, cudaMemcpyDeviceToDevice, stream);
}

absl::Status CudaBackend::Memset(void* device, int value, size_t bytes, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(CheckPointers("Memset", device, device, bytes));
  TESSERA_RETURN_IF_ERROR(CheckStream("Memset", stream, this->device()));
  if (bytes == 0) return absl::OkStatus();
  TESSERA_RETURN_IF_ERROR(Activate());
  return CudaStatus("cudaMemsetAsync", cudaMemsetAsync(device, value, bytes, NativeStream(stream)));
}

absl::StatusOr<std::unique_ptr<Stream>> CudaBackend::CreateStream() {
  auto stream = CudaStream::Create(device_);
  if (!stream.ok()) return stream.status();
  return std::unique_ptr<Stream>(std::move(*stream));
}

absl::StatusOr<std::unique_ptr<Graph>> CudaBackend::CaptureGraph(Stream& stream,
                                                                 const GraphBody& body) {
  TESSERA_RETURN_IF_ERROR(CheckStream("CaptureGraph", stream, device()));
  if (!body) return absl::InvalidArgumentError("CudaBackend::CaptureGraph: empty body");
  TESSERA_RETURN_IF_ERROR(Activate());
  const cudaStream_t native = NativeStream(stream);
  // Thread-local mode: only this thread's unsafe calls (a synchronous copy, a wait) end the
  // capture; other threads driving other streams are left alone.
  TESSERA_RETURN_IF_ERROR(CudaStatus(
      "cudaStreamBeginCapture", cudaStreamBeginCapture(native, cudaStreamCaptureModeThreadLocal)));
  const absl::Status recorded = body(stream);
  cudaGraph_t graph = nullptr;
  // Always ended, so that the stream leaves capture mode whatever the body did.
  const cudaError_t ended = cudaStreamEndCapture(native, &graph);
  if (!recorded.ok() || ended != cudaSuccess) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    (void)cudaGetLastError();  // an invalidated capture's error is not sticky: clear it
    return recorded.ok() ? CudaStatus("cudaStreamEndCapture", ended) : recorded;
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
  if (instantiated != cudaSuccess) {
    cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    return CudaStatus("cudaGraphInstantiate", instantiated);
  }
  return std::unique_ptr<Graph>(std::make_unique<CudaGraph>(device_, graph, exec));
}

}  // namespace cuda

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options) {
  if (options.device < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CreateCudaBackend: device expected >= 0, got ", options.device));
  }
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    return absl::UnavailableError(
        absl::StrCat("CreateCudaBackend: no CUDA device on this machine (cudaGetDeviceCount: ",
                     error != cudaSuccess ? cudaGetErrorName(error) : "0 devices", ")"));
  }
  if (options.device >= count) {
    return absl::UnavailableError(absl::StrCat("CreateCudaBackend: device ", options.device,
                                               " requested, this machine has ", count));
  }
  TESSERA_RETURN_IF_ERROR(cuda::CudaStatus("cudaSetDevice", cudaSetDevice(options.device)));
  cuda::DeviceLimits limits;
  TESSERA_RETURN_IF_ERROR(
      cuda::CudaStatus("cudaDeviceGetAttribute(MultiProcessorCount)",
                       cudaDeviceGetAttribute(&limits.multiprocessors,
                                              cudaDevAttrMultiProcessorCount, options.device)));
  TESSERA_RETURN_IF_ERROR(cuda::CudaStatus(
      "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)",
      cudaDeviceGetAttribute(&limits.max_shared_bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                             options.device)));
  int pools = 0;
  TESSERA_RETURN_IF_ERROR(cuda::CudaStatus(
      "cudaDeviceGetAttribute(MemoryPoolsSupported)",
      cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, options.device)));
  if (pools == 0) {
    return absl::UnavailableError(absl::StrCat(
        "CreateCudaBackend: device ", options.device,
        " lacks stream-ordered allocation (cudaMallocAsync), which the backend's scratch uses"));
  }
  cudaDeviceProp props{};
  TESSERA_RETURN_IF_ERROR(
      cuda::CudaStatus("cudaGetDeviceProperties", cudaGetDeviceProperties(&props, options.device)));
  std::string description =
      absl::StrCat(props.name, ", ", props.multiProcessorCount, " SMs, ",
                   absl::StrFormat("%.1f", static_cast<double>(props.totalGlobalMem) / (1 << 30)),
                   " GiB, sm_", props.major, props.minor, ", device ", options.device);
  limits.compute_major = props.major;
  limits.attention = options.attention_kernel;
  TESSERA_RETURN_IF_ERROR(cuda::CudaStatus("PrepareAttentionKernels (cudaFuncSetAttribute)",
                                           cuda::PrepareAttentionKernels(limits)));
  return std::unique_ptr<Backend>(
      std::make_unique<cuda::CudaBackend>(options.device, limits, std::move(description)));
}

}  // namespace tessera::kernels
