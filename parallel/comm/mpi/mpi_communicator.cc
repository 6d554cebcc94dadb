#include "parallel/comm/mpi/mpi_communicator.h"

#include <climits>
#include <cstring>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "parallel/comm/mpi/mpi_util.h"
#include "parallel/comm/validation.h"

namespace tessera::parallel {
namespace {

using mpi::MpiStatus;
using mpi::PollRequest;
using mpi::PollResult;

// One tag for all point-to-point traffic: MPI keeps messages between a pair in order.
constexpr int kTag = 0;

bool IsHalf(DataType dtype) { return dtype == DataType::kF16 || dtype == DataType::kBF16; }

MPI_Datatype NativeType(DataType dtype) {
  switch (dtype) {
    case DataType::kI32:
      return MPI_INT32_T;
    case DataType::kI64:
      return MPI_INT64_T;
    default:
      return MPI_FLOAT;  // f32, and f16/bf16 once converted
  }
}

MPI_Op NativeOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return MPI_SUM;
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
  }
  return MPI_SUM;
}

// MPI counts are ints.
absl::StatusOr<int> Count(const char* call, uint64_t count) {
  if (count > static_cast<uint64_t>(INT_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat(call, ": ", count, " elements exceed MPI's int count"));
  }
  return static_cast<int>(count);
}

float* AsFloats(std::vector<char>& scratch, int64_t count) {
  scratch.resize(static_cast<size_t>(count) * sizeof(float));
  return reinterpret_cast<float*>(scratch.data());
}

}  // namespace

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Create(
    MPI_Comm comm, MpiCommunicatorOptions options) {
  if (comm == MPI_COMM_NULL || comm == MPI_COMM_WORLD || comm == MPI_COMM_SELF) {
    return absl::InvalidArgumentError(
        "MpiCommunicator::Create: needs a communicator of its own (not null, world or self)");
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("MpiCommunicator::Create: timeout must be positive");
  }
  TESSERA_RETURN_IF_ERROR(
      MpiStatus(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler"));
  int rank = 0;
  int size = 0;
  TESSERA_RETURN_IF_ERROR(MpiStatus(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank"));
  TESSERA_RETURN_IF_ERROR(MpiStatus(MPI_Comm_size(comm, &size), "MPI_Comm_size"));
  // World ranks, to name peers in timeout messages.
  std::vector<int> local(size);
  std::vector<int> world(size, MPI_UNDEFINED);
  for (int r = 0; r < size; ++r) local[r] = r;
  MPI_Group group;
  MPI_Group world_group;
  TESSERA_RETURN_IF_ERROR(MpiStatus(MPI_Comm_group(comm, &group), "MPI_Comm_group"));
  TESSERA_RETURN_IF_ERROR(
      MpiStatus(MPI_Comm_group(MPI_COMM_WORLD, &world_group), "MPI_Comm_group"));
  absl::Status translated =
      MpiStatus(MPI_Group_translate_ranks(group, size, local.data(), world_group, world.data()),
                "MPI_Group_translate_ranks");
  MPI_Group_free(&group);
  MPI_Group_free(&world_group);
  TESSERA_RETURN_IF_ERROR(translated);
  return std::unique_ptr<MpiCommunicator>(
      new MpiCommunicator(comm, rank, size, std::move(world), options));
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, int rank, int size, std::vector<int> world_ranks,
                                 MpiCommunicatorOptions options)
    : comm_(comm),
      rank_(rank),
      size_(size),
      world_ranks_(std::move(world_ranks)),
      options_(options) {}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  bool pending = false;
  for (Orphan& orphan : orphans_) {
    int done = 0;
    MPI_Test(&orphan.request, &done, MPI_STATUS_IGNORE);
    if (!done) {
      pending = true;
      // MPI may still write this memory when the late peers arrive: leak it on purpose.
      new (std::nothrow) std::vector<char>(std::move(orphan.scratch));
    }
  }
  // Open MPI 4.1 keeps progressing a pending non-blocking collective on a freed communicator and
  // crashes, so a communicator with an unfinished request is leaked instead of freed.
  if (!pending) MPI_Comm_free(&comm_);  // local; never waits for peers
}

absl::Status MpiCommunicator::Usable() const {
  if (aborted_.load(std::memory_order_relaxed)) {
    return absl::AbortedError(absl::StrCat("MPI communicator of rank ", rank_, " was aborted"));
  }
  return broken_;
}

absl::Status MpiCommunicator::CheckAsyncError() { return Usable(); }

void MpiCommunicator::Abort() { aborted_.store(true, std::memory_order_relaxed); }

std::string MpiCommunicator::DescribeTimeout(const char* call, int peer) const {
  const std::string where =
      absl::StrCat("rank ", rank_, " (world rank ", world_ranks_[rank_], ") of ", size_);
  if (peer >= 0) {
    return absl::StrCat(call, ": not complete after ", absl::FormatDuration(options_.timeout),
                        " on ", where, ": peer rank ", peer, " (world rank ", world_ranks_[peer],
                        ") did not post the matching call");
  }
  return absl::StrCat(call, ": not complete after ", absl::FormatDuration(options_.timeout), " on ",
                      where, ": at least one of world ranks ", absl::StrJoin(world_ranks_, ","),
                      " did not call it");
}

absl::Status MpiCommunicator::Wait(MPI_Request* request, const char* call, int peer,
                                   MPI_Status* status, std::vector<char>* scratch) {
  const absl::Time deadline = absl::Now() + options_.timeout;
  TESSERA_ASSIGN_OR_RETURN(PollResult result,
                           PollRequest(request, status, deadline, &aborted_, call));
  if (result == PollResult::kDone) return absl::OkStatus();

  absl::Status error = result == PollResult::kAborted
                           ? absl::AbortedError(absl::StrCat(call, ": communicator of rank ", rank_,
                                                             " aborted while waiting"))
                           : absl::DeadlineExceededError(DescribeTimeout(call, peer));
  if (peer >= 0) {
    // Point-to-point requests can be cancelled; if MPI confirms, nothing is left in flight.
    MPI_Cancel(request);
    MPI_Status cancel_status;
    absl::StatusOr<PollResult> cancelled =
        PollRequest(request, &cancel_status, absl::Now() + absl::Seconds(1), nullptr, call);
    if (cancelled.ok() && *cancelled == PollResult::kDone) {
      int flag = 0;
      MPI_Test_cancelled(&cancel_status, &flag);
      if (!flag) {  // it completed after all
        if (status != MPI_STATUS_IGNORE) *status = cancel_status;
        return absl::OkStatus();
      }
      return error;
    }
  }
  Orphan orphan{*request, {}};
  if (scratch != nullptr) orphan.scratch.swap(*scratch);
  orphans_.push_back(std::move(orphan));
  if (broken_.ok() && result == PollResult::kTimedOut) broken_ = error;
  return error;
}

absl::Status MpiCommunicator::AllReduce(TensorView send, MutableTensorView recv, ReduceOp op,
                                        Stream& stream) {
  TESSERA_RETURN_IF_ERROR(Usable());
  TESSERA_RETURN_IF_ERROR(ValidateAllReduce(send, recv, DeviceType::kCpu));
  TESSERA_ASSIGN_OR_RETURN(const int count, Count("MPI_Iallreduce", send.numel()));
  MPI_Request request;
  if (IsHalf(send.dtype())) {
    float* values = AsFloats(scratch_, count);
    ConvertToF32(send.dtype(), send.data(), values, count);
    TESSERA_RETURN_IF_ERROR(MpiStatus(
        MPI_Iallreduce(MPI_IN_PLACE, values, count, MPI_FLOAT, NativeOp(op), comm_, &request),
        "MPI_Iallreduce"));
    TESSERA_RETURN_IF_ERROR(Wait(&request, "MPI_Iallreduce", -1, MPI_STATUS_IGNORE, &scratch_));
    ConvertFromF32(values, recv.dtype(), recv.data(), count);
    return absl::OkStatus();
  }
  const void* send_buffer = send.data() == recv.data() ? MPI_IN_PLACE : send.data();
  TESSERA_RETURN_IF_ERROR(
      MpiStatus(MPI_Iallreduce(send_buffer, recv.data(), count, NativeType(send.dtype()),
                               NativeOp(op), comm_, &request),
                "MPI_Iallreduce"));
  return Wait(&request, "MPI_Iallreduce", -1);
}

absl::Status MpiCommunicator::AllGather(TensorView send, MutableTensorView recv, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(Usable());
  TESSERA_RETURN_IF_ERROR(ValidateAllGather(send, recv, rank_, size_, DeviceType::kCpu));
  TESSERA_ASSIGN_OR_RETURN(const int bytes, Count("MPI_Iallgather", send.nbytes()));
  // NCCL's in-place layout (send is this rank's slice of recv) is MPI_IN_PLACE's.
  const void* send_buffer = send.data() == static_cast<const char*>(recv.data()) + rank_ * bytes
                                ? MPI_IN_PLACE
                                : send.data();
  MPI_Request request;
  TESSERA_RETURN_IF_ERROR(MpiStatus(
      MPI_Iallgather(send_buffer, bytes, MPI_BYTE, recv.data(), bytes, MPI_BYTE, comm_, &request),
      "MPI_Iallgather"));
  return Wait(&request, "MPI_Iallgather", -1);
}

absl::Status MpiCommunicator::ReduceScatter(TensorView send, MutableTensorView recv, ReduceOp op,
                                            Stream& stream) {
  TESSERA_RETURN_IF_ERROR(Usable());
  TESSERA_RETURN_IF_ERROR(ValidateReduceScatter(send, recv, rank_, size_, DeviceType::kCpu));
  TESSERA_ASSIGN_OR_RETURN(const int count, Count("MPI_Ireduce_scatter_block", recv.numel()));
  TESSERA_RETURN_IF_ERROR(Count("MPI_Ireduce_scatter_block", send.numel()).status());
  MPI_Request request;
  if (IsHalf(send.dtype())) {
    float* values = AsFloats(scratch_, send.numel());
    ConvertToF32(send.dtype(), send.data(), values, send.numel());
    // In place, MPI takes the input from the receive buffer and leaves this rank's block first.
    TESSERA_RETURN_IF_ERROR(
        MpiStatus(MPI_Ireduce_scatter_block(MPI_IN_PLACE, values, count, MPI_FLOAT, NativeOp(op),
                                            comm_, &request),
                  "MPI_Ireduce_scatter_block"));
    TESSERA_RETURN_IF_ERROR(
        Wait(&request, "MPI_Ireduce_scatter_block", -1, MPI_STATUS_IGNORE, &scratch_));
    ConvertFromF32(values, recv.dtype(), recv.data(), count);
    return absl::OkStatus();
  }
  const void* send_buffer = send.data();
  std::vector<char>* held = nullptr;
  if (Overlaps(send.data(), send.nbytes(), recv.data(), recv.nbytes())) {
    // NCCL's in-place layout differs from MPI_IN_PLACE's: reduce from a copy of send.
    scratch_.assign(static_cast<const char*>(send.data()),
                    static_cast<const char*>(send.data()) + send.nbytes());
    send_buffer = scratch_.data();
    held = &scratch_;
  }
  TESSERA_RETURN_IF_ERROR(
      MpiStatus(MPI_Ireduce_scatter_block(send_buffer, recv.data(), count, NativeType(send.dtype()),
                                          NativeOp(op), comm_, &request),
                "MPI_Ireduce_scatter_block"));
  return Wait(&request, "MPI_Ireduce_scatter_block", -1, MPI_STATUS_IGNORE, held);
}

absl::Status MpiCommunicator::Broadcast(MutableTensorView data, int root, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(Usable());
  TESSERA_RETURN_IF_ERROR(ValidateBroadcast(data, root, size_, DeviceType::kCpu));
  TESSERA_ASSIGN_OR_RETURN(const int bytes, Count("MPI_Ibcast", data.nbytes()));
  MPI_Request request;
  TESSERA_RETURN_IF_ERROR(
      MpiStatus(MPI_Ibcast(data.data(), bytes, MPI_BYTE, root, comm_, &request), "MPI_Ibcast"));
  return Wait(&request, "MPI_Ibcast", -1);
}

absl::Status MpiCommunicator::Send(TensorView data, int peer, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(Usable());
  TESSERA_RETURN_IF_ERROR(ValidatePointToPoint("Send", data, peer, rank_, size_, DeviceType::kCpu));
  TESSERA_ASSIGN_OR_RETURN(const int bytes, Count("MPI_Isend", data.nbytes()));
  MPI_Request request;
  TESSERA_RETURN_IF_ERROR(
      MpiStatus(MPI_Isend(data.data(), bytes, MPI_BYTE, peer, kTag, comm_, &request), "MPI_Isend"));
  return Wait(&request, "MPI_Isend", peer);
}

absl::Status MpiCommunicator::Recv(MutableTensorView data, int peer, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(Usable());
  TESSERA_RETURN_IF_ERROR(ValidatePointToPoint("Recv", data, peer, rank_, size_, DeviceType::kCpu));
  TESSERA_ASSIGN_OR_RETURN(const int bytes, Count("MPI_Irecv", data.nbytes()));
  MPI_Request request;
  TESSERA_RETURN_IF_ERROR(
      MpiStatus(MPI_Irecv(data.data(), bytes, MPI_BYTE, peer, kTag, comm_, &request), "MPI_Irecv"));
  // MPI_Test leaves status.MPI_ERROR unset; errors come back as its return code.
  MPI_Status status;
  TESSERA_RETURN_IF_ERROR(Wait(&request, "MPI_Irecv", peer, &status));
  int received = 0;
  TESSERA_RETURN_IF_ERROR(MpiStatus(MPI_Get_count(&status, MPI_BYTE, &received), "MPI_Get_count"));
  if (received != bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("MPI_Irecv: expected ", bytes, " bytes from rank ", peer, ", got ", received));
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Barrier(Stream& stream) {
  TESSERA_RETURN_IF_ERROR(Usable());
  MPI_Request request;
  TESSERA_RETURN_IF_ERROR(MpiStatus(MPI_Ibarrier(comm_, &request), "MPI_Ibarrier"));
  return Wait(&request, "MPI_Ibarrier", -1);
}

absl::StatusOr<std::unique_ptr<Communicator>> MpiCommunicator::Split(int color, int key) {
  TESSERA_RETURN_IF_ERROR(Usable());
  // Prove every rank is here before the blocking MPI_Comm_split.
  const int mine[2] = {color, key};
  std::vector<int> all(2 * static_cast<size_t>(size_));
  MPI_Request request;
  TESSERA_RETURN_IF_ERROR(
      MpiStatus(MPI_Iallgather(mine, 2, MPI_INT, all.data(), 2, MPI_INT, comm_, &request),
                "MPI_Iallgather (Split)"));
  TESSERA_RETURN_IF_ERROR(Wait(&request, "MPI_Iallgather (Split)", -1));
  MPI_Comm child = MPI_COMM_NULL;
  TESSERA_RETURN_IF_ERROR(MpiStatus(
      MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &child), "MPI_Comm_split"));
  if (child == MPI_COMM_NULL) return std::unique_ptr<Communicator>();
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> communicator = Create(child, options_);
  if (!communicator.ok()) {
    MPI_Comm_free(&child);
    return communicator.status();
  }
  return std::unique_ptr<Communicator>(*std::move(communicator));
}

}  // namespace tessera::parallel
