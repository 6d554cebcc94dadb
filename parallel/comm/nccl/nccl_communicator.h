// NCCL communicators: the GPU data plane of tensor and pipeline parallelism. Vendor-free header;
// the implementation includes nccl.h and cuda_runtime.h.
//
// Semantics are NCCL's: an OK return means the op was enqueued on the CUDA stream of `stream`
// (kInvalidArgument when its native_handle() is null, i.e. a CPU stream); views must be in CUDA
// memory of the communicator's device. Errors after enqueueing surface from CheckAsyncError()
// (ncclCommGetAsyncError) or the stream. f16/bf16 are reduced by NCCL (in f32 per step, rounded
// after each step). Reductions of i8 are rejected as on the other backends.
//
// The communicator is created non-blocking (ncclConfig_t.blocking = 0): calls that NCCL reports
// as in progress are polled until done or `timeout` (kDeadlineExceeded; the communicator is then
// aborted). Barrier() enqueues a one-element all-reduce and waits for the stream up to `timeout`.
// Abort() may be called from any thread: it calls ncclCommAbort, which releases kernels stuck
// waiting for peers; every later call returns kAborted. The destructor aborts too (it never waits
// for peers), so synchronize the stream before destroying a communicator whose work must finish.
// Drive a communicator from one thread.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "parallel/comm/communicator.h"
#include "parallel/comm/store.h"

namespace tessera::parallel {

struct NcclCommunicatorOptions {
  // Bounds initialisation (the unique-id Get included), Split, Barrier and in-progress polling.
  absl::Duration timeout = absl::Seconds(60);
};

// Creates rank `rank` of a group of `size` ranks on CUDA device `device` (made current on the
// calling thread). Rank 0 generates the ncclUniqueId and Sets it in `store` under `key`; the
// others Get it, waiting up to options.timeout. Each group needs a fresh key. kUnavailable when
// there is no usable CUDA device.
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    Store& store, absl::string_view key, int rank, int size, int device,
    NcclCommunicatorOptions options = {});

// Creates this rank's NCCL communicator over the same ranks as `group` (a host communicator:
// in-process, MPI or Gloo), on CUDA device `device`: group rank 0 generates the ncclUniqueId and
// broadcasts it over `group` in host memory; every rank of `group` must call this. The GPU data
// plane of a replica's TP and PP groups, split on the host first (worker/replica.h).
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicatorOver(
    Communicator& group, int device, NcclCommunicatorOptions options = {});

// Number of CUDA devices visible to this process (0 when there is no driver or no device).
int NcclDeviceCount();

}  // namespace tessera::parallel
