// One conformance suite for every Communicator implementation. Each test body runs on every rank
// of a fresh group (see comm_test_harness.h) and checks that rank's results; values are chosen to
// be exact in every dtype, so results are compared for equality.
#include <cstdint>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "parallel/comm/communicator.h"
#include "tests/parallel/comm/comm_test_harness.h"
#include "tests/parallel/comm/test_status.h"

namespace tessera::parallel::testing {
namespace {

template <typename T>
MutableTensorView Upload(TestDevice& device, DataType dtype, const std::vector<T>& host,
                         Shape shape = {}) {
  void* data = device.Allocate(host.size() * sizeof(T));
  device.CopyToDevice(data, host.data(), host.size() * sizeof(T));
  if (shape.empty()) shape = {static_cast<int64_t>(host.size())};
  return MutableTensorView(data, dtype, std::move(shape), device.device());
}

template <typename T>
std::vector<T> Download(TestDevice& device, TensorView view) {
  std::vector<T> host(view.numel());
  device.CopyToHost(host.data(), view.data(), host.size() * sizeof(T));
  return host;
}

std::vector<uint16_t> ToBF16(const std::vector<float>& values) {
  std::vector<uint16_t> out;
  for (float v : values) out.push_back(F32ToBF16(v));
  return out;
}

std::vector<float> FromBF16(const std::vector<uint16_t>& values) {
  std::vector<float> out;
  for (uint16_t v : values) out.push_back(BF16ToF32(v));
  return out;
}

// A view in memory the communicator cannot use: CUDA for the CPU backends, CPU for NCCL.
MutableTensorView ForeignView(Communicator& comm, float* host) {
  const Device device = comm.backend() == "nccl" ? Device::Cpu() : Device::Cuda(0);
  return MutableTensorView(host, DataType::kF32, {1}, device);
}

class CommunicatorConformance : public ::testing::TestWithParam<std::string> {
 protected:
  void Run(const std::function<void(RankContext&)>& body, GroupOptions options = {}) {
    const absl::Status status = RunOnGroup(GetParam(), options, body);
    if (absl::IsUnavailable(status)) GTEST_SKIP() << status;
    ASSERT_TRUE(status.ok()) << status;
  }
};

constexpr int64_t kCount = 1001;  // not a multiple of the group size: uneven chunks

TEST_P(CommunicatorConformance, AllReduceSumsF32AcrossRanks) {
  Run([](RankContext& ctx) {
    const int n = ctx.comm.size();
    std::vector<float> mine(kCount);
    for (int64_t i = 0; i < kCount; ++i) mine[i] = ctx.comm.rank() + 0.5f * (i % 64);
    TestDevice& dev = ctx.device;
    auto send = Upload(dev, DataType::kF32, mine);
    auto recv = Upload(dev, DataType::kF32, std::vector<float>(kCount, -1.0f));
    COMM_ASSERT_OK(ctx.comm.AllReduce(send, recv, ReduceOp::kSum, dev.stream()));
    const std::vector<float> got = Download<float>(dev, recv);
    for (int64_t i = 0; i < kCount; ++i) {
      ASSERT_EQ(got[i], n * (n - 1) / 2.0f + n * 0.5f * (i % 64)) << "element " << i;
    }
  });
}

TEST_P(CommunicatorConformance, AllReduceMaxAndMinF32) {
  Run([](RankContext& ctx) {
    const int n = ctx.comm.size();
    const int r = ctx.comm.rank();
    // Element i peaks at rank i % n and bottoms at rank (i + 1) % n.
    std::vector<float> mine(kCount);
    for (int64_t i = 0; i < kCount; ++i) {
      mine[i] = r == i % n ? 100.0f : (r == (i + 1) % n ? -100.0f : static_cast<float>(r));
    }
    TestDevice& dev = ctx.device;
    auto send = Upload(dev, DataType::kF32, mine);
    auto max = Upload(dev, DataType::kF32, std::vector<float>(kCount));
    auto min = Upload(dev, DataType::kF32, std::vector<float>(kCount));
    COMM_ASSERT_OK(ctx.comm.AllReduce(send, max, ReduceOp::kMax, dev.stream()));
    COMM_ASSERT_OK(ctx.comm.AllReduce(send, min, ReduceOp::kMin, dev.stream()));
    const std::vector<float> got_max = Download<float>(dev, max);
    const std::vector<float> got_min = Download<float>(dev, min);
    for (int64_t i = 0; i < kCount; ++i) {
      ASSERT_EQ(got_max[i], 100.0f) << i;
      ASSERT_EQ(got_min[i], n == 1 ? 100.0f : -100.0f) << i;
    }
  });
}

TEST_P(CommunicatorConformance, AllReduceBF16AndF16AreExact) {
  Run([](RankContext& ctx) {
    const int n = ctx.comm.size();
    const int r = ctx.comm.rank();
    std::vector<float> mine(kCount);
    for (int64_t i = 0; i < kCount; ++i) mine[i] = static_cast<float>((r + 1) * (i % 8));
    TestDevice& dev = ctx.device;
    for (const DataType dtype : {DataType::kBF16, DataType::kF16}) {
      std::vector<uint16_t> bits;
      for (float v : mine) bits.push_back(dtype == DataType::kBF16 ? F32ToBF16(v) : F32ToF16(v));
      auto send = Upload(dev, dtype, bits);
      auto sum = Upload(dev, dtype, std::vector<uint16_t>(kCount));
      auto max = Upload(dev, dtype, std::vector<uint16_t>(kCount));
      COMM_ASSERT_OK(ctx.comm.AllReduce(send, sum, ReduceOp::kSum, dev.stream()));
      COMM_ASSERT_OK(ctx.comm.AllReduce(send, max, ReduceOp::kMax, dev.stream()));
      const std::vector<uint16_t> got_sum = Download<uint16_t>(dev, sum);
      const std::vector<uint16_t> got_max = Download<uint16_t>(dev, max);
      for (int64_t i = 0; i < kCount; ++i) {
        auto to_f32 = [dtype](uint16_t v) {
          return dtype == DataType::kBF16 ? BF16ToF32(v) : F16ToF32(v);
        };
        ASSERT_EQ(to_f32(got_sum[i]), n * (n + 1) / 2.0f * (i % 8))
            << DataTypeName(dtype) << " element " << i;
        ASSERT_EQ(to_f32(got_max[i]), static_cast<float>(n * (i % 8)))
            << DataTypeName(dtype) << " element " << i;
      }
    }
  });
}

TEST_P(CommunicatorConformance, AllReduceIntegers) {
  Run([](RankContext& ctx) {
    const int n = ctx.comm.size();
    const int r = ctx.comm.rank();
    TestDevice& dev = ctx.device;
    std::vector<int32_t> mine32(kCount);
    std::vector<int64_t> mine64(kCount);
    for (int64_t i = 0; i < kCount; ++i) {
      mine32[i] = static_cast<int32_t>(r * 1000 - i);
      mine64[i] = (int64_t{1} << 40) * (r + 1) + i;  // beyond 32 bits
    }
    auto send32 = Upload(dev, DataType::kI32, mine32);
    auto sum32 = Upload(dev, DataType::kI32, std::vector<int32_t>(kCount));
    auto max32 = Upload(dev, DataType::kI32, std::vector<int32_t>(kCount));
    auto min32 = Upload(dev, DataType::kI32, std::vector<int32_t>(kCount));
    auto send64 = Upload(dev, DataType::kI64, mine64);
    auto sum64 = Upload(dev, DataType::kI64, std::vector<int64_t>(kCount));
    COMM_ASSERT_OK(ctx.comm.AllReduce(send32, sum32, ReduceOp::kSum, dev.stream()));
    COMM_ASSERT_OK(ctx.comm.AllReduce(send32, max32, ReduceOp::kMax, dev.stream()));
    COMM_ASSERT_OK(ctx.comm.AllReduce(send32, min32, ReduceOp::kMin, dev.stream()));
    COMM_ASSERT_OK(ctx.comm.AllReduce(send64, sum64, ReduceOp::kSum, dev.stream()));
    const auto got_sum32 = Download<int32_t>(dev, sum32);
    const auto got_max32 = Download<int32_t>(dev, max32);
    const auto got_min32 = Download<int32_t>(dev, min32);
    const auto got_sum64 = Download<int64_t>(dev, sum64);
    for (int64_t i = 0; i < kCount; ++i) {
      ASSERT_EQ(got_sum32[i], 1000 * n * (n - 1) / 2 - n * i) << i;
      ASSERT_EQ(got_max32[i], (n - 1) * 1000 - i) << i;
      ASSERT_EQ(got_min32[i], -i) << i;
      ASSERT_EQ(got_sum64[i], (int64_t{1} << 40) * n * (n + 1) / 2 + n * i) << i;
    }
  });
}

TEST_P(CommunicatorConformance, AllReduceInPlace) {
  Run([](RankContext& ctx) {
    const int n = ctx.comm.size();
    TestDevice& dev = ctx.device;
    std::vector<float> mine(kCount);
    for (int64_t i = 0; i < kCount; ++i) mine[i] = static_cast<float>(ctx.comm.rank() + i);
    auto data = Upload(dev, DataType::kF32, mine);
    COMM_ASSERT_OK(ctx.comm.AllReduce(data, data, ReduceOp::kSum, dev.stream()));
    const std::vector<float> got = Download<float>(dev, data);
    for (int64_t i = 0; i < kCount; ++i) {
      ASSERT_EQ(got[i], n * (n - 1) / 2.0f + n * static_cast<float>(i)) << i;
    }
  });
}

TEST_P(CommunicatorConformance, AllReduceOfFewerElementsThanRanks) {
  Run([](RankContext& ctx) {
    TestDevice& dev = ctx.device;
    auto data = Upload(dev, DataType::kI64, std::vector<int64_t>{ctx.comm.rank() + 1});
    COMM_ASSERT_OK(ctx.comm.AllReduce(data, data, ReduceOp::kSum, dev.stream()));
    const int64_t n = ctx.comm.size();
    EXPECT_EQ(Download<int64_t>(dev, data)[0], n * (n + 1) / 2);
  });
}

TEST_P(CommunicatorConformance, AllGatherConcatenatesRowsInRankOrder) {
  Run([](RankContext& ctx) {
    const int n = ctx.comm.size();
    const int r = ctx.comm.rank();
    constexpr int64_t kRows = 3;
    constexpr int64_t kCols = 5;
    TestDevice& dev = ctx.device;
    std::vector<int32_t> mine(kRows * kCols);
    for (int64_t i = 0; i < kRows * kCols; ++i) mine[i] = static_cast<int32_t>(r * 100 + i);
    auto send = Upload(dev, DataType::kI32, mine, {kRows, kCols});
    auto recv = Upload(dev, DataType::kI32, std::vector<int32_t>(n * kRows * kCols, -1),
                       {n * kRows, kCols});
    COMM_ASSERT_OK(ctx.comm.AllGather(send, recv, dev.stream()));
    const auto got = Download<int32_t>(dev, recv);
    for (int peer = 0; peer < n; ++peer) {
      for (int64_t i = 0; i < kRows * kCols; ++i) {
        ASSERT_EQ(got[peer * kRows * kCols + i], peer * 100 + i) << "peer " << peer << " " << i;
      }
    }

    // In place: send is this rank's slice of recv.
    std::vector<int32_t> slots(n * kRows * kCols, -1);
    for (int64_t i = 0; i < kRows * kCols; ++i) slots[r * kRows * kCols + i] = mine[i];
    auto all = Upload(dev, DataType::kI32, slots, {n * kRows, kCols});
    COMM_ASSERT_OK(ctx.comm.AllGather(all.Rows(r * kRows, (r + 1) * kRows), all, dev.stream()));
    EXPECT_EQ(Download<int32_t>(dev, all), got);
  });
}

TEST_P(CommunicatorConformance, ReduceScatterGivesEachRankItsSlice) {
  Run([](RankContext& ctx) {
    const int n = ctx.comm.size();
    const int r = ctx.comm.rank();
    constexpr int64_t kPer = 7;
    TestDevice& dev = ctx.device;
    std::vector<float> mine(n * kPer);
    for (int64_t i = 0; i < n * kPer; ++i) mine[i] = static_cast<float>(i * (r + 1));
    auto send = Upload(dev, DataType::kF32, mine);
    auto recv = Upload(dev, DataType::kF32, std::vector<float>(kPer));
    COMM_ASSERT_OK(ctx.comm.ReduceScatter(send, recv, ReduceOp::kSum, dev.stream()));
    const auto got = Download<float>(dev, recv);
    const float ranks_sum = n * (n + 1) / 2.0f;
    for (int64_t i = 0; i < kPer; ++i) {
      ASSERT_EQ(got[i], static_cast<float>(r * kPer + i) * ranks_sum) << i;
    }

    // In place: recv is this rank's slice of send; bf16 goes through f32.
    auto data = Upload(dev, DataType::kBF16, ToBF16(mine));
    MutableTensorView slice = data.Rows(r * kPer, (r + 1) * kPer);
    COMM_ASSERT_OK(ctx.comm.ReduceScatter(data, slice, ReduceOp::kSum, dev.stream()));
    EXPECT_EQ(FromBF16(Download<uint16_t>(dev, slice)), got);
  });
}

TEST_P(CommunicatorConformance, BroadcastFromNonZeroRoot) {
  Run(
      [](RankContext& ctx) {
        const int root = 1;
        TestDevice& dev = ctx.device;
        std::vector<int64_t> mine(kCount, -1);
        if (ctx.comm.rank() == root) std::iota(mine.begin(), mine.end(), int64_t{42});
        auto data = Upload(dev, DataType::kI64, mine);
        COMM_ASSERT_OK(ctx.comm.Broadcast(data, root, dev.stream()));
        const auto got = Download<int64_t>(dev, data);
        for (int64_t i = 0; i < kCount; ++i) ASSERT_EQ(got[i], 42 + i) << i;
      },
      GroupOptions{.min_size = 2});
}

TEST_P(CommunicatorConformance, SendRecvAroundARing) {
  Run(
      [](RankContext& ctx) {
        const int n = ctx.comm.size();
        const int r = ctx.comm.rank();
        const int next = (r + 1) % n;
        const int prev = (r + n - 1) % n;
        TestDevice& dev = ctx.device;
        // Large enough that MPI uses its rendezvous protocol (Send waits for the Recv).
        constexpr int64_t kElements = 256 * 1024;
        auto send = Upload(dev, DataType::kI32, std::vector<int32_t>(kElements, r));
        auto recv = Upload(dev, DataType::kI32, std::vector<int32_t>(kElements, -1));
        // Even ranks send first and odd ranks receive first, so blocking sends pair up.
        if (r % 2 == 0) {
          COMM_ASSERT_OK(ctx.comm.Send(send, next, dev.stream()));
          COMM_ASSERT_OK(ctx.comm.Recv(recv, prev, dev.stream()));
        } else {
          COMM_ASSERT_OK(ctx.comm.Recv(recv, prev, dev.stream()));
          COMM_ASSERT_OK(ctx.comm.Send(send, next, dev.stream()));
        }
        const auto got = Download<int32_t>(dev, recv);
        for (int64_t i = 0; i < kElements; ++i) ASSERT_EQ(got[i], prev) << i;
      },
      GroupOptions{.min_size = 2});
}

TEST_P(CommunicatorConformance, BarrierReturnsOkOnEveryRank) {
  Run([](RankContext& ctx) {
    for (int i = 0; i < 10; ++i) COMM_ASSERT_OK(ctx.comm.Barrier(ctx.device.stream()));
    COMM_EXPECT_OK(ctx.comm.CheckAsyncError());
  });
}

TEST_P(CommunicatorConformance, SplitIntoTwoGroupsReducesWithinEach) {
  Run(
      [](RankContext& ctx) {
        const int n = ctx.comm.size();
        const int r = ctx.comm.rank();
        if (n % 2 != 0) GTEST_SKIP() << "needs an even group";
        // Parity picks the group; a descending key reverses the order inside it.
        auto half = ctx.comm.Split(/*color=*/r % 2, /*key=*/-r);
        ASSERT_TRUE(half.ok()) << half.status();
        ASSERT_NE(*half, nullptr);
        Communicator& sub = **half;
        EXPECT_EQ(sub.size(), n / 2);
        EXPECT_EQ(sub.rank(), (n / 2 - 1) - r / 2);
        TestDevice& dev = ctx.device;
        auto data = Upload(dev, DataType::kI32, std::vector<int32_t>{r});
        COMM_ASSERT_OK(sub.AllReduce(data, data, ReduceOp::kSum, dev.stream()));
        int32_t expected = 0;
        for (int peer = r % 2; peer < n; peer += 2) expected += peer;
        EXPECT_EQ(Download<int32_t>(dev, data)[0], expected);
        // The parent still works after the split.
        COMM_EXPECT_OK(ctx.comm.Barrier(dev.stream()));

        // A negative color leaves a rank out.
        auto odd_only = ctx.comm.Split(r % 2 == 1 ? 0 : -1, r);
        ASSERT_TRUE(odd_only.ok()) << odd_only.status();
        EXPECT_EQ(*odd_only == nullptr, r % 2 == 0);
        if (*odd_only != nullptr) {
          EXPECT_EQ((*odd_only)->size(), n / 2);
        }
      },
      GroupOptions{.min_size = 2});
}

TEST_P(CommunicatorConformance, RejectsInvalidArgumentsLocally) {
  Run([](RankContext& ctx) {
    TestDevice& dev = ctx.device;
    auto four = Upload(dev, DataType::kF32, std::vector<float>(4));
    auto five = Upload(dev, DataType::kF32, std::vector<float>(5));
    auto bytes = Upload(dev, DataType::kI8, std::vector<int8_t>(4));
    Stream& s = dev.stream();
    COMM_EXPECT_CODE(ctx.comm.AllReduce(four, five, ReduceOp::kSum, s),
                     absl::StatusCode::kInvalidArgument);
    COMM_EXPECT_CODE(ctx.comm.AllReduce(bytes, bytes, ReduceOp::kSum, s),
                     absl::StatusCode::kInvalidArgument);
    COMM_EXPECT_CODE(ctx.comm.AllGather(four, four, s), absl::StatusCode::kInvalidArgument);
    COMM_EXPECT_CODE(ctx.comm.Broadcast(four, ctx.comm.size(), s),
                     absl::StatusCode::kInvalidArgument);
    COMM_EXPECT_CODE(ctx.comm.Send(four, ctx.comm.rank(), s), absl::StatusCode::kInvalidArgument);
    COMM_EXPECT_CODE(ctx.comm.Recv(four, -1, s), absl::StatusCode::kInvalidArgument);
    float host = 0;
    MutableTensorView foreign = ForeignView(ctx.comm, &host);
    COMM_EXPECT_CODE(ctx.comm.AllReduce(foreign, foreign, ReduceOp::kSum, s),
                     absl::StatusCode::kInvalidArgument);
    // None of that reached the peers: the group still works.
    COMM_EXPECT_OK(ctx.comm.Barrier(s));
  });
}

TEST_P(CommunicatorConformance, AbortMakesEveryCallReturnAborted) {
  Run([](RankContext& ctx) {
    TestDevice& dev = ctx.device;
    auto data = Upload(dev, DataType::kF32, std::vector<float>(4, 1.0f));
    ctx.comm.Abort();
    COMM_EXPECT_CODE(ctx.comm.Barrier(dev.stream()), absl::StatusCode::kAborted);
    COMM_EXPECT_CODE(ctx.comm.AllReduce(data, data, ReduceOp::kSum, dev.stream()),
                     absl::StatusCode::kAborted);
    COMM_EXPECT_CODE(ctx.comm.CheckAsyncError(), absl::StatusCode::kAborted);
    ctx.comm.Abort();  // idempotent
    COMM_EXPECT_CODE(ctx.comm.Broadcast(data, 0, dev.stream()), absl::StatusCode::kAborted);
  });
}

TEST_P(CommunicatorConformance, AbortFromAnotherThreadWakesABlockedRank) {
  Run(
      [](RankContext& ctx) {
        TestDevice& dev = ctx.device;
        if (ctx.comm.rank() == 0) {
          // Rank 0 waits alone in Barrier until a second thread aborts it. Whether Abort()
          // lands before or during Barrier, the result is kAborted; the delay only makes
          // "during" the likely case.
          std::thread aborter([&ctx] {
            absl::SleepFor(absl::Milliseconds(50));
            ctx.comm.Abort();
          });
          const absl::Time start = absl::Now();
          COMM_EXPECT_CODE(ctx.comm.Barrier(dev.stream()), absl::StatusCode::kAborted);
          EXPECT_LT(absl::Now() - start, absl::Seconds(10));  // well before the 20 s timeout
          aborter.join();
        }
        COMM_ASSERT_OK(ctx.control.Barrier(dev.stream()));
        if (ctx.comm.backend() == "mpi" && ctx.comm.rank() != 0) {
          // Complete rank 0's abandoned MPI_Ibarrier so no request is left dangling.
          COMM_EXPECT_OK(ctx.comm.Barrier(dev.stream()));
        }
      },
      GroupOptions{.min_size = 2});
}

TEST_P(CommunicatorConformance, AbsentPeerIsDeadlineExceeded) {
  const absl::Duration timeout = absl::Milliseconds(300);
  Run(
      [timeout](RankContext& ctx) {
        TestDevice& dev = ctx.device;
        const int last = ctx.comm.size() - 1;
        if (ctx.comm.rank() != last) {
          const absl::Time start = absl::Now();
          const absl::Status status = ctx.comm.Barrier(dev.stream());
          const absl::Duration waited = absl::Now() - start;
          EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
          EXPECT_LT(waited, timeout + absl::Seconds(5)) << status;
          // The group is broken now: later calls fail at once too.
          EXPECT_FALSE(ctx.comm.Barrier(dev.stream()).ok());
          EXPECT_FALSE(ctx.comm.CheckAsyncError().ok());
        }
        COMM_ASSERT_OK(ctx.control.Barrier(dev.stream()));
        if (ctx.comm.backend() == "mpi" && ctx.comm.rank() == last) {
          // The late arrival completes the peers' abandoned MPI_Ibarrier (its own comm is fine).
          COMM_EXPECT_OK(ctx.comm.Barrier(dev.stream()));
        }
      },
      GroupOptions{.min_size = 2, .timeout = timeout});
}

INSTANTIATE_TEST_SUITE_P(All, CommunicatorConformance,
                         ::testing::Values("inproc", "mpi", "nccl", "gloo"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace tessera::parallel::testing
