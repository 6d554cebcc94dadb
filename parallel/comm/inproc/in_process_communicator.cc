#include "parallel/comm/inproc/in_process_communicator.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "parallel/comm/cpu_reduce.h"
#include "parallel/comm/inproc/group_state.h"
#include "parallel/comm/validation.h"

namespace tessera::parallel {
namespace {

using inproc::Contribution;
using inproc::GroupState;
using inproc::OpKind;

std::string Describe(const Contribution& c) {
  switch (c.kind) {
    case OpKind::kBarrier:
    case OpKind::kSplit:
      return std::string(OpKindName(c.kind));
    case OpKind::kBroadcast:
      return absl::StrCat("Broadcast(", DataTypeName(c.dtype), " x ", c.count, ", root ", c.root,
                          ")");
    default:
      return absl::StrCat(OpKindName(c.kind), "(", DataTypeName(c.dtype), " x ", c.count, ", ",
                          ReduceOpName(c.op), ")");
  }
}

bool Matches(const Contribution& a, const Contribution& b) {
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case OpKind::kBarrier:
    case OpKind::kSplit:
      return true;
    case OpKind::kBroadcast:
      return a.dtype == b.dtype && a.count == b.count && a.root == b.root;
    case OpKind::kAllGather:
      return a.dtype == b.dtype && a.count == b.count;
    case OpKind::kAllReduce:
    case OpKind::kReduceScatter:
      return a.dtype == b.dtype && a.count == b.count && a.op == b.op;
  }
  return false;
}

// [begin, end) of the elements that `rank` reduces in an AllReduce of `count` elements.
std::pair<int64_t, int64_t> Chunk(int64_t count, int rank, int size) {
  return {count * rank / size, count * (rank + 1) / size};
}

class InProcessCommunicator final : public Communicator {
 public:
  // `state` is shared by the communicators of every rank of the group.
  InProcessCommunicator(std::shared_ptr<GroupState> state, int rank)
      : state_(std::move(state)), rank_(rank) {}
  ~InProcessCommunicator() override { state_->Leave(rank_); }

  int rank() const override { return rank_; }
  int size() const override { return state_->size(); }
  absl::string_view backend() const override { return "inproc"; }

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
  absl::Status CheckAsyncError() override { return state_->broken(); }
  void Abort() override {
    state_->Break(
        absl::AbortedError(absl::StrCat("inproc group aborted (Abort() on rank ", rank_, ")")));
  }

 private:
  // Publishes `mine`, waits for every rank and checks that the calls match. On success the
  // peers' slots may be read until the next Arrive().
  absl::Status Begin(const Contribution& mine);
  absl::Status Arrive() {
    return state_->Arrive(rank_, OpKindName(slot(rank_).kind), seq_, deadline_);
  }
  const Contribution& slot(int rank) { return state_->slot(seq_, rank); }

  const std::shared_ptr<GroupState> state_;
  const int rank_;
  uint64_t seq_ = 0;     // number of the current collective on this rank
  absl::Time deadline_;  // of the current collective
};

absl::Status InProcessCommunicator::Begin(const Contribution& mine) {
  TESSERA_RETURN_IF_ERROR(state_->broken());
  ++seq_;
  state_->slot(seq_, rank_) = mine;
  deadline_ = absl::Now() + state_->timeout();
  TESSERA_RETURN_IF_ERROR(Arrive());
  // Every rank compares every slot with rank 0's, so all of them reach the same verdict.
  for (int r = 1; r < size(); ++r) {
    if (!Matches(slot(0), slot(r))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "inproc ", OpKindName(mine.kind), ": calls do not match across ranks: rank 0 called ",
          Describe(slot(0)), ", rank ", r, " called ", Describe(slot(r))));
    }
  }
  return absl::OkStatus();
}

// What a rank brings to a data collective: the op, its buffers and their element type and count.
Contribution DataContribution(OpKind kind, const TensorView& send, void* recv) {
  Contribution c;
  c.kind = kind;
  c.dtype = send.dtype();
  c.count = send.numel();
  c.send = send.data();
  c.recv = recv;
  return c;
}

absl::Status InProcessCommunicator::AllReduce(TensorView send, MutableTensorView recv, ReduceOp op,
                                              Stream& stream) {
  TESSERA_RETURN_IF_ERROR(ValidateAllReduce(send, recv, DeviceType::kCpu));
  Contribution mine = DataContribution(OpKind::kAllReduce, send, recv.data());
  mine.op = op;
  TESSERA_RETURN_IF_ERROR(Begin(mine));

  // Like NCCL's ring: each rank reduces one chunk into its own recv (reduce-scatter), then every
  // rank copies the other chunks from their owners (all-gather). Rank r only ever writes chunk r
  // of its recv before the second rendezvous, and no peer reads that chunk of r's send, so
  // in-place works.
  const size_t element = DataTypeSize(mine.dtype);
  const auto [begin, end] = Chunk(mine.count, rank_, size());
  std::vector<const void*> sources(size());
  for (int r = 0; r < size(); ++r) {
    sources[r] = static_cast<const char*>(slot(r).send) + begin * element;
  }
  if (end > begin) {
    ReduceCpu(mine.dtype, op, sources, static_cast<char*>(recv.data()) + begin * element,
              end - begin);
  }
  TESSERA_RETURN_IF_ERROR(Arrive());
  for (int r = 0; r < size(); ++r) {
    if (r == rank_) continue;
    const auto [b, e] = Chunk(mine.count, r, size());
    if (e > b) {
      std::memcpy(static_cast<char*>(recv.data()) + b * element,
                  static_cast<const char*>(slot(r).recv) + b * element, (e - b) * element);
    }
  }
  return Arrive();  // peers may not touch their recv before everyone copied from it
}

absl::Status InProcessCommunicator::AllGather(TensorView send, MutableTensorView recv,
                                              Stream& stream) {
  TESSERA_RETURN_IF_ERROR(ValidateAllGather(send, recv, rank_, size(), DeviceType::kCpu));
  Contribution mine = DataContribution(OpKind::kAllGather, send, recv.data());
  TESSERA_RETURN_IF_ERROR(Begin(mine));
  const size_t bytes = send.nbytes();
  for (int r = 0; r < size(); ++r) {
    char* dst = static_cast<char*>(recv.data()) + r * bytes;
    if (bytes > 0 && dst != slot(r).send) std::memcpy(dst, slot(r).send, bytes);
  }
  return Arrive();
}

absl::Status InProcessCommunicator::ReduceScatter(TensorView send, MutableTensorView recv,
                                                  ReduceOp op, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(ValidateReduceScatter(send, recv, rank_, size(), DeviceType::kCpu));
  Contribution mine = DataContribution(OpKind::kReduceScatter, send, recv.data());
  mine.op = op;
  TESSERA_RETURN_IF_ERROR(Begin(mine));
  const int64_t n = recv.numel();
  const size_t offset = static_cast<size_t>(rank_) * recv.nbytes();
  std::vector<const void*> sources(size());
  for (int r = 0; r < size(); ++r) sources[r] = static_cast<const char*>(slot(r).send) + offset;
  if (n > 0) ReduceCpu(mine.dtype, op, sources, recv.data(), n);
  return Arrive();
}

absl::Status InProcessCommunicator::Broadcast(MutableTensorView data, int root, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(ValidateBroadcast(data, root, size(), DeviceType::kCpu));
  Contribution mine = DataContribution(OpKind::kBroadcast, data, data.data());
  mine.root = root;
  TESSERA_RETURN_IF_ERROR(Begin(mine));
  if (rank_ != root && data.nbytes() > 0) {
    std::memcpy(data.data(), slot(root).send, data.nbytes());
  }
  return Arrive();
}

absl::Status InProcessCommunicator::Send(TensorView data, int peer, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(
      ValidatePointToPoint("Send", data, peer, rank_, size(), DeviceType::kCpu));
  const auto* bytes = static_cast<const char*>(data.data());
  return state_->Post(rank_, peer, std::vector<char>(bytes, bytes + data.nbytes()),
                      absl::Now() + state_->timeout());
}

absl::Status InProcessCommunicator::Recv(MutableTensorView data, int peer, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(
      ValidatePointToPoint("Recv", data, peer, rank_, size(), DeviceType::kCpu));
  return state_->Take(peer, rank_, data.data(), data.nbytes(), absl::Now() + state_->timeout());
}

absl::Status InProcessCommunicator::Barrier(Stream& stream) {
  Contribution mine;
  mine.kind = OpKind::kBarrier;
  return Begin(mine);
}

absl::StatusOr<std::unique_ptr<Communicator>> InProcessCommunicator::Split(int color, int key) {
  Contribution mine;
  mine.kind = OpKind::kSplit;
  mine.color = color;
  mine.key = key;
  TESSERA_RETURN_IF_ERROR(Begin(mine));
  // Members of my color ordered by (key, old rank); every member computes the same list.
  std::vector<std::pair<int, int>> members;
  if (color >= 0) {
    for (int r = 0; r < size(); ++r) {
      if (slot(r).color == color) members.emplace_back(slot(r).key, r);
    }
    std::sort(members.begin(), members.end());
  }
  int new_rank = -1;
  for (size_t i = 0; i < members.size(); ++i) {
    if (members[i].second == rank_) new_rank = static_cast<int>(i);
  }
  if (new_rank == 0) {
    state_->slot(seq_, rank_).split_group = std::make_shared<GroupState>(
        static_cast<int>(members.size()), state_->timeout(), state_->synchronous_sends());
  }
  TESSERA_RETURN_IF_ERROR(Arrive());
  if (color < 0) return std::unique_ptr<Communicator>();
  std::shared_ptr<GroupState> group = slot(members[0].second).split_group;
  return std::unique_ptr<Communicator>(
      std::make_unique<InProcessCommunicator>(std::move(group), new_rank));
}

}  // namespace

absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateInProcessGroup(
    int size, absl::Duration timeout) {
  return CreateInProcessGroup(size, InProcessGroupOptions{.timeout = timeout});
}

absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateInProcessGroup(
    int size, const InProcessGroupOptions& options) {
  const absl::Duration timeout = options.timeout;
  if (size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("CreateInProcessGroup: size ", size, " < 1"));
  }
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("CreateInProcessGroup: timeout ", absl::FormatDuration(timeout), " <= 0"));
  }
  auto state = std::make_shared<GroupState>(size, timeout, options.synchronous_sends);
  std::vector<std::unique_ptr<Communicator>> group;
  group.reserve(size);
  for (int r = 0; r < size; ++r) group.push_back(std::make_unique<InProcessCommunicator>(state, r));
  return group;
}

}  // namespace tessera::parallel
