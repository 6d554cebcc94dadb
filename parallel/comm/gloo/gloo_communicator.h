// GlooCommunicator: a Communicator over Gloo (libgloo, the library PyTorch uses for CPU
// collectives) and its TCP transport, for CPU tensors in processes that were not started by
// mpirun (Kubernetes LeaderWorkerSet pods, plain processes given their ranks). The ranks find each
// other through a parallel::Store (a GrpcStore to a StoreServer hosted by the replica's rank 0, or
// an in-memory store for threads): each rank publishes its TCP address under the group's key
// prefix and connects a full mesh.
//
// Ops complete before they return; the Stream is not used. Collectives: gloo::allreduce (ring),
// gloo::allgather, gloo::broadcast, gloo::barrier; ReduceScatter is an all-reduce into scratch of
// which each rank keeps its slice (twice the traffic of a ring reduce-scatter; Debian's gloo has no
// new-style reduce-scatter). f16/bf16 are reduced in f32 (as the MPI communicator does) with
// cpu_reduce, so every rank gets bit-identical results. Send/Recv use unbound buffers on one slot:
// they pair by peer and order, and Send waits until the peer posts the Recv. The peer's Recv must
// have the same size: gloo does not report a shorter message and rejects a longer one.
//
// Deadlines and failures: every gloo call runs on a thread of the communicator's own with gloo's
// timeout set to `options.timeout`, while the caller waits for it, for Abort(), or for the
// timeout plus a grace period, whichever comes first — so a call returns within that bound even if
// gloo does not. Gloo's exceptions never reach the caller: a timeout becomes kDeadlineExceeded, a
// lost connection kUnavailable, anything else kInternal, each naming the gloo call and this rank.
// After such an error the communicator is broken: every later call returns that error. Gloo may
// still write the recv buffer of a call that was abandoned (timed out or aborted) until gloo gives
// up at its own timeout: keep it alive, or end the process.
//
// Abort() (any thread) makes the call in progress return kAborted at once and every later call
// too, and closes this rank's connections so that peers fail at once (kUnavailable) instead of at
// their timeout. Split(): every rank publishes (color, key) in the store, reads everyone's within
// the timeout, then the ranks of each color build a new group under a derived key prefix; the
// child shares the store and the TCP device (shared_ptr) but is otherwise independent.
//
// Threads: drive one communicator from one thread. The destructor never waits for peers: it
// closes the connections and lets an abandoned gloo call finish on its detached thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "parallel/comm/communicator.h"
#include "parallel/comm/store.h"

namespace gloo::transport {
class Device;
}  // namespace gloo::transport

namespace tessera::parallel {

struct GlooCommunicatorOptions {
  // How long one op (and the rendezvous in Create/Split) waits for its peers.
  absl::Duration timeout = absl::Seconds(60);
  // Address this rank's TCP device binds and publishes to its peers: loopback on one machine, a
  // routable name or address across machines (a pod's IP or hostname). Empty: this machine's
  // hostname, resolved.
  std::string hostname = "127.0.0.1";
  // A network interface to bind instead (e.g. "eth0"); wins over `hostname` when set.
  std::string iface;
  // Namespace of the group's keys in the store; every rank of one group passes the same, and no
  // two groups alive at once share one.
  std::string key_prefix = "gloo";
};

class GlooCommunicator final : public Communicator {
 public:
  // Collective over the `size` ranks using `options.key_prefix` in `store`: builds the TCP device,
  // publishes this rank's addresses and connects to every peer. kDeadlineExceeded naming the
  // missing key when a rank does not arrive within the timeout; kInvalidArgument for a bad rank,
  // size or timeout; kUnavailable when the store or the network fails. `store` is shared with the
  // children of Split(). Ignores SIGPIPE process-wide (once): a peer that dies mid-send must
  // turn into an error on this rank, not kill the process with the signal.
  static absl::StatusOr<std::unique_ptr<GlooCommunicator>> Create(
      std::shared_ptr<Store> store, int rank, int size, GlooCommunicatorOptions options = {});
  ~GlooCommunicator() override;

  GlooCommunicator(const GlooCommunicator&) = delete;
  GlooCommunicator& operator=(const GlooCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::string_view backend() const override { return "gloo"; }

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

  const GlooCommunicatorOptions& options() const { return options_; }

 private:
  class Shared;  // gloo state shared with the op thread (see the .cc)

  GlooCommunicator(std::shared_ptr<Store> store, int rank, int size,
                   GlooCommunicatorOptions options, std::shared_ptr<Shared> shared);
  // Create() on an existing TCP device (Split's children share their parent's).
  static absl::StatusOr<std::unique_ptr<GlooCommunicator>> CreateOnDevice(
      std::shared_ptr<Store> store, int rank, int size, GlooCommunicatorOptions options,
      std::shared_ptr<gloo::transport::Device> device);
  // The rendezvous: connects to every peer through the store on `shared`'s thread and sets its
  // context.
  static absl::Status Connect(const std::shared_ptr<Shared>& shared,
                              const std::shared_ptr<Store>& store, int rank, int size,
                              const GlooCommunicatorOptions& options);

  // OK unless aborted or broken.
  absl::Status Usable() const;
  // Runs `gloo_call` on the op thread and waits as described above, converting what gloo
  // throws; any failure breaks the communicator. `gloo_call` must own (capture by value) all it
  // uses: it may outlive this call.
  absl::Status RunOp(const char* call, std::function<void()> gloo_call);
  // Sum/max/min of `count` elements of `dtype` (f32, i32 or i64) at `data`, in place;
  // `keep_alive` (scratch that `data` points into, or null) lives as long as the gloo call.
  absl::Status AllReduceInPlace(const char* call, DataType dtype, ReduceOp op, void* data,
                                int64_t count, std::shared_ptr<void> keep_alive);

  std::shared_ptr<Store> store_;  // shared with the children of Split()
  const int rank_;
  const int size_;
  const GlooCommunicatorOptions options_;
  std::shared_ptr<Shared> shared_;
  std::atomic<bool> aborted_{false};
  absl::Status broken_;  // owned by the driving thread
  int splits_ = 0;       // Split() calls so far: names each split's keys
};

}  // namespace tessera::parallel
