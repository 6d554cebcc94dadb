// A fixed group of size() ranks that exchange tensors: the data plane of tensor and pipeline
// parallelism. NCCL semantics: an OK return means the op was enqueued on `stream`; failures after
// that surface through CheckAsyncError() (or the stream's Synchronize()). On the CPU
// implementations (in-process, MPI) ops complete before they return.
//
// Collectives must be called by every rank of the group in the same order with matching sizes;
// Send/Recv pair up by peer and order. Drive one Communicator from one thread; Abort() alone may be
// called from any thread, and afterwards every call returns kAborted. A peer that never arrives
// is reported as kDeadlineExceeded after the group's timeout, never a hang.
//
// Layers receive their groups explicitly (tp group, pp group); there is no global group.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/stream.h"
#include "common/tensor.h"

namespace tessera::parallel {

enum class ReduceOp { kSum, kMax, kMin };

class Communicator {
 public:
  virtual ~Communicator() = default;  // never waits for peers

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "inproc", "mpi", "nccl".
  virtual absl::string_view backend() const = 0;

  // recv = reduce(send over all ranks). Same shape and dtype everywhere; recv may alias send.
  virtual absl::Status AllReduce(TensorView send, MutableTensorView recv, ReduceOp op,
                                 Stream& stream) = 0;
  // recv = concat(send of rank 0, rank 1, ...) along dimension 0; recv has size() times send's
  // rows.
  virtual absl::Status AllGather(TensorView send, MutableTensorView recv, Stream& stream) = 0;
  // recv = rows [rank * n, (rank + 1) * n) of reduce(send); send has size() * n rows.
  virtual absl::Status ReduceScatter(TensorView send, MutableTensorView recv, ReduceOp op,
                                     Stream& stream) = 0;
  // data on every rank = data of `root`.
  virtual absl::Status Broadcast(MutableTensorView data, int root, Stream& stream) = 0;
  virtual absl::Status Send(TensorView data, int peer, Stream& stream) = 0;
  virtual absl::Status Recv(MutableTensorView data, int peer, Stream& stream) = 0;
  // Returns when every rank has called Barrier (or the timeout passed: kDeadlineExceeded).
  virtual absl::Status Barrier(Stream& stream) = 0;
  // Partitions the group: ranks with the same `color` form a new group, ordered by `key` (then old
  // rank). Every rank must call it. A negative color yields nullptr (not in any new group).
  virtual absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) = 0;
  // The first asynchronous error, if any (OK on the synchronous CPU implementations unless
  // aborted).
  virtual absl::Status CheckAsyncError() = 0;
  virtual void Abort() = 0;
};

// Dtypes that collectives reduce: f32, f16, bf16 (reduced in f32), i32, i64.
bool IsReducible(DataType dtype);
// "sum", "max", "min".
absl::string_view ReduceOpName(ReduceOp op);

}  // namespace tessera::parallel
