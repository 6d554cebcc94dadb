#include "parallel/comm/timed_communicator.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "parallel/comm/inproc/in_process_communicator.h"

namespace tessera::parallel {
namespace {

TEST(TimedCommunicatorTest, CountsCallsAndBytesAcrossSplitGroups) {
  auto group = CreateInProcessGroup(2, absl::Seconds(10));
  ASSERT_TRUE(group.ok()) << group.status();
  CommStats stats;
  std::vector<absl::Status> status(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      // Only rank 0 is timed, as the leader is in a benchmark.
      std::unique_ptr<Communicator> timed;
      Communicator* comm = (*group)[r].get();
      if (r == 0) {
        timed = std::make_unique<TimedCommunicator>(*comm, stats);
        comm = timed.get();
      }
      CpuStream stream;
      float data[4] = {1, 2, 3, 4};
      MutableTensorView view(data, DataType::kF32, {4});
      status[r] = comm->AllReduce(view, view, ReduceOp::kSum, stream);
      auto child = comm->Split(0, r);
      if (!child.ok()) {
        status[r] = child.status();
        return;
      }
      status[r].Update((*child)->Broadcast(view, 0, stream));
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_TRUE(status[0].ok()) << status[0];
  ASSERT_TRUE(status[1].ok()) << status[1];
  EXPECT_EQ(stats.calls.load(), 2);  // the all-reduce, and the broadcast on the split child
  EXPECT_EQ(stats.bytes.load(), 2 * 4 * static_cast<int64_t>(sizeof(float)));
  EXPECT_GT(stats.nanos.load(), 0);
}

}  // namespace
}  // namespace tessera::parallel
