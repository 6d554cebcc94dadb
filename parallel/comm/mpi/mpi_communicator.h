// MpiCommunicator: a Communicator over an MPI communicator, for CPU tensors (the CPU stand-in for
// NCCL, across processes and nodes). Every op is a non-blocking MPI call (MPI_Iallreduce,
// MPI_Iallgather, MPI_Ireduce_scatter_block, MPI_Ibcast, MPI_Isend/Irecv, MPI_Ibarrier) polled
// with MPI_Test until it completes or `options.timeout` passes, so an absent peer is reported as
// kDeadlineExceeded naming the call and the peers instead of a hang. Ops complete before they
// return; the Stream is not used. f16/bf16 are reduced in f32 (converted into scratch, reduced,
// converted back). Views must be in CPU memory (kInvalidArgument otherwise); counts are limited to
// MPI's int.
//
// Failure semantics:
// - A collective that times out leaves its MPI request active (MPI cannot cancel collectives):
//   the communicator is then broken and every later call returns that error. MPI may still write
//   the op's recv buffer if the late peers arrive: keep it alive, or end the process.
// - A Send/Recv that times out is cancelled; if MPI confirms the cancellation the communicator
//   stays usable, otherwise it is broken as above.
// - Abort() (any thread; it only sets a flag) makes the op in progress return kAborted and every
//   later call too. Peers are not told: they see kDeadlineExceeded after their timeout.
// - Split() first checks that every rank arrived (MPI_Iallgather of color and key, with the
//   deadline), then calls MPI_Comm_split, which blocks but only once every peer is known to be in
//   Split(). The child gets the same options.
//
// Threads: drive a communicator from one thread; with MPI_THREAD_FUNNELED (MpiRuntime's default)
// that must be the thread that initialised MPI. The destructor frees the MPI communicator
// (MPI_Comm_free, local) and never waits for peers; it must run before MPI_Finalize (i.e. before
// the MpiRuntime is destroyed), or it skips the free. A communicator that still has a request in
// flight (after a timeout or Abort) is leaked instead: Open MPI 4.1 crashes when it progresses a
// non-blocking collective of a freed communicator.
#pragma once

#include <mpi.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "parallel/comm/communicator.h"

namespace tessera::parallel {

struct MpiCommunicatorOptions {
  // How long one op waits for its peers.
  absl::Duration timeout = absl::Seconds(60);
};

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` (a communicator this process created, not MPI_COMM_WORLD) and sets
  // its error handler to MPI_ERRORS_RETURN.
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> Create(
      MPI_Comm comm, MpiCommunicatorOptions options = {});
  ~MpiCommunicator() override;

  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::string_view backend() const override { return "mpi"; }

  absl::Status AllReduce(TensorView send, MutableTensorView recv, ReduceOp op,
                         Stream& stream) override;
  absl::Status AllGather(TensorView send, MutableTensorView recv, Stream& stream) override;
  absl::Status ReduceScatter(TensorView send, MutableTensorView recv, ReduceOp op,
                             Stream& stream) override;
  absl::Status Broadcast(MutableTensorView data, int root, Stream& stream) override;
  absl::Status Send(TensorView data, int peer, Stream& stream) override;
  absl::Status Recv(MutableTensorView data, int peer, Stream& stream) override;
  absl::Status Barrier(Stream& stream) override;
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override;
  absl::Status CheckAsyncError() override;
  void Abort() override;

  // The underlying MPI communicator (still owned by this object).
  MPI_Comm native_handle() const { return comm_; }
  const MpiCommunicatorOptions& options() const { return options_; }

 private:
  // A request MPI still holds after a timeout or an abort, with the scratch memory it may write.
  struct Orphan {
    MPI_Request request;
    std::vector<char> scratch;
  };

  MpiCommunicator(MPI_Comm comm, int rank, int size, std::vector<int> world_ranks,
                  MpiCommunicatorOptions options);

  // OK unless aborted or broken.
  absl::Status Usable() const;
  // Polls `request` to completion. On timeout or abort the request (and `scratch`, whose memory
  // it may use) is kept as an orphan. `peer` names the peer of a Send/Recv, -1 for collectives.
  absl::Status Wait(MPI_Request* request, const char* call, int peer,
                    MPI_Status* status = MPI_STATUS_IGNORE, std::vector<char>* scratch = nullptr);
  std::string DescribeTimeout(const char* call, int peer) const;

  MPI_Comm comm_;
  const int rank_;
  const int size_;
  const std::vector<int> world_ranks_;  // world rank of each rank of this group
  const MpiCommunicatorOptions options_;
  std::atomic<bool> aborted_{false};
  absl::Status broken_;          // owned by the driving thread
  std::vector<Orphan> orphans_;  // owned by the driving thread
  // f32 copies for f16/bf16 reductions, the copy of send for in-place ReduceScatter (operator new
  // aligns it for floats).
  std::vector<char> scratch_;
};

}  // namespace tessera::parallel
