#include "kvtransfer/fault_injecting_transport.h"

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "kvtransfer/inproc/in_process_transport.h"
#include "tests/kvtransfer/transport_conformance.h"

namespace tessera::kvtransfer {
namespace {

using testing::TransportConformanceTest;
using testing::TransportFactory;

constexpr absl::Duration kWait = absl::Seconds(30);

// With an empty plan the decorator is a transparent Transport.
TransportFactory TransparentFactory() {
  auto fabric = InProcessFabric::Create();
  return TransportFactory{
      "fault_inproc",
      [fabric](const TransportOptions& options) -> absl::StatusOr<std::unique_ptr<Transport>> {
        auto inner = InProcessTransport::Create(fabric, options);
        if (!inner.ok()) return inner.status();
        auto outer = FaultInjectingTransport::Create(*std::move(inner));
        if (!outer.ok()) return outer.status();
        return std::unique_ptr<Transport>(*std::move(outer));
      }};
}

INSTANTIATE_TEST_SUITE_P(FaultInjecting, TransportConformanceTest,
                         ::testing::Values(TransparentFactory()), testing::TransportFactoryName);

// A faulty sender and a faulty receiver over one fabric, 64 KiB each way.
class FaultInjectingTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    src_.assign(kBytes, 0);
    for (size_t i = 0; i < kBytes; ++i) src_[i] = static_cast<uint8_t>(i * 131 + 7);
    dst_.assign(kBytes, 0);
    auto fabric = InProcessFabric::Create();
    auto a = InProcessTransport::Create(fabric, {"sender"});
    auto b = InProcessTransport::Create(fabric, {"receiver"});
    ASSERT_TRUE(a.ok() && b.ok());
    auto sender = FaultInjectingTransport::Create(*std::move(a));
    auto receiver = FaultInjectingTransport::Create(*std::move(b));
    ASSERT_TRUE(sender.ok() && receiver.ok());
    sender_ = *std::move(sender);
    receiver_ = *std::move(receiver);
    auto src_region = sender_->RegisterMemory(src_.data(), kBytes);
    auto dst_region = receiver_->RegisterMemory(dst_.data(), kBytes);
    auto descriptor = receiver_->LocalDescriptor();
    ASSERT_TRUE(src_region.ok() && dst_region.ok() && descriptor.ok());
    auto peer = sender_->Connect(*descriptor);
    ASSERT_TRUE(peer.ok());
    segment_ = Segment{*src_region, 0, *dst_region, 0, kBytes, 9};
    peer_ = *peer;
  }

  absl::StatusOr<std::unique_ptr<Transfer>> Submit() {
    return sender_->Submit(peer_, {&segment_, 1});
  }

  static constexpr size_t kBytes = 64 << 10;
  std::vector<uint8_t> src_, dst_;
  std::unique_ptr<FaultInjectingTransport> sender_, receiver_;
  Segment segment_;
  PeerId peer_ = 0;
};

TEST_F(FaultInjectingTransportTest, FailsTheNthSubmitWithAnError) {
  FaultPlan plan;
  plan.fail_submit_at = 2;
  plan.submit_error = absl::ResourceExhaustedError("injected");
  sender_->SetFaultPlan(plan);
  auto first = Submit();
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE((*first)->Wait(kWait).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(Submit().status()));
  auto third = Submit();
  ASSERT_TRUE(third.ok());
  EXPECT_TRUE((*third)->Wait(kWait).ok());
}

TEST_F(FaultInjectingTransportTest, FailsTheNthSubmitAsAFailedTransfer) {
  FaultPlan plan;
  plan.fail_submit_at = 1;
  plan.submit_failure = FaultPlan::SubmitFailure::kFailTransfer;
  sender_->SetFaultPlan(plan);
  auto transfer = Submit();
  ASSERT_TRUE(transfer.ok());
  EXPECT_TRUE((*transfer)->Done());
  EXPECT_TRUE(absl::IsUnavailable((*transfer)->Wait(kWait)));
  EXPECT_EQ((*transfer)->bytes_done(), 0u);
  EXPECT_EQ(dst_, std::vector<uint8_t>(kBytes, 0));
}

TEST_F(FaultInjectingTransportTest, DelaysTransfers) {
  FaultPlan plan;
  plan.transfer_delay = absl::Milliseconds(300);
  sender_->SetFaultPlan(plan);
  const absl::Time start = absl::Now();
  auto transfer = Submit();
  ASSERT_TRUE(transfer.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded((*transfer)->Wait(absl::Milliseconds(1))));
  EXPECT_TRUE((*transfer)->Wait(kWait).ok());
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
  EXPECT_TRUE((*transfer)->Done());
}

TEST_F(FaultInjectingTransportTest, CancelEndsTheDelayCancelled) {
  FaultPlan plan;
  plan.transfer_delay = absl::Seconds(60);
  sender_->SetFaultPlan(plan);
  auto transfer = Submit();
  ASSERT_TRUE(transfer.ok());
  (*transfer)->Cancel();
  const absl::Status status = (*transfer)->Wait(kWait);
  EXPECT_TRUE(absl::IsCancelled(status)) << status;
  EXPECT_EQ((*transfer)->Wait(absl::ZeroDuration()), status);
}

TEST_F(FaultInjectingTransportTest, CorruptsOneByteOfALandedSegment) {
  FaultPlan plan;
  plan.corrupt_write_at = 1;
  receiver_->SetFaultPlan(plan);
  auto transfer = Submit();
  ASSERT_TRUE(transfer.ok());
  EXPECT_TRUE((*transfer)->Wait(kWait).ok());  // the transport cannot tell
  EXPECT_EQ(receiver_->corrupted_writes(), 1);
  int differing = 0;
  for (size_t i = 0; i < kBytes; ++i) differing += src_[i] != dst_[i];
  EXPECT_EQ(differing, 1);
  // Only the Nth: the next one lands intact.
  auto again = Submit();
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE((*again)->Wait(kWait).ok());
  EXPECT_EQ(src_, dst_);
}

TEST_F(FaultInjectingTransportTest, DropConnectionFailsLaterTransfersUnavailable) {
  auto before = Submit();
  ASSERT_TRUE(before.ok());
  EXPECT_TRUE((*before)->Wait(kWait).ok());
  sender_->DropConnection(peer_);
  auto after = Submit();
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(absl::IsUnavailable((*after)->Wait(kWait)));
  EXPECT_TRUE((*before)->Wait(kWait).ok());  // finished ones keep their status
}

TEST(FaultInjectingTransportCreateTest, RejectsANullInner) {
  EXPECT_TRUE(absl::IsInvalidArgument(FaultInjectingTransport::Create(nullptr).status()));
}

}  // namespace
}  // namespace tessera::kvtransfer
