#include "parallel/comm/timed_communicator.h"

#include <chrono>

namespace tessera::parallel {

template <typename F>
absl::Status TimedCommunicator::Timed(size_t bytes, F&& call) {
  const auto start = std::chrono::steady_clock::now();
  absl::Status status = call();
  const auto elapsed = std::chrono::steady_clock::now() - start;
  stats_.nanos += std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count();
  stats_.calls += 1;
  stats_.bytes += static_cast<int64_t>(bytes);
  return status;
}

absl::Status TimedCommunicator::AllReduce(TensorView send, MutableTensorView recv, ReduceOp op,
                                          Stream& stream) {
  return Timed(send.nbytes(), [&] { return base_.AllReduce(send, recv, op, stream); });
}

absl::Status TimedCommunicator::AllGather(TensorView send, MutableTensorView recv, Stream& stream) {
  return Timed(send.nbytes(), [&] { return base_.AllGather(send, recv, stream); });
}

absl::Status TimedCommunicator::ReduceScatter(TensorView send, MutableTensorView recv, ReduceOp op,
                                              Stream& stream) {
  return Timed(send.nbytes(), [&] { return base_.ReduceScatter(send, recv, op, stream); });
}

absl::Status TimedCommunicator::Broadcast(MutableTensorView data, int root, Stream& stream) {
  return Timed(data.nbytes(), [&] { return base_.Broadcast(data, root, stream); });
}

absl::Status TimedCommunicator::Send(TensorView data, int peer, Stream& stream) {
  return Timed(data.nbytes(), [&] { return base_.Send(data, peer, stream); });
}

absl::Status TimedCommunicator::Recv(MutableTensorView data, int peer, Stream& stream) {
  return Timed(0, [&] { return base_.Recv(data, peer, stream); });
}

absl::Status TimedCommunicator::Barrier(Stream& stream) {
  return Timed(0, [&] { return base_.Barrier(stream); });
}

absl::StatusOr<std::unique_ptr<Communicator>> TimedCommunicator::Split(int color, int key) {
  absl::StatusOr<std::unique_ptr<Communicator>> child = base_.Split(color, key);
  if (!child.ok() || *child == nullptr) return child;
  return std::unique_ptr<Communicator>(new TimedCommunicator(*std::move(child), stats_));
}

}  // namespace tessera::parallel
