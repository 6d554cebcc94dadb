// A Communicator decorator that measures the wall time spent inside each call (enqueue to
// return: on the CPU implementations that is the whole operation, waiting for peers included;
// on NCCL only the enqueue) and counts bytes sent. Groups made by Split are timed into the same
// CommStats. For benchmarks and metrics ("share of a step spent communicating").
#pragma once

#include <atomic>
#include <memory>

#include "parallel/comm/communicator.h"

namespace tessera::parallel {

// Totals over every communicator that shares it. Thread-safe.
struct CommStats {
  std::atomic<int64_t> nanos{0};
  std::atomic<int64_t> calls{0};
  std::atomic<int64_t> bytes{0};
  double seconds() const { return static_cast<double>(nanos.load()) * 1e-9; }
  void Reset() {
    nanos = 0;
    calls = 0;
    bytes = 0;
  }
};

class TimedCommunicator final : public Communicator {
 public:
  // Takes ownership of `base` (a communicator made by Split); `stats` must outlive this.
  TimedCommunicator(std::unique_ptr<Communicator> base, CommStats& stats)
      : owned_(std::move(base)), base_(*owned_), stats_(stats) {}
  // Wraps `base` without owning it.
  TimedCommunicator(Communicator& base, CommStats& stats) : base_(base), stats_(stats) {}

  int rank() const override { return base_.rank(); }
  int size() const override { return base_.size(); }
  absl::string_view backend() const override { return base_.backend(); }
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
  absl::Status CheckAsyncError() override { return base_.CheckAsyncError(); }
  void Abort() override { base_.Abort(); }

 private:
  template <typename F>
  absl::Status Timed(size_t bytes, F&& call);

  std::unique_ptr<Communicator> owned_;
  Communicator& base_;
  CommStats& stats_;
};

}  // namespace tessera::parallel
