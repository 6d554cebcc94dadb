// Bandwidth of the UCX transport between two transports in one process (what UCX picks on this
// host), next to memcpy of the same sizes in the same run. Prints a table; asserts only that the
// bytes arrived (label perf: never asserted on time).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kvtransfer/ucx/ucx_transport.h"

namespace tessera::kvtransfer {
namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

TEST(UcxBandwidthTest, PrintsGigabytesPerSecondAgainstMemcpy) {
  constexpr uint64_t kMax = 256ull << 20;
  std::vector<uint8_t> src(kMax), dst(kMax, 0);  // outlives the transports below
  UcxTransportOptions options;
  options.base.name = "sender";
  auto sender = UcxTransport::Create(options);
  options.base.name = "receiver";
  auto receiver = UcxTransport::Create(options);
  ASSERT_TRUE(sender.ok() && receiver.ok());
  for (uint64_t i = 0; i < kMax; ++i) src[i] = static_cast<uint8_t>(i * 131 + 7);
  auto s = (*sender)->RegisterMemory(src.data(), kMax);
  auto d = (*receiver)->RegisterMemory(dst.data(), kMax);
  ASSERT_TRUE(s.ok() && d.ok());
  auto descriptor = (*receiver)->LocalDescriptor();
  ASSERT_TRUE(descriptor.ok());
  auto peer = (*sender)->Connect(*descriptor);
  ASSERT_TRUE(peer.ok()) << peer.status();

  std::printf("%10s %8s %12s %12s %14s\n", "size", "iters", "ucx GB/s", "memcpy GB/s",
              "ucx batch GB/s");
  for (uint64_t size = 64 << 10; size <= kMax; size *= 4) {
    const int iters =
        static_cast<int>(std::max<uint64_t>(2, std::min<uint64_t>(200, kMax * 2 / size)));
    // One transfer of one segment at a time: latency-bound for small sizes.
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) {
      auto transfer = (*sender)->Submit(*peer, {Segment{*s, 0, *d, 0, size, 1}});
      ASSERT_TRUE(transfer.ok());
      ASSERT_TRUE((*transfer)->Wait(absl::Seconds(120)).ok());
    }
    auto t1 = std::chrono::steady_clock::now();
    ASSERT_EQ(std::memcmp(src.data(), dst.data(), size), 0);
    const double ucx = static_cast<double>(size) * iters / Seconds(t0, t1) / 1e9;
    // The same bytes as one transfer of many segments (how the KV layer sends a layer).
    const uint64_t batch_segments = std::max<uint64_t>(1, kMax / size);
    std::vector<Segment> batch;
    for (uint64_t i = 0; i < batch_segments; ++i)
      batch.push_back({*s, i * size, *d, i * size, size, i});
    t0 = std::chrono::steady_clock::now();
    auto transfer = (*sender)->Submit(*peer, batch);
    ASSERT_TRUE(transfer.ok());
    ASSERT_TRUE((*transfer)->Wait(absl::Seconds(120)).ok());
    t1 = std::chrono::steady_clock::now();
    const double ucx_batch = static_cast<double>(size) * batch_segments / Seconds(t0, t1) / 1e9;
    // memcpy of the same size, same buffers.
    t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) {
      std::memcpy(dst.data(), src.data(), size);
      asm volatile("" : : "r"(dst.data()) : "memory");
    }
    t1 = std::chrono::steady_clock::now();
    const double mc = static_cast<double>(size) * iters / Seconds(t0, t1) / 1e9;
    std::printf("%7lu KiB %8d %12.2f %12.2f %14.2f\n", static_cast<unsigned long>(size >> 10),
                iters, ucx, mc, ucx_batch);
  }
  ASSERT_EQ(std::memcmp(src.data(), dst.data(), kMax), 0);
}

}  // namespace
}  // namespace tessera::kvtransfer
