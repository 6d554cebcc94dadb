// GlooCommunicator beyond the conformance suite: argument checks and the rendezvous (a rank that
// never arrives), and Abort() reaching the peers through the closed connections.
#include "parallel/comm/gloo/gloo_communicator.h"

#include <memory>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "common/stream.h"
#include "gtest/gtest.h"
#include "parallel/comm/inproc/in_memory_store.h"

namespace tessera::parallel {
namespace {

TEST(GlooCommunicatorTest, CreateRejectsBadRankSizeOrTimeout) {
  auto store = std::make_shared<InMemoryStore>();
  EXPECT_EQ(GlooCommunicator::Create(store, 2, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GlooCommunicator::Create(store, -1, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GlooCommunicator::Create(nullptr, 0, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  GlooCommunicatorOptions options;
  options.timeout = absl::ZeroDuration();
  EXPECT_EQ(GlooCommunicator::Create(store, 0, 2, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Gloo's own device lookup dereferences a failed name lookup (a segfault, seen with a pod whose
// hostname did not resolve): an address that does not resolve is an error naming it.
TEST(GlooCommunicatorTest, AHostThatDoesNotResolveIsAnErrorNotACrash) {
  auto store = std::make_shared<InMemoryStore>();
  GlooCommunicatorOptions options;
  options.hostname = "no-such-host.invalid";
  auto comm = GlooCommunicator::Create(store, 0, 1, options);
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kFailedPrecondition) << comm.status();
  EXPECT_NE(comm.status().message().find("'no-such-host.invalid' does not resolve"),
            absl::string_view::npos)
      << comm.status();
}

TEST(GlooCommunicatorTest, SingleRankGroupWorks) {
  auto store = std::make_shared<InMemoryStore>();
  auto comm = GlooCommunicator::Create(store, 0, 1);
  ASSERT_TRUE(comm.ok()) << comm.status();
  std::vector<float> data = {1.5f, -2.0f};
  MutableTensorView view(data.data(), DataType::kF32, {2});
  CpuStream stream;
  ASSERT_TRUE((*comm)->AllReduce(view, view, ReduceOp::kSum, stream).ok());
  EXPECT_EQ(data, (std::vector<float>{1.5f, -2.0f}));
  EXPECT_TRUE((*comm)->Barrier(stream).ok());
}

TEST(GlooCommunicatorTest, RankThatNeverArrivesIsDeadlineExceededNamingItsKey) {
  auto store = std::make_shared<InMemoryStore>();
  GlooCommunicatorOptions options;
  options.timeout = absl::Milliseconds(300);
  options.key_prefix = "replica7";
  const absl::Time start = absl::Now();
  auto comm = GlooCommunicator::Create(store, 0, 2, options);  // rank 1 never comes
  const absl::Duration waited = absl::Now() - start;
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();
  EXPECT_NE(comm.status().message().find("replica7/1"), absl::string_view::npos) << comm.status();
  EXPECT_LT(waited, absl::Seconds(5));
}

TEST(GlooCommunicatorTest, AbortedRankMakesItsPeerFailBeforeTheTimeout) {
  auto store = std::make_shared<InMemoryStore>();
  GlooCommunicatorOptions options;
  options.timeout = absl::Seconds(30);
  std::vector<std::unique_ptr<GlooCommunicator>> comms(2);
  std::vector<std::thread> threads;
  threads.reserve(2);
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      auto made = GlooCommunicator::Create(store, r, 2, options);
      ASSERT_TRUE(made.ok()) << made.status();
      comms[r] = std::move(*made);
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(comms[0] && comms[1]);
  comms[1]->Abort();
  CpuStream stream;
  const absl::Time start = absl::Now();
  const absl::Status status = comms[0]->Barrier(stream);
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << status;
  EXPECT_EQ(comms[1]->Barrier(stream).code(), absl::StatusCode::kAborted);
}

}  // namespace
}  // namespace tessera::parallel
