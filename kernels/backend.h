// A Backend is one kind of device (the CPU, one CUDA GPU) seen by the rest of tessera: memory,
// streams, copies, and the table of ops that kernels/ops.h dispatches through.
//
// Backends are made explicitly by launch/ (kernels/cpu/cpu_backend.h, kernels/cuda/...), never by
// static registration. A Backend is thread-compatible for Allocate/Copy/CreateStream (internally
// synchronised); ops on one stream are driven by one thread.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/stream.h"
#include "common/tensor.h"
#include "kernels/op_params.h"

namespace tessera::kernels {

class Backend;

// Owns `size` bytes of device memory; frees them when destroyed. Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(void* data, size_t size, Device device, std::function<void(void*)> free_fn)
      : data_(data), size_(size), device_(device), free_fn_(std::move(free_fn)) {}
  DeviceBuffer(DeviceBuffer&& other) noexcept { *this = std::move(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return data_; }
  size_t size() const { return size_; }
  Device device() const { return device_; }
  // A contiguous view of the whole buffer, or its first NumElements(shape) elements.
  MutableTensorView View(DataType dtype, Shape shape) const;

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
  Device device_;
  std::function<void(void*)> free_fn_;
};

// One function per op. Each receives params already validated by kernels/ops.cc (shapes, dtypes,
// devices agree) and enqueues the work on `stream`.
struct OpTable {
  absl::Status (*embedding)(Backend&, const EmbeddingParams&, Stream&) = nullptr;
  absl::Status (*rms_norm)(Backend&, const RmsNormParams&, Stream&) = nullptr;
  absl::Status (*matmul)(Backend&, const MatmulParams&, Stream&) = nullptr;
  absl::Status (*rope)(Backend&, const RopeParams&, Stream&) = nullptr;
  absl::Status (*swiglu)(Backend&, const SwigluParams&, Stream&) = nullptr;
  absl::Status (*kv_write)(Backend&, const KvWriteParams&, Stream&) = nullptr;
  absl::Status (*paged_attention)(Backend&, const PagedAttentionParams&, Stream&) = nullptr;
  absl::Status (*sample)(Backend&, const SampleParams&, Stream&) = nullptr;
  absl::Status (*apply_penalties)(Backend&, const ApplyPenaltiesParams&, Stream&) = nullptr;
};

// Work recorded once on a stream and replayed as a whole (a CUDA graph): one launch instead of
// one per kernel. A replay runs exactly what was recorded — the same pointers, sizes and launch
// shapes — so only the contents of the memory it reads may change between launches.
class Graph {
 public:
  virtual ~Graph() = default;
  // Enqueues one replay on `stream` (a stream of the backend that recorded it).
  virtual absl::Status Launch(Stream& stream) = 0;
};

// Enqueues work on the stream it is given; what CaptureGraph records.
using GraphBody = std::function<absl::Status(Stream&)>;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual absl::string_view name() const = 0;  // "cpu", "cuda"
  virtual Device device() const = 0;
  // The hardware in words, for reports that must say what they ran on ("NVIDIA H100 80GB HBM3,
  // 132 SMs, 79.1 GiB, sm_90"; "Intel(R) Xeon(R) ..., 2 threads, avx2 kernels").
  virtual std::string Describe() const { return std::string(name()); }
  const OpTable& ops() const { return ops_; }

  // Uninitialised device memory, aligned to at least 256 bytes. kResourceExhausted when the
  // device has no room.
  virtual absl::StatusOr<DeviceBuffer> Allocate(size_t bytes) = 0;
  // Zeroed host memory (a buffer whose device() is the CPU) that this backend copies to and
  // from at full speed, for staging: page-locked on CUDA (cudaHostAlloc), so that copies are
  // truly asynchronous and need no bounce through a driver buffer; the CPU backend's own memory
  // on the CPU. kResourceExhausted when there is none left; kUnimplemented by default.
  virtual absl::StatusOr<DeviceBuffer> AllocateHost(size_t bytes);
  // Copies between host memory and this backend's device memory, or within the device. Ordered
  // on `stream`; the host side must stay valid until the stream is synchronised.
  virtual absl::Status CopyToDevice(const void* host, void* device, size_t bytes,
                                    Stream& stream) = 0;
  virtual absl::Status CopyToHost(const void* device, void* host, size_t bytes, Stream& stream) = 0;
  virtual absl::Status CopyOnDevice(const void* src, void* dst, size_t bytes, Stream& stream) = 0;
  virtual absl::Status Memset(void* device, int value, size_t bytes, Stream& stream) = 0;
  virtual absl::StatusOr<std::unique_ptr<Stream>> CreateStream() = 0;

  // Whether CaptureGraph records graphs (CUDA; the CPU backend only with
  // CpuBackendOptions::emulate_graphs, which replays by calling the body again).
  virtual bool supports_graphs() const { return false; }
  // Records the work `body` enqueues on `stream` without running it. The body must not wait
  // for the stream, copy from or to pageable host memory, or allocate outside stream order.
  // An error of the body, or of the recording, is returned and nothing is recorded; the stream
  // is usable afterwards. kUnimplemented where supports_graphs() is false.
  virtual absl::StatusOr<std::unique_ptr<Graph>> CaptureGraph(Stream& stream,
                                                              const GraphBody& body);

 protected:
  explicit Backend(OpTable ops) : ops_(ops) {}

 private:
  OpTable ops_;
};

}  // namespace tessera::kernels
