#include "parallel/comm/nccl/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "common/stream.h"
#include "common/tensor.h"
#include "parallel/comm/validation.h"

namespace tessera::parallel {
namespace {

absl::string_view NcclResultName(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "ncclSuccess";
    case ncclUnhandledCudaError:
      return "ncclUnhandledCudaError";
    case ncclSystemError:
      return "ncclSystemError";
    case ncclInternalError:
      return "ncclInternalError";
    case ncclInvalidArgument:
      return "ncclInvalidArgument";
    case ncclInvalidUsage:
      return "ncclInvalidUsage";
    case ncclRemoteError:
      return "ncclRemoteError";
    case ncclInProgress:
      return "ncclInProgress";
    default:
      return "ncclResult(unknown)";
  }
}

absl::Status NcclStatus(ncclResult_t result, absl::string_view call) {
  if (result == ncclSuccess) return absl::OkStatus();
  absl::StatusCode code = absl::StatusCode::kInternal;
  switch (result) {
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      code = absl::StatusCode::kInvalidArgument;
      break;
    case ncclRemoteError:
      code = absl::StatusCode::kUnavailable;
      break;
    default:
      break;
  }
  return absl::Status(
      code, absl::StrCat(call, ": ", NcclResultName(result), ": ", ncclGetErrorString(result)));
}

absl::Status CudaStatus(cudaError_t error, absl::string_view call) {
  if (error == cudaSuccess) return absl::OkStatus();
  const absl::StatusCode code = error == cudaErrorNoDevice ||
                                        error == cudaErrorInsufficientDriver ||
                                        error == cudaErrorInvalidDevice
                                    ? absl::StatusCode::kUnavailable
                                    : absl::StatusCode::kInternal;
  return absl::Status(
      code, absl::StrCat(call, ": ", cudaGetErrorName(error), ": ", cudaGetErrorString(error)));
}

absl::StatusOr<ncclDataType_t> NcclType(DataType dtype) {
  switch (dtype) {
    case DataType::kF32:
      return ncclFloat32;
    case DataType::kF16:
      return ncclFloat16;
    case DataType::kBF16:
      return ncclBfloat16;
    case DataType::kI32:
      return ncclInt32;
    case DataType::kI64:
      return ncclInt64;
    case DataType::kI8:
      return ncclInt8;
  }
  return absl::InvalidArgumentError("NCCL: unknown dtype");
}

ncclRedOp_t NcclOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
  }
  return ncclSum;
}

absl::StatusOr<cudaStream_t> CudaStreamOf(absl::string_view call, Stream& stream) {
  if (stream.native_handle() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(call, ": NCCL needs a CUDA stream, got one without a native handle"));
  }
  return static_cast<cudaStream_t>(stream.native_handle());
}

ncclConfig_t NonBlockingConfig() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

// Polls a non-blocking communicator until its pending call is done or `deadline`.
absl::Status PollComm(ncclComm_t comm, absl::string_view call, absl::Time deadline) {
  while (true) {
    ncclResult_t state = ncclSuccess;
    TESSERA_RETURN_IF_ERROR(
        NcclStatus(ncclCommGetAsyncError(comm, &state), "ncclCommGetAsyncError"));
    if (state != ncclInProgress) return NcclStatus(state, call);
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(call, ": still in progress at the deadline"));
    }
    std::this_thread::yield();
  }
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int size, int device, void* scratch,
                   NcclCommunicatorOptions options)
      : rank_(rank),
        size_(size),
        device_(device),
        scratch_(scratch),
        options_(options),
        comm_(comm) {}

  ~NcclCommunicator() override {
    Abort();
    if (scratch_ != nullptr) cudaFree(scratch_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::string_view backend() const override { return "nccl"; }

  absl::Status AllReduce(TensorView send, MutableTensorView recv, ReduceOp op,
                         Stream& stream) override {
    TESSERA_RETURN_IF_ERROR(ValidateAllReduce(send, recv, DeviceType::kCuda));
    TESSERA_ASSIGN_OR_RETURN(cudaStream_t s, CudaStreamOf("ncclAllReduce", stream));
    TESSERA_ASSIGN_OR_RETURN(ncclDataType_t type, NcclType(send.dtype()));
    return Call("ncclAllReduce", [&](ncclComm_t comm) {
      return ncclAllReduce(send.data(), recv.data(), send.numel(), type, NcclOp(op), comm, s);
    });
  }

  absl::Status AllGather(TensorView send, MutableTensorView recv, Stream& stream) override {
    TESSERA_RETURN_IF_ERROR(ValidateAllGather(send, recv, rank_, size_, DeviceType::kCuda));
    TESSERA_ASSIGN_OR_RETURN(cudaStream_t s, CudaStreamOf("ncclAllGather", stream));
    return Call("ncclAllGather", [&](ncclComm_t comm) {
      return ncclAllGather(send.data(), recv.data(), send.nbytes(), ncclChar, comm, s);
    });
  }

  absl::Status ReduceScatter(TensorView send, MutableTensorView recv, ReduceOp op,
                             Stream& stream) override {
    TESSERA_RETURN_IF_ERROR(ValidateReduceScatter(send, recv, rank_, size_, DeviceType::kCuda));
    TESSERA_ASSIGN_OR_RETURN(cudaStream_t s, CudaStreamOf("ncclReduceScatter", stream));
    TESSERA_ASSIGN_OR_RETURN(ncclDataType_t type, NcclType(send.dtype()));
    return Call("ncclReduceScatter", [&](ncclComm_t comm) {
      return ncclReduceScatter(send.data(), recv.data(), recv.numel(), type, NcclOp(op), comm, s);
    });
  }

  absl::Status Broadcast(MutableTensorView data, int root, Stream& stream) override {
    TESSERA_RETURN_IF_ERROR(ValidateBroadcast(data, root, size_, DeviceType::kCuda));
    TESSERA_ASSIGN_OR_RETURN(cudaStream_t s, CudaStreamOf("ncclBroadcast", stream));
    return Call("ncclBroadcast", [&](ncclComm_t comm) {
      return ncclBroadcast(data.data(), data.data(), data.nbytes(), ncclChar, root, comm, s);
    });
  }

  absl::Status Send(TensorView data, int peer, Stream& stream) override {
    TESSERA_RETURN_IF_ERROR(
        ValidatePointToPoint("Send", data, peer, rank_, size_, DeviceType::kCuda));
    TESSERA_ASSIGN_OR_RETURN(cudaStream_t s, CudaStreamOf("ncclSend", stream));
    return Call("ncclSend", [&](ncclComm_t comm) {
      ncclResult_t result = ncclGroupStart();
      if (result != ncclSuccess) return result;
      result = ncclSend(data.data(), data.nbytes(), ncclChar, peer, comm, s);
      const ncclResult_t end = ncclGroupEnd();
      return result != ncclSuccess ? result : end;
    });
  }

  absl::Status Recv(MutableTensorView data, int peer, Stream& stream) override {
    TESSERA_RETURN_IF_ERROR(
        ValidatePointToPoint("Recv", data, peer, rank_, size_, DeviceType::kCuda));
    TESSERA_ASSIGN_OR_RETURN(cudaStream_t s, CudaStreamOf("ncclRecv", stream));
    return Call("ncclRecv", [&](ncclComm_t comm) {
      ncclResult_t result = ncclGroupStart();
      if (result != ncclSuccess) return result;
      result = ncclRecv(data.data(), data.nbytes(), ncclChar, peer, comm, s);
      const ncclResult_t end = ncclGroupEnd();
      return result != ncclSuccess ? result : end;
    });
  }

  absl::Status Barrier(Stream& stream) override {
    TESSERA_ASSIGN_OR_RETURN(cudaStream_t s, CudaStreamOf("Barrier", stream));
    TESSERA_RETURN_IF_ERROR(Call("ncclAllReduce (Barrier)", [&](ncclComm_t comm) {
      return ncclAllReduce(scratch_, scratch_, 1, ncclInt32, ncclSum, comm, s);
    }));
    const absl::Time deadline = absl::Now() + options_.timeout;
    while (true) {
      const cudaError_t state = cudaStreamQuery(s);
      if (state == cudaSuccess) return absl::OkStatus();
      if (state != cudaErrorNotReady) return CudaStatus(state, "cudaStreamQuery (Barrier)");
      if (IsAborted()) return AbortedError("Barrier");
      if (absl::Now() >= deadline) {
        Abort();  // releases the kernel stuck waiting for the absent peers
        return absl::DeadlineExceededError(absl::StrCat(
            "Barrier (ncclAllReduce): not complete after ", absl::FormatDuration(options_.timeout),
            " on rank ", rank_, " of ", size_, "; the communicator was aborted"));
      }
      std::this_thread::yield();
    }
  }

  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    ncclComm_t child = nullptr;
    ncclConfig_t config = NonBlockingConfig();
    TESSERA_RETURN_IF_ERROR(Call("ncclCommSplit", [&](ncclComm_t comm) {
      return ncclCommSplit(comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &child, &config);
    }));
    if (child == nullptr) return std::unique_ptr<Communicator>();
    absl::Status ready = PollComm(child, "ncclCommSplit", absl::Now() + options_.timeout);
    int child_rank = 0;
    int child_size = 0;
    if (ready.ok()) ready = NcclStatus(ncclCommUserRank(child, &child_rank), "ncclCommUserRank");
    if (ready.ok()) ready = NcclStatus(ncclCommCount(child, &child_size), "ncclCommCount");
    void* scratch = nullptr;
    if (ready.ok()) ready = CudaStatus(cudaMalloc(&scratch, sizeof(int32_t)), "cudaMalloc");
    if (!ready.ok()) {
      ncclCommAbort(child);
      return ready;
    }
    return std::unique_ptr<Communicator>(std::make_unique<NcclCommunicator>(
        child, child_rank, child_size, device_, scratch, options_));
  }

  absl::Status CheckAsyncError() override {
    absl::MutexLock lock(&mu_);
    if (comm_ == nullptr) return AbortedError("CheckAsyncError");
    ncclResult_t state = ncclSuccess;
    TESSERA_RETURN_IF_ERROR(
        NcclStatus(ncclCommGetAsyncError(comm_, &state), "ncclCommGetAsyncError"));
    if (state == ncclInProgress) return absl::OkStatus();
    return NcclStatus(state, "ncclCommGetAsyncError");
  }

  void Abort() override {
    absl::MutexLock lock(&mu_);
    if (comm_ == nullptr) return;
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }

 private:
  bool IsAborted() {
    absl::MutexLock lock(&mu_);
    return comm_ == nullptr;
  }

  absl::Status AbortedError(absl::string_view call) const {
    return absl::AbortedError(
        absl::StrCat(call, ": NCCL communicator of rank ", rank_, " was aborted"));
  }

  // Runs `f(comm)` under the mutex that Abort() takes, then polls while NCCL reports it in
  // progress (dropping the mutex between polls so that Abort() can get in).
  template <typename F>
  absl::Status Call(absl::string_view call, F f) {
    const absl::Time deadline = absl::Now() + options_.timeout;
    {
      absl::MutexLock lock(&mu_);
      if (comm_ == nullptr) return AbortedError(call);
      const ncclResult_t result = f(comm_);
      if (result != ncclInProgress) return NcclStatus(result, call);
    }
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (comm_ == nullptr) return AbortedError(call);
        ncclResult_t state = ncclSuccess;
        TESSERA_RETURN_IF_ERROR(
            NcclStatus(ncclCommGetAsyncError(comm_, &state), "ncclCommGetAsyncError"));
        if (state != ncclInProgress) return NcclStatus(state, call);
      }
      if (absl::Now() >= deadline) {
        Abort();
        return absl::DeadlineExceededError(
            absl::StrCat(call, ": still in progress after ", absl::FormatDuration(options_.timeout),
                         " on rank ", rank_, " of ", size_, "; the communicator was aborted"));
      }
      std::this_thread::yield();
    }
  }

  const int rank_;
  const int size_;
  const int device_;
  void* const scratch_;  // one int32 on the device, for Barrier
  const NcclCommunicatorOptions options_;
  absl::Mutex mu_;                        // serialises NCCL calls with Abort()
  ncclComm_t comm_ ABSL_GUARDED_BY(mu_);  // null once aborted
};

// Every rank of the group with the same id: the communicator, or why not.
absl::StatusOr<std::unique_ptr<Communicator>> InitRank(const ncclUniqueId& id, int rank, int size,
                                                       int device,
                                                       const NcclCommunicatorOptions& options) {
  void* scratch = nullptr;
  TESSERA_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&scratch, sizeof(int32_t)), "cudaMalloc"));
  ncclComm_t comm = nullptr;
  ncclConfig_t config = NonBlockingConfig();
  ncclResult_t result = ncclCommInitRankConfig(&comm, size, id, rank, &config);
  absl::Status ready = result == ncclInProgress
                           ? PollComm(comm, "ncclCommInitRankConfig", absl::Now() + options.timeout)
                           : NcclStatus(result, "ncclCommInitRankConfig");
  if (!ready.ok()) {
    if (comm != nullptr) ncclCommAbort(comm);
    cudaFree(scratch);
    return ready;
  }
  return std::unique_ptr<Communicator>(
      std::make_unique<NcclCommunicator>(comm, rank, size, device, scratch, options));
}

}  // namespace

int NcclDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    Store& store, absl::string_view key, int rank, int size, int device,
    NcclCommunicatorOptions options) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("CreateNcclCommunicator: rank ", rank, " of a group of ", size));
  }
  TESSERA_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "cudaSetDevice"));
  ncclUniqueId id;
  if (rank == 0) {
    TESSERA_RETURN_IF_ERROR(NcclStatus(ncclGetUniqueId(&id), "ncclGetUniqueId"));
    TESSERA_RETURN_IF_ERROR(
        store.Set(key, absl::string_view(reinterpret_cast<const char*>(&id), sizeof(id))));
  } else {
    TESSERA_ASSIGN_OR_RETURN(std::string bytes, store.Get(key, options.timeout));
    if (bytes.size() != sizeof(id)) {
      return absl::InvalidArgumentError(absl::StrCat("CreateNcclCommunicator: store key '", key,
                                                     "' holds ", bytes.size(),
                                                     " bytes, not an ncclUniqueId"));
    }
    std::memcpy(&id, bytes.data(), sizeof(id));
  }
  return InitRank(id, rank, size, device, options);
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicatorOver(
    Communicator& group, int device, NcclCommunicatorOptions options) {
  TESSERA_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "cudaSetDevice"));
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (group.rank() == 0) {
    TESSERA_RETURN_IF_ERROR(NcclStatus(ncclGetUniqueId(&id), "ncclGetUniqueId"));
  }
  // The id's bytes as i8 elements over the host group; its stream is the CPU's.
  CpuStream host;
  TESSERA_RETURN_IF_ERROR(group.Broadcast(
      MutableTensorView(&id, DataType::kI8, {static_cast<int64_t>(sizeof(id))}), 0, host));
  return InitRank(id, group.rank(), group.size(), device, options);
}

}  // namespace tessera::parallel
