// Behaviour specific to the in-process communicator (the shared behaviour is in the conformance
// suite).
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "parallel/comm/inproc/in_process_communicator.h"
#include "tests/parallel/comm/test_status.h"

namespace tessera::parallel {
namespace {

TEST(InProcessCommunicatorTest, CreateRejectsBadArguments) {
  EXPECT_EQ(CreateInProcessGroup(0, absl::Seconds(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateInProcessGroup(2, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(InProcessCommunicatorTest, MismatchedCollectivesAreInvalidArgumentOnEveryRank) {
  auto group = CreateInProcessGroup(2, absl::Seconds(20));
  ASSERT_TRUE(group.ok()) << group.status();
  std::vector<float> a(8, 1.0f);
  std::vector<float> b(4, 1.0f);
  std::vector<absl::Status> results(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      CpuStream stream;
      std::vector<float>& data = r == 0 ? a : b;
      MutableTensorView view(data.data(), DataType::kF32, {static_cast<int64_t>(data.size())});
      results[r] = (*group)[r]->AllReduce(view, view, ReduceOp::kSum, stream);
      // The group is still usable.
      COMM_EXPECT_OK((*group)[r]->Barrier(stream));
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const absl::Status& status : results) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  }
  EXPECT_EQ(a, std::vector<float>(8, 1.0f));  // untouched
}

TEST(InProcessCommunicatorTest, DestroyedPeerFailsCollectivesAtOnce) {
  auto group = CreateInProcessGroup(2, absl::Seconds(30));
  ASSERT_TRUE(group.ok()) << group.status();
  (*group)[1].reset();
  CpuStream stream;
  const absl::Time start = absl::Now();
  COMM_EXPECT_CODE((*group)[0]->Barrier(stream), absl::StatusCode::kAborted);
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST(InProcessCommunicatorTest, SendIsBufferedAndRecvChecksTheSize) {
  auto group = CreateInProcessGroup(2, absl::Seconds(20));
  ASSERT_TRUE(group.ok()) << group.status();
  CpuStream stream;
  std::vector<int32_t> out = {1, 2, 3};
  std::vector<int32_t> in(3);
  std::vector<int32_t> small(2);
  TensorView out_view(out.data(), DataType::kI32, {3});
  // Both sends return before any Recv is posted (same thread).
  COMM_ASSERT_OK((*group)[0]->Send(out_view, 1, stream));
  COMM_ASSERT_OK((*group)[0]->Send(out_view, 1, stream));
  COMM_ASSERT_OK((*group)[1]->Recv(MutableTensorView(in.data(), DataType::kI32, {3}), 0, stream));
  EXPECT_EQ(in, out);
  COMM_EXPECT_CODE(
      (*group)[1]->Recv(MutableTensorView(small.data(), DataType::kI32, {2}), 0, stream),
      absl::StatusCode::kInvalidArgument);
}

TEST(InProcessCommunicatorTest, RecvWithoutSendTimesOut) {
  auto group = CreateInProcessGroup(2, absl::Milliseconds(100));
  ASSERT_TRUE(group.ok()) << group.status();
  CpuStream stream;
  int32_t value = 0;
  COMM_EXPECT_CODE((*group)[1]->Recv(MutableTensorView(&value, DataType::kI32, {1}), 0, stream),
                   absl::StatusCode::kDeadlineExceeded);
}

// InProcessGroupOptions::synchronous_sends: a Send returns once its Recv took the message (as
// NCCL's), in subgroups too; a Send nobody receives breaks the group after the timeout.
TEST(InProcessCommunicatorTest, SynchronousSendsWaitForTheirReceiver) {
  auto group = CreateInProcessGroup(
      2, InProcessGroupOptions{.timeout = absl::Seconds(20), .synchronous_sends = true});
  ASSERT_TRUE(group.ok()) << group.status();
  std::vector<std::unique_ptr<Communicator>> split(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      auto sub = (*group)[r]->Split(0, r);
      COMM_EXPECT_OK(sub.status());
      if (sub.ok()) split[r] = std::move(*sub);
    });
  }
  for (std::thread& thread : threads) thread.join();
  ASSERT_TRUE(split[0] && split[1]);
  for (Communicator* sender : {(*group)[0].get(), split[0].get()}) {
    Communicator* receiver = sender == split[0].get() ? split[1].get() : (*group)[1].get();
    std::atomic<bool> received{false};
    std::atomic<bool> sent{false};
    int32_t value = 7;
    std::thread send([&] {
      CpuStream stream;
      COMM_EXPECT_OK(sender->Send(TensorView(&value, DataType::kI32, {1}), 1, stream));
      sent = true;
      EXPECT_TRUE(received.load()) << "the Send returned before its Recv took the message";
    });
    absl::SleepFor(absl::Milliseconds(100));
    EXPECT_FALSE(sent.load());
    received = true;  // set before the Recv: the Send may return as soon as it takes the message
    int32_t got = 0;
    CpuStream stream;
    COMM_EXPECT_OK(receiver->Recv(MutableTensorView(&got, DataType::kI32, {1}), 0, stream));
    send.join();
    EXPECT_EQ(got, 7);
  }
}

TEST(InProcessCommunicatorTest, ASynchronousSendNobodyReceivesTimesOut) {
  auto group = CreateInProcessGroup(
      2, InProcessGroupOptions{.timeout = absl::Milliseconds(100), .synchronous_sends = true});
  ASSERT_TRUE(group.ok()) << group.status();
  CpuStream stream;
  int32_t value = 0;
  const absl::Status status = (*group)[0]->Send(TensorView(&value, DataType::kI32, {1}), 1, stream);
  COMM_EXPECT_CODE(status, absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(status.message().find("not received"), absl::string_view::npos) << status;
  // The group is broken for everyone, the receiver included.
  COMM_EXPECT_CODE((*group)[1]->Recv(MutableTensorView(&value, DataType::kI32, {1}), 0, stream),
                   absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace tessera::parallel
