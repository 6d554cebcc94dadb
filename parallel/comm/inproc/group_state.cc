#include "parallel/comm/inproc/group_state.h"

#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tessera::parallel::inproc {

absl::string_view OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kAllReduce:
      return "AllReduce";
    case OpKind::kAllGather:
      return "AllGather";
    case OpKind::kReduceScatter:
      return "ReduceScatter";
    case OpKind::kBroadcast:
      return "Broadcast";
    case OpKind::kBarrier:
      return "Barrier";
    case OpKind::kSplit:
      return "Split";
  }
  return "unknown";
}

GroupState::GroupState(int size, absl::Duration timeout, bool synchronous_sends)
    : size_(size),
      timeout_(timeout),
      synchronous_sends_(synchronous_sends),
      arrived_at_(size, 0),
      departed_(size, false),
      mailboxes_(static_cast<size_t>(size) * size),
      posted_(static_cast<size_t>(size) * size, 0),
      taken_(static_cast<size_t>(size) * size, 0) {
  slots_[0].resize(size);
  slots_[1].resize(size);
}

absl::Status GroupState::Arrive(int rank, absl::string_view call, uint64_t seq,
                                absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  if (!broken_.ok()) return broken_;
  if (absl::Status departed = DepartedLocked(); !departed.ok()) {
    BreakLocked(std::move(departed));
    return broken_;
  }
  const uint64_t generation = generation_;
  arrived_at_[rank] = generation + 1;
  if (++arrived_ == size_) {
    arrived_ = 0;
    ++generation_;
    barrier_cv_.SignalAll();
    return absl::OkStatus();
  }
  while (generation_ == generation) {
    if (!broken_.ok()) return broken_;
    if (absl::Status departed = DepartedLocked(); !departed.ok()) {
      BreakLocked(std::move(departed));
      return broken_;
    }
    if (barrier_cv_.WaitWithDeadline(&mu_, deadline) && generation_ == generation && broken_.ok() &&
        departed_count_ == 0) {
      std::vector<int> missing;
      for (int r = 0; r < size_; ++r) {
        if (arrived_at_[r] != generation + 1) missing.push_back(r);
      }
      BreakLocked(absl::DeadlineExceededError(
          absl::StrCat("inproc ", call, " (collective #", seq, "): rank ", rank, " waited ",
                       absl::FormatDuration(timeout_), " for rank(s) ", absl::StrJoin(missing, ","),
                       " of a group of ", size_)));
      return broken_;
    }
  }
  return absl::OkStatus();
}

void GroupState::Break(absl::Status status) {
  absl::MutexLock lock(&mu_);
  BreakLocked(std::move(status));
}

void GroupState::BreakLocked(absl::Status status) {
  if (!broken_.ok()) return;
  broken_ = std::move(status);
  barrier_cv_.SignalAll();
  mailbox_cv_.SignalAll();
}

absl::Status GroupState::broken() const {
  absl::MutexLock lock(&mu_);
  return broken_;
}

void GroupState::Leave(int rank) {
  absl::MutexLock lock(&mu_);
  if (departed_[rank]) return;
  departed_[rank] = true;
  ++departed_count_;
  barrier_cv_.SignalAll();
  mailbox_cv_.SignalAll();
}

absl::Status GroupState::DepartedLocked() const {
  if (departed_count_ == 0) return absl::OkStatus();
  std::vector<int> gone;
  for (int r = 0; r < size_; ++r) {
    if (departed_[r]) gone.push_back(r);
  }
  return absl::AbortedError(absl::StrCat("inproc group: rank(s) ", absl::StrJoin(gone, ","),
                                         " destroyed their communicator"));
}

absl::Status GroupState::Post(int from, int to, std::vector<char> message, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  if (!broken_.ok()) return broken_;
  auto gone = [to] {
    return absl::AbortedError(
        absl::StrCat("inproc Send to rank ", to, ": it destroyed its communicator"));
  };
  if (departed_[to]) return gone();
  const size_t box = static_cast<size_t>(from) * size_ + to;
  mailboxes_[box].push_back(std::move(message));
  const uint64_t number = ++posted_[box];
  mailbox_cv_.SignalAll();
  if (!synchronous_sends_) return absl::OkStatus();
  while (taken_[box] < number) {
    if (!broken_.ok()) return broken_;
    if (departed_[to]) return gone();
    if (mailbox_cv_.WaitWithDeadline(&mu_, deadline) && taken_[box] < number && broken_.ok() &&
        !departed_[to]) {
      // The message stays queued: a later Recv would take a message its Send gave up on.
      BreakLocked(absl::DeadlineExceededError(
          absl::StrCat("inproc Send from rank ", from, " to rank ", to, ": not received within ",
                       absl::FormatDuration(timeout_), " (synchronous sends)")));
      return broken_;
    }
  }
  return absl::OkStatus();
}

absl::Status GroupState::Take(int from, int to, void* data, size_t bytes, absl::Time deadline) {
  std::vector<char> message;
  {
    absl::MutexLock lock(&mu_);
    auto& mailbox = mailboxes_[static_cast<size_t>(from) * size_ + to];
    while (true) {
      if (!broken_.ok()) return broken_;
      if (!mailbox.empty()) break;
      if (departed_[from]) {
        return absl::AbortedError(
            absl::StrCat("inproc Recv from rank ", from, ": it destroyed its communicator"));
      }
      if (mailbox_cv_.WaitWithDeadline(&mu_, deadline) && mailbox.empty() && broken_.ok() &&
          !departed_[from]) {
        // A Send that arrives later would pair with the wrong Recv: the group is unusable.
        BreakLocked(absl::DeadlineExceededError(
            absl::StrCat("inproc Recv on rank ", to, ": no message from rank ", from, " within ",
                         absl::FormatDuration(timeout_))));
        return broken_;
      }
    }
    message = std::move(mailbox.front());
    mailbox.pop_front();
    ++taken_[static_cast<size_t>(from) * size_ + to];
    mailbox_cv_.SignalAll();  // a synchronous Send waits for this
  }
  if (message.size() != bytes) {
    return absl::InvalidArgumentError(absl::StrCat("inproc Recv on rank ", to, ": expected ", bytes,
                                                   " bytes from rank ", from,
                                                   ", the matching Send has ", message.size()));
  }
  if (bytes > 0) std::memcpy(data, message.data(), bytes);
  return absl::OkStatus();
}

}  // namespace tessera::parallel::inproc
