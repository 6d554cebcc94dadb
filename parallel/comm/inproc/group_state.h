// Shared state of one in-process group: a generation-counted rendezvous for collectives, the
// per-rank contribution slots they publish, and point-to-point mailboxes. Shared (shared_ptr) by
// the group's communicators, one per rank thread; internal to parallel/comm/inproc.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/dtype.h"
#include "parallel/comm/communicator.h"

namespace tessera::parallel::inproc {

enum class OpKind : uint8_t {
  kAllReduce,
  kAllGather,
  kReduceScatter,
  kBroadcast,
  kBarrier,
  kSplit
};
absl::string_view OpKindName(OpKind kind);

class GroupState;

// What one rank brings to a collective. Peers read it between the op's rendezvous points.
struct Contribution {
  OpKind kind = OpKind::kBarrier;
  DataType dtype = DataType::kF32;
  int64_t count = 0;  // elements of `send`
  ReduceOp op = ReduceOp::kSum;
  int root = 0;
  const void* send = nullptr;
  void* recv = nullptr;
  int color = 0;
  int key = 0;
  // Split: the new group's state, published by the subgroup's first rank.
  std::shared_ptr<GroupState> split_group;
};

class GroupState {
 public:
  GroupState(int size, absl::Duration timeout, bool synchronous_sends = false);

  int size() const { return size_; }
  absl::Duration timeout() const { return timeout_; }
  bool synchronous_sends() const { return synchronous_sends_; }

  // The slot of `rank` for its collective number `seq`. A rank writes its own slot before the
  // op's first Arrive(); peers read it only between Arrive() calls of the same op, so the
  // rendezvous mutex orders the accesses. Two slots per rank alternate by `seq`: a rank that has
  // left op `seq` may fill slot `seq + 1` while peers still read slot `seq`, but cannot reach
  // `seq + 2` before every peer has arrived at `seq + 1`.
  Contribution& slot(uint64_t seq, int rank) { return slots_[seq & 1][rank]; }

  // Waits until every rank has called Arrive() once more, or `deadline` (kDeadlineExceeded naming
  // the missing ranks; the group is then broken), or the group breaks (its error).
  absl::Status Arrive(int rank, absl::string_view call, uint64_t seq, absl::Time deadline);

  // Breaks the group (first error wins) and wakes every waiter.
  void Break(absl::Status status);
  // OK while the group is usable, else the error that broke it.
  absl::Status broken() const;
  // `rank`'s communicator is gone: collectives and Recvs that need it fail instead of waiting.
  void Leave(int rank);

  // Appends a message to the mailbox from -> to; with synchronous sends, then waits until the
  // receiver has taken it, up to `deadline` (after which the group is broken).
  absl::Status Post(int from, int to, std::vector<char> message, absl::Time deadline);
  // Takes the next message from -> to into `data` (exactly `bytes` long), waiting up to
  // `deadline`.
  absl::Status Take(int from, int to, void* data, size_t bytes, absl::Time deadline);

 private:
  void BreakLocked(absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // kAborted naming the ranks that left, or OK if none did.
  absl::Status DepartedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int size_;
  const absl::Duration timeout_;
  const bool synchronous_sends_;
  std::vector<Contribution> slots_[2];  // ordered by the rendezvous, see slot()

  mutable absl::Mutex mu_;
  absl::CondVar barrier_cv_;
  absl::CondVar mailbox_cv_;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  int arrived_ ABSL_GUARDED_BY(mu_) = 0;
  // generation + 1 of the rendezvous each rank last arrived at.
  std::vector<uint64_t> arrived_at_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> departed_ ABSL_GUARDED_BY(mu_);
  int departed_count_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status broken_ ABSL_GUARDED_BY(mu_);
  // mailboxes_[from * size + to], oldest first.
  std::vector<std::deque<std::vector<char>>> mailboxes_ ABSL_GUARDED_BY(mu_);
  // Messages ever posted to and taken from each mailbox (synchronous sends wait on these).
  std::vector<uint64_t> posted_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> taken_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera::parallel::inproc
