// In-process communicators: the ranks of a group are threads of one process that exchange CPU
// tensors through shared memory. For tests and for single-process CPU runs (the CPU stand-in for
// NCCL). Every op completes before it returns (the Stream is not used).
//
// Semantics beyond communicator.h:
// - Collectives rendezvous at shared barriers; each rank reads its peers' buffers directly, so
//   there is no copy through a staging buffer. Reductions combine ranks in rank order (f16/bf16
//   in f32), so every rank gets bit-identical results.
// - Send is buffered: it copies the data into the peer's mailbox and returns without waiting for
//   the Recv (unless InProcessGroupOptions::synchronous_sends). Recv waits for the next message
//   from `peer`; a size mismatch is kInvalidArgument.
// - Collectives whose calls do not match across ranks (op, dtype, count, op, root) return
//   kInvalidArgument on every rank and leave the group usable.
// - A rank that does not arrive within `timeout` breaks the group: the waiting ranks get
//   kDeadlineExceeded naming the missing ranks, and from then on every call on every rank returns
//   that error (a Recv that gets no message within `timeout` does the same, since a late Send
//   would pair with the wrong Recv). Abort() on any rank breaks the whole group with kAborted and
//   wakes every waiter at once. Destroying a rank's communicator makes later collectives (and Recvs
//   from it with an empty mailbox) fail with kAborted instead of waiting for the timeout.
// - Split() is a collective of the parent; each subgroup gets fresh shared state with the same
//   timeout, independent of the parent (aborting one does not abort the other).
//
// Thread-safety: as communicator.h (one driving thread per rank; Abort() from any thread).
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "parallel/comm/communicator.h"

namespace tessera::parallel {

struct InProcessGroupOptions {
  absl::Duration timeout = absl::Seconds(30);
  // Each Send returns only once its Recv has taken the message, as an NCCL send waits for its
  // receiver (MPI and Gloo buffer small messages): for tests that protocols cannot deadlock on
  // sends that wait. Groups made by Split inherit it. A Send not received within `timeout`
  // breaks the group.
  bool synchronous_sends = false;
};

// Creates the `size` communicators of one group; element i is rank i. Each is driven by its own
// thread. kInvalidArgument if size < 1 or timeout <= 0.
absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateInProcessGroup(
    int size, const InProcessGroupOptions& options);
// The same with buffered sends.
absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateInProcessGroup(
    int size, absl::Duration timeout);

}  // namespace tessera::parallel
