// The conformance suite over InProcessTransport, plus its own behaviours.
#include <cstdint>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kvtransfer/inproc/in_process_transport.h"
#include "tests/kvtransfer/transport_conformance.h"

namespace tessera::kvtransfer {
namespace {

using testing::TransportConformanceTest;
using testing::TransportFactory;

TransportFactory InProcessFactory() {
  // One fabric shared by every transport the suite creates.
  auto fabric = InProcessFabric::Create();
  return TransportFactory{
      "inproc",
      [fabric](const TransportOptions& options) -> absl::StatusOr<std::unique_ptr<Transport>> {
        auto transport = InProcessTransport::Create(fabric, options);
        if (!transport.ok()) return transport.status();
        return std::unique_ptr<Transport>(*std::move(transport));
      }};
}

INSTANTIATE_TEST_SUITE_P(InProcess, TransportConformanceTest, ::testing::Values(InProcessFactory()),
                         testing::TransportFactoryName);

TEST(InProcessTransportTest, CreateRejectsANullFabric) {
  EXPECT_TRUE(absl::IsInvalidArgument(InProcessTransport::Create(nullptr, {}).status()));
}

TEST(InProcessTransportTest, DescriptorOfAnotherFabricIsUnavailable) {
  auto a = InProcessTransport::Create(InProcessFabric::Create(), {"a"});
  auto b = InProcessTransport::Create(InProcessFabric::Create(), {"b"});
  ASSERT_TRUE(a.ok() && b.ok());
  auto descriptor = (*b)->LocalDescriptor();
  ASSERT_TRUE(descriptor.ok());
  EXPECT_TRUE(absl::IsUnavailable((*a)->Connect(*descriptor).status()));
}

TEST(InProcessTransportTest, DescriptorOfADestroyedTransportIsUnavailable) {
  auto fabric = InProcessFabric::Create();
  auto a = InProcessTransport::Create(fabric, {"a"});
  auto b = InProcessTransport::Create(fabric, {"b"});
  ASSERT_TRUE(a.ok() && b.ok());
  auto descriptor = (*b)->LocalDescriptor();
  ASSERT_TRUE(descriptor.ok());
  b->reset();
  EXPECT_TRUE(absl::IsUnavailable((*a)->Connect(*descriptor).status()));
}

TEST(InProcessTransportTest, DisconnectCancelsRunningTransfers) {
  auto fabric = InProcessFabric::Create();
  constexpr size_t kBytes = size_t{64} << 20;
  std::vector<char> src(kBytes, 1), dst(kBytes, 0);
  auto a = InProcessTransport::Create(fabric, {"a"});
  auto b = InProcessTransport::Create(fabric, {"b"});
  ASSERT_TRUE(a.ok() && b.ok());
  auto src_region = (*a)->RegisterMemory(src.data(), kBytes);
  auto dst_region = (*b)->RegisterMemory(dst.data(), kBytes);
  auto descriptor = (*b)->LocalDescriptor();
  ASSERT_TRUE(src_region.ok() && dst_region.ok() && descriptor.ok());
  auto peer = (*a)->Connect(*descriptor);
  ASSERT_TRUE(peer.ok());
  std::vector<Segment> segments;
  for (size_t offset = 0; offset < kBytes; offset += 1 << 20) {
    segments.push_back(Segment{*src_region, offset, *dst_region, offset, 1 << 20, 0});
  }
  auto transfer = (*a)->Submit(*peer, segments);
  ASSERT_TRUE(transfer.ok());
  ASSERT_TRUE((*a)->Disconnect(*peer).ok());
  const absl::Status status = (*transfer)->Wait(absl::Seconds(60));
  EXPECT_TRUE(status.ok() || absl::IsCancelled(status)) << status;
}

}  // namespace
}  // namespace tessera::kvtransfer
