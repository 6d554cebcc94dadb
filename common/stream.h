// A Stream is an ordered queue of device work (a CUDA stream on GPUs). Ops "enqueue" on a stream;
// an OK return means the work was accepted, and errors that happen later surface from
// Synchronize(). On the CPU backend work runs synchronously inside the call, so Synchronize() only
// reports. One thread drives a stream at a time.
#pragma once

#include "absl/status/status.h"
#include "common/tensor.h"

namespace tessera {

class Stream {
 public:
  virtual ~Stream() = default;
  virtual Device device() const = 0;
  // Blocks until all enqueued work is done; returns the first asynchronous error, if any.
  virtual absl::Status Synchronize() = 0;
  // The vendor's handle (a cudaStream_t on CUDA), for adapters such as NCCL; nullptr on the CPU.
  virtual void* native_handle() const { return nullptr; }
};

// The stream of the CPU backend: work runs in the calling thread, nothing is ever pending.
class CpuStream final : public Stream {
 public:
  Device device() const override { return Device::Cpu(); }
  absl::Status Synchronize() override { return absl::OkStatus(); }
};

}  // namespace tessera
