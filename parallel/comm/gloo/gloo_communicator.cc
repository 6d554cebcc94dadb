#include "parallel/comm/gloo/gloo_communicator.h"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/net.h"
#include "common/status_macros.h"
#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/rendezvous/context.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/unbound_buffer.h"
#include "gloo/types.h"
#include "parallel/comm/cpu_reduce.h"
#include "parallel/comm/gloo/gloo_store.h"
#include "parallel/comm/validation.h"

namespace tessera::parallel {
namespace {

// Slot of all point-to-point traffic (gloo's collectives use prefixes 0x01..0x0f): messages between
// a pair on one slot arrive in order.
const uint64_t kPointToPointSlot = gloo::Slot::build(0x40, 0);

std::chrono::milliseconds Millis(absl::Duration d) {
  return std::chrono::milliseconds(std::max<int64_t>(1, absl::ToInt64Milliseconds(d)));
}

// How much longer than gloo's own timeout a caller waits for gloo to return.
absl::Duration Grace(absl::Duration timeout) { return absl::Seconds(2) + timeout / 10; }

bool IsHalf(DataType dtype) { return dtype == DataType::kF16 || dtype == DataType::kBF16; }

// A gloo exception as a status naming the call and the rank.
absl::Status FromGlooError(absl::string_view call, absl::string_view where, absl::Duration timeout,
                           absl::string_view what) {
  const std::string lower = absl::AsciiStrToLower(what);
  if (absl::StrContains(lower, "timed out") || absl::StrContains(lower, "timeout")) {
    return absl::DeadlineExceededError(
        absl::StrCat(call, ": not complete after ", absl::FormatDuration(timeout), " on ", where,
                     ": at least one peer did not take part (gloo: ", what, ")"));
  }
  if (absl::StrContains(lower, "connection") || absl::StrContains(lower, "socket") ||
      absl::StrContains(lower, "connect") || absl::StrContains(lower, "read error") ||
      absl::StrContains(lower, "writev")) {
    return absl::UnavailableError(
        absl::StrCat(call, ": on ", where, ": lost a peer (gloo: ", what, ")"));
  }
  return absl::InternalError(absl::StrCat(call, ": on ", where, ": gloo: ", what));
}

// Runs `fn`, turning whatever gloo throws into a status.
absl::Status CatchGloo(absl::string_view call, absl::string_view where, absl::Duration timeout,
                       const std::function<void()>& fn) {
  try {
    fn();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return FromGlooError(call, where, timeout, e.what());
  } catch (...) {
    return absl::InternalError(absl::StrCat(call, ": on ", where, ": unknown exception"));
  }
}

void SetReduce(gloo::AllreduceOptions& opts, DataType dtype, ReduceOp op) {
  opts.setReduceFunction([dtype, op](void* out, const void* a, const void* b, size_t n) {
    const void* srcs[2] = {a, b};
    ReduceCpu(dtype, op, srcs, out, static_cast<int64_t>(n));
  });
}

}  // namespace

// The gloo context and the thread that makes every gloo call. Shared (shared_ptr) by the
// communicator and that thread: a call abandoned after a timeout or an abort keeps the context
// (and the scratch its job holds) alive on the detached thread until gloo returns.
class GlooCommunicator::Shared {
 public:
  enum class Outcome { kDone, kAborted, kTimedOut };

  static std::shared_ptr<Shared> Start(std::shared_ptr<gloo::transport::Device> device) {
    auto shared = std::make_shared<Shared>();
    shared->device = std::move(device);
    shared->thread_ = std::thread([shared] { shared->Loop(); });
    return shared;
  }

  // Hands `job` to the thread and waits for it, for `aborted`, or for `deadline`.
  Outcome Run(std::function<absl::Status()> job, absl::Time deadline,
              const std::atomic<bool>& aborted, absl::Status* result) {
    absl::MutexLock lock(&mu_);
    if (completed_ != submitted_) {
      *result = absl::FailedPreconditionError("a previous gloo call has not returned");
      return Outcome::kDone;
    }
    job_ = std::move(job);
    const uint64_t ticket = ++submitted_;
    cv_.SignalAll();
    while (completed_ < ticket) {
      if (aborted.load(std::memory_order_relaxed)) return Outcome::kAborted;
      if (cv_.WaitWithDeadline(&mu_, deadline) && completed_ < ticket) {
        return aborted.load(std::memory_order_relaxed) ? Outcome::kAborted : Outcome::kTimedOut;
      }
    }
    *result = result_;
    return Outcome::kDone;
  }

  // Wakes a caller of Run() (after Abort()).
  void Wake() {
    absl::MutexLock lock(&mu_);
    cv_.SignalAll();
  }

  // Ends the thread: joins it when idle, else lets it finish its gloo call on its own.
  void Stop() {
    bool idle = false;
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
      idle = completed_ == submitted_;
      cv_.SignalAll();
    }
    if (idle) {
      thread_.join();
    } else {
      thread_.detach();
    }
  }

  std::shared_ptr<gloo::transport::Device> device;
  // Set by the connect job before the communicator exists; constant afterwards.
  std::shared_ptr<gloo::Context> context;

 private:
  void Loop() {
    absl::MutexLock lock(&mu_);
    for (;;) {
      while (!stop_ && !job_) cv_.Wait(&mu_);
      if (!job_) return;
      std::function<absl::Status()> job = std::move(job_);
      job_ = nullptr;
      mu_.Unlock();
      absl::Status status;
      try {  // a thread entry point: nothing may escape
        status = job();
      } catch (...) {
        status = absl::InternalError("gloo call threw");
      }
      job = nullptr;  // releases what the job holds before the caller can be told
      mu_.Lock();
      result_ = std::move(status);
      ++completed_;
      cv_.SignalAll();
    }
  }

  absl::Mutex mu_;
  absl::CondVar cv_;
  std::function<absl::Status()> job_ ABSL_GUARDED_BY(mu_);
  uint64_t submitted_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t completed_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status result_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

absl::StatusOr<std::unique_ptr<GlooCommunicator>> GlooCommunicator::Create(
    std::shared_ptr<Store> store, int rank, int size, GlooCommunicatorOptions options) {
  if (store == nullptr) return absl::InvalidArgumentError("GlooCommunicator::Create: no store");
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("GlooCommunicator::Create: rank ", rank, " of a group of ", size));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("GlooCommunicator::Create: timeout must be positive");
  }
  // Gloo's TCP transport can write to a peer's socket after the peer went away (seen here as a
  // SIGPIPE that killed a test when its peer aborted): ignored, the write fails and the op errs.
  static std::once_flag ignore_sigpipe;
  std::call_once(ignore_sigpipe, [] { std::signal(SIGPIPE, SIG_IGN); });
  gloo::transport::tcp::attr attr;
  if (!options.iface.empty()) {
    attr.iface = options.iface;
  } else {
    // Gloo's own lookup does this too, but reads an unset result when the lookup fails
    // transiently (EAI_AGAIN: a segfault, seen with a hostname no resolver knew).
    absl::StatusOr<std::string> address = BindableAddress(options.hostname);
    if (!address.ok()) {
      return absl::Status(
          address.status().code(),
          absl::StrCat("GlooCommunicator::Create: rank ", rank, ": ", address.status().message(),
                       " (give an address its peers can dial: --comm-host)"));
    }
    attr.hostname = *address;
  }
  std::shared_ptr<gloo::transport::Device> device;
  TESSERA_RETURN_IF_ERROR(
      CatchGloo("gloo::transport::tcp::CreateDevice",
                absl::StrCat("rank ", rank, " (", options.iface.empty() ? "host '" : "interface '",
                             options.iface.empty() ? options.hostname : options.iface, "')"),
                options.timeout, [&] { device = gloo::transport::tcp::CreateDevice(attr); }));
  return CreateOnDevice(std::move(store), rank, size, std::move(options), std::move(device));
}

absl::StatusOr<std::unique_ptr<GlooCommunicator>> GlooCommunicator::CreateOnDevice(
    std::shared_ptr<Store> store, int rank, int size, GlooCommunicatorOptions options,
    std::shared_ptr<gloo::transport::Device> device) {
  std::shared_ptr<Shared> shared = Shared::Start(std::move(device));
  absl::Status connected = Connect(shared, store, rank, size, options);
  if (!connected.ok()) {
    shared->Stop();
    return connected;
  }
  return std::unique_ptr<GlooCommunicator>(
      new GlooCommunicator(std::move(store), rank, size, std::move(options), std::move(shared)));
}

absl::Status GlooCommunicator::Connect(const std::shared_ptr<Shared>& shared,
                                       const std::shared_ptr<Store>& store, int rank, int size,
                                       const GlooCommunicatorOptions& options) {
  Shared* raw = shared.get();  // the job runs on raw's own thread
  const std::string where = absl::StrCat("rank ", rank, " of ", size);
  auto job = [raw, store, rank, size, options, where]() -> absl::Status {
    auto context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    context->setTimeout(Millis(options.timeout));
    GlooStoreAdapter adapter(*store, options.key_prefix, options.timeout);
    std::shared_ptr<gloo::transport::Device> device = raw->device;
    absl::Status status =
        CatchGloo("gloo::rendezvous::Context::connectFullMesh", where, options.timeout,
                  [&] { context->connectFullMesh(adapter, device); });
    if (!adapter.status().ok()) {
      // The store's error names the key: rank r publishes its addresses under "<prefix>/r".
      return absl::Status(
          adapter.status().code(),
          absl::StrCat("GlooCommunicator::Create: ", where,
                       ": waiting for the peers' addresses "
                       "(key '",
                       options.key_prefix, "/R' is rank R's): ", adapter.status().message()));
    }
    if (!status.ok()) return status;
    // A rank's connectFullMesh can return while a peer still reads its side of the handshake;
    // were this rank to close its pairs at once (a communicator made and dropped, a rank that
    // leaves), that peer would fail with "connection closed by peer". A barrier on the new mesh
    // makes creation collective, as ncclCommInitRank is: every rank returns with every pair up.
    status = CatchGloo("gloo::barrier (after connectFullMesh)", where, options.timeout, [&] {
      gloo::BarrierOptions barrier(context);
      barrier.setTimeout(Millis(options.timeout));
      gloo::barrier(barrier);
    });
    if (!status.ok()) return status;
    raw->context = std::move(context);
    return absl::OkStatus();
  };
  absl::Status result;
  const std::atomic<bool> never_aborted{false};
  const auto outcome = shared->Run(job, absl::Now() + options.timeout + Grace(options.timeout),
                                   never_aborted, &result);
  if (outcome != Shared::Outcome::kDone) {
    return absl::DeadlineExceededError(absl::StrCat(
        "GlooCommunicator::Create: ", where, ": the rendezvous under '", options.key_prefix,
        "' did not complete within ", absl::FormatDuration(options.timeout)));
  }
  return result;
}

GlooCommunicator::GlooCommunicator(std::shared_ptr<Store> store, int rank, int size,
                                   GlooCommunicatorOptions options, std::shared_ptr<Shared> shared)
    : store_(std::move(store)),
      rank_(rank),
      size_(size),
      options_(std::move(options)),
      shared_(std::move(shared)) {}

GlooCommunicator::~GlooCommunicator() {
  // A graceful close when the context goes (data already sent still arrives); Abort() is the
  // hard one.
  shared_->Stop();
}

absl::Status GlooCommunicator::Usable() const {
  if (aborted_.load(std::memory_order_relaxed)) {
    return absl::AbortedError(absl::StrCat("gloo communicator of rank ", rank_, " was aborted"));
  }
  return broken_;
}

absl::Status GlooCommunicator::CheckAsyncError() { return Usable(); }

void GlooCommunicator::Abort() {
  if (aborted_.exchange(true)) return;
  shared_->Wake();
  // Peers blocked on this rank see the connections reset instead of waiting for their timeout.
  try {
    shared_->context->closeConnections();
  } catch (...) {  // NOLINT(bugprone-empty-catch): closing is best effort
  }
}

absl::Status GlooCommunicator::RunOp(const char* call, std::function<void()> gloo_call) {
  const std::string where = absl::StrCat("rank ", rank_, " of ", size_);
  const absl::Duration timeout = options_.timeout;
  auto job = [call, where, timeout, gloo_call = std::move(gloo_call)] {
    return CatchGloo(call, where, timeout, gloo_call);
  };
  absl::Status result;
  switch (shared_->Run(std::move(job), absl::Now() + timeout + Grace(timeout), aborted_, &result)) {
    case Shared::Outcome::kDone:
      if (!result.ok() && broken_.ok()) {
        broken_ = aborted_.load(std::memory_order_relaxed)
                      ? absl::AbortedError(absl::StrCat(call, ": rank ", rank_, " was aborted"))
                      : result;
      }
      return aborted_.load(std::memory_order_relaxed) ? Usable() : result;
    case Shared::Outcome::kAborted:
      return absl::AbortedError(
          absl::StrCat(call, ": communicator of rank ", rank_, " aborted while waiting"));
    case Shared::Outcome::kTimedOut:
      break;
  }
  absl::Status error = absl::DeadlineExceededError(
      absl::StrCat(call, ": not complete after ", absl::FormatDuration(timeout), " on ", where,
                   ": gloo did not return (a peer did not take part)"));
  if (broken_.ok()) broken_ = error;
  return error;
}

absl::Status GlooCommunicator::AllReduceInPlace(const char* call, DataType dtype, ReduceOp op,
                                                void* data, int64_t count,
                                                std::shared_ptr<void> keep_alive) {
  std::shared_ptr<gloo::Context> context = shared_->context;
  const std::chrono::milliseconds timeout = Millis(options_.timeout);
  return RunOp(call,
               [context, timeout, dtype, op, data, count, keep_alive = std::move(keep_alive)] {
                 gloo::AllreduceOptions opts(context);
                 opts.setTimeout(timeout);
                 opts.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
                 const auto n = static_cast<size_t>(count);
                 switch (dtype) {
                   case DataType::kI32:
                     opts.setOutput(static_cast<int32_t*>(data), n);
                     break;
                   case DataType::kI64:
                     opts.setOutput(static_cast<int64_t*>(data), n);
                     break;
                   default:  // f32, and f16/bf16 once converted
                     opts.setOutput(static_cast<float*>(data), n);
                     break;
                 }
                 SetReduce(opts, IsHalf(dtype) ? DataType::kF32 : dtype, op);
                 gloo::allreduce(opts);
               });
}

absl::Status GlooCommunicator::AllReduce(TensorView send, MutableTensorView recv, ReduceOp op,
                                         Stream& stream) {
  TESSERA_RETURN_IF_ERROR(Usable());
  TESSERA_RETURN_IF_ERROR(ValidateAllReduce(send, recv, DeviceType::kCpu));
  const int64_t count = send.numel();
  if (count == 0) return absl::OkStatus();
  if (IsHalf(send.dtype())) {
    auto values = std::make_shared<std::vector<float>>(count);
    ConvertToF32(send.dtype(), send.data(), values->data(), count);
    TESSERA_RETURN_IF_ERROR(
        AllReduceInPlace("gloo::allreduce", DataType::kF32, op, values->data(), count, values));
    ConvertFromF32(values->data(), recv.dtype(), recv.data(), count);
    return absl::OkStatus();
  }
  if (send.data() != recv.data()) std::memcpy(recv.data(), send.data(), send.nbytes());
  return AllReduceInPlace("gloo::allreduce", send.dtype(), op, recv.data(), count, nullptr);
}

absl::Status GlooCommunicator::AllGather(TensorView send, MutableTensorView recv, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(Usable());
  TESSERA_RETURN_IF_ERROR(ValidateAllGather(send, recv, rank_, size_, DeviceType::kCpu));
  const size_t bytes = send.nbytes();
  if (bytes == 0) return absl::OkStatus();
  char* out = static_cast<char*>(recv.data());
  // NCCL's in-place layout (send is this rank's slice of recv) is gloo's "no input".
  char* in = send.data() == out + rank_ * bytes
                 ? nullptr
                 : const_cast<char*>(static_cast<const char*>(send.data()));
  std::shared_ptr<gloo::Context> context = shared_->context;
  const std::chrono::milliseconds timeout = Millis(options_.timeout);
  const int size = size_;
  return RunOp("gloo::allgather", [context, timeout, in, out, bytes, size] {
    gloo::AllgatherOptions opts(context);
    opts.setTimeout(timeout);
    if (in != nullptr) opts.setInput(in, bytes);
    opts.setOutput(out, bytes * size);
    gloo::allgather(opts);
  });
}

absl::Status GlooCommunicator::ReduceScatter(TensorView send, MutableTensorView recv, ReduceOp op,
                                             Stream& stream) {
  TESSERA_RETURN_IF_ERROR(Usable());
  TESSERA_RETURN_IF_ERROR(ValidateReduceScatter(send, recv, rank_, size_, DeviceType::kCpu));
  const int64_t count = recv.numel();
  if (count == 0) return absl::OkStatus();
  const int64_t total = send.numel();
  // All-reduce a copy of send (so any in-place layout is fine), keep this rank's slice.
  if (IsHalf(send.dtype())) {
    auto values = std::make_shared<std::vector<float>>(total);
    ConvertToF32(send.dtype(), send.data(), values->data(), total);
    TESSERA_RETURN_IF_ERROR(AllReduceInPlace("gloo::allreduce (ReduceScatter)", DataType::kF32, op,
                                             values->data(), total, values));
    ConvertFromF32(values->data() + rank_ * count, recv.dtype(), recv.data(), count);
    return absl::OkStatus();
  }
  // operator new aligns the copy for every reducible dtype.
  auto copy = std::make_shared<std::vector<char>>(
      static_cast<const char*>(send.data()), static_cast<const char*>(send.data()) + send.nbytes());
  TESSERA_RETURN_IF_ERROR(AllReduceInPlace("gloo::allreduce (ReduceScatter)", send.dtype(), op,
                                           copy->data(), total, copy));
  std::memcpy(recv.data(), copy->data() + rank_ * recv.nbytes(), recv.nbytes());
  return absl::OkStatus();
}

absl::Status GlooCommunicator::Broadcast(MutableTensorView data, int root, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(Usable());
  TESSERA_RETURN_IF_ERROR(ValidateBroadcast(data, root, size_, DeviceType::kCpu));
  const size_t bytes = data.nbytes();
  if (bytes == 0) return absl::OkStatus();
  std::shared_ptr<gloo::Context> context = shared_->context;
  const std::chrono::milliseconds timeout = Millis(options_.timeout);
  char* ptr = static_cast<char*>(data.data());
  return RunOp("gloo::broadcast", [context, timeout, ptr, bytes, root] {
    gloo::BroadcastOptions opts(context);
    opts.setTimeout(timeout);
    opts.setRoot(root);
    opts.setOutput(ptr, bytes);
    gloo::broadcast(opts);
  });
}

absl::Status GlooCommunicator::Send(TensorView data, int peer, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(Usable());
  TESSERA_RETURN_IF_ERROR(ValidatePointToPoint("Send", data, peer, rank_, size_, DeviceType::kCpu));
  std::shared_ptr<gloo::Context> context = shared_->context;
  const std::chrono::milliseconds timeout = Millis(options_.timeout);
  void* ptr = const_cast<void*>(data.data());
  const size_t bytes = data.nbytes();
  return RunOp("gloo UnboundBuffer::send", [context, timeout, ptr, bytes, peer] {
    auto buffer = context->createUnboundBuffer(ptr, bytes);
    buffer->send(peer, kPointToPointSlot);
    if (!buffer->waitSend(timeout)) throw gloo::IoException("send aborted");
  });
}

absl::Status GlooCommunicator::Recv(MutableTensorView data, int peer, Stream& stream) {
  TESSERA_RETURN_IF_ERROR(Usable());
  TESSERA_RETURN_IF_ERROR(ValidatePointToPoint("Recv", data, peer, rank_, size_, DeviceType::kCpu));
  std::shared_ptr<gloo::Context> context = shared_->context;
  const std::chrono::milliseconds timeout = Millis(options_.timeout);
  void* ptr = data.data();
  const size_t bytes = data.nbytes();
  return RunOp("gloo UnboundBuffer::recv", [context, timeout, ptr, bytes, peer] {
    auto buffer = context->createUnboundBuffer(ptr, bytes);
    buffer->recv(peer, kPointToPointSlot);
    if (!buffer->waitRecv(timeout)) throw gloo::IoException("recv aborted");
  });
}

absl::Status GlooCommunicator::Barrier(Stream& stream) {
  TESSERA_RETURN_IF_ERROR(Usable());
  std::shared_ptr<gloo::Context> context = shared_->context;
  const std::chrono::milliseconds timeout = Millis(options_.timeout);
  return RunOp("gloo::barrier", [context, timeout] {
    gloo::BarrierOptions opts(context);
    opts.setTimeout(timeout);
    gloo::barrier(opts);
  });
}

absl::StatusOr<std::unique_ptr<Communicator>> GlooCommunicator::Split(int color, int key) {
  TESSERA_RETURN_IF_ERROR(Usable());
  const std::string base = absl::StrCat(options_.key_prefix, "/split", splits_++);
  const absl::Time deadline = absl::Now() + options_.timeout;
  absl::Status status =
      store_->Set(absl::StrCat(base, "/rank", rank_), absl::StrCat(color, ",", key));
  // (color, key, old rank) of every rank; a rank that does not arrive ends the wait at the
  // deadline.
  std::vector<std::tuple<int, int, int>> members;
  for (int r = 0; r < size_ && status.ok(); ++r) {
    absl::StatusOr<std::string> value = store_->Get(
        absl::StrCat(base, "/rank", r), std::max(deadline - absl::Now(), absl::ZeroDuration()));
    if (!value.ok()) {
      status = absl::Status(value.status().code(),
                            absl::StrCat("GlooCommunicator::Split: rank ", rank_, " of ", size_,
                                         ": waiting for rank ", r, ": ", value.status().message()));
      break;
    }
    std::pair<std::string, std::string> parts = absl::StrSplit(*value, ',');
    int their_color = 0;
    int their_key = 0;
    if (!absl::SimpleAtoi(parts.first, &their_color) ||
        !absl::SimpleAtoi(parts.second, &their_key)) {
      status = absl::InternalError(
          absl::StrCat("GlooCommunicator::Split: rank ", r, " published '", *value, "'"));
      break;
    }
    if (their_color == color) members.emplace_back(their_key, r, their_color);
  }
  if (!status.ok()) {
    if (broken_.ok()) broken_ = status;  // the ranks are out of step now
    return status;
  }
  if (color < 0) return std::unique_ptr<Communicator>();
  std::sort(members.begin(), members.end());  // by key, then old rank
  int new_rank = 0;
  while (std::get<1>(members[new_rank]) != rank_) ++new_rank;
  GlooCommunicatorOptions child = options_;
  child.key_prefix = absl::StrCat(base, "/color", color);
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<GlooCommunicator> communicator,
                           CreateOnDevice(store_, new_rank, static_cast<int>(members.size()),
                                          std::move(child), shared_->device));
  return std::unique_ptr<Communicator>(std::move(communicator));
}

}  // namespace tessera::parallel
