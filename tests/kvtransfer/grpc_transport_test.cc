// The conformance suite over GrpcTransport, plus its own behaviours.
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "kvtransfer/grpc/grpc_transport.h"
#include "kvtransfer/inproc/in_process_transport.h"
#include "tests/kvtransfer/transport_conformance.h"

namespace tessera::kvtransfer {
namespace {

using testing::TransportConformanceTest;
using testing::TransportFactory;

absl::StatusOr<std::unique_ptr<Transport>> MakeGrpc(const TransportOptions& options,
                                                    GrpcTransportOptions grpc_options = {}) {
  auto transport = GrpcTransport::Create(options, grpc_options);
  if (!transport.ok()) return transport.status();
  return std::unique_ptr<Transport>(*std::move(transport));
}

INSTANTIATE_TEST_SUITE_P(Grpc, TransportConformanceTest,
                         ::testing::Values(TransportFactory{"grpc",
                                                            [](const TransportOptions& o) {
                                                              return MakeGrpc(o);
                                                            }},
                                           // Tiny messages: every segment split into many pieces.
                                           TransportFactory{"grpc_small_messages",
                                                            [](const TransportOptions& o) {
                                                              GrpcTransportOptions g;
                                                              g.max_message_bytes = 1000;
                                                              return MakeGrpc(o, g);
                                                            }}),
                         testing::TransportFactoryName);

TEST(GrpcTransportTest, PortIsReadBack) {
  auto transport = GrpcTransport::Create({"t"});
  ASSERT_TRUE(transport.ok()) << transport.status();
  EXPECT_GT((*transport)->port(), 0);
}

TEST(GrpcTransportTest, UnbindableAddressIsUnavailable) {
  GrpcTransportOptions grpc_options;
  grpc_options.listen_address = "256.1.2.3:0";
  EXPECT_TRUE(absl::IsUnavailable(GrpcTransport::Create({"t"}, grpc_options).status()));
}

TEST(GrpcTransportTest, ZeroMessageSizeIsInvalidArgument) {
  GrpcTransportOptions grpc_options;
  grpc_options.max_message_bytes = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(GrpcTransport::Create({"t"}, grpc_options).status()));
}

TEST(GrpcTransportTest, AnotherTransportsDescriptorIsInvalidArgument) {
  auto inproc = InProcessTransport::Create(InProcessFabric::Create(), {"inproc"});
  auto grpc = GrpcTransport::Create({"grpc"});
  ASSERT_TRUE(inproc.ok() && grpc.ok());
  auto descriptor = (*inproc)->LocalDescriptor();
  ASSERT_TRUE(descriptor.ok());
  EXPECT_TRUE(absl::IsInvalidArgument((*grpc)->Connect(*descriptor).status()));
}

TEST(GrpcTransportTest, UnreachableServerIsUnavailableQuickly) {
  std::string descriptor;
  {
    auto gone = GrpcTransport::Create({"gone"});
    ASSERT_TRUE(gone.ok());
    auto d = (*gone)->LocalDescriptor();
    ASSERT_TRUE(d.ok());
    descriptor = *d;
  }  // its port is closed now
  TransportOptions options{"t"};
  options.connect_timeout = absl::Seconds(1);
  auto transport = GrpcTransport::Create(options);
  ASSERT_TRUE(transport.ok());
  const absl::Time start = absl::Now();
  const absl::Status status = (*transport)->Connect(descriptor).status();
  EXPECT_TRUE(absl::IsUnavailable(status)) << status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

// A receiver that stops taking data (its listener holds Admit) fails the sender's transfer with
// kUnavailable after peer_timeout.
TEST(GrpcTransportTest, SilentPeerFailsUnavailableAfterPeerTimeout) {
  class Holding final : public WriteListener {
   public:
    absl::Status Admit(const WriteInfo&) override {
      release.WaitForNotificationWithTimeout(absl::Seconds(30));
      return absl::OkStatus();
    }
    void Written(const WriteInfo&) override {}
    void NotWritten(const WriteInfo&, const absl::Status&) override {}
    absl::Notification release;
  } listener;
  constexpr size_t kBytes = size_t{256} << 20;  // more than the flow-control windows hold
  std::vector<char> src(kBytes, 1), dst(kBytes, 0);
  TransportOptions options{"sender"};
  options.peer_timeout = absl::Seconds(1);
  auto sender = GrpcTransport::Create(options);
  auto receiver = GrpcTransport::Create({"receiver"});
  ASSERT_TRUE(sender.ok() && receiver.ok());
  (*receiver)->SetWriteListener(&listener);
  auto src_region = (*sender)->RegisterMemory(src.data(), kBytes);
  auto dst_region = (*receiver)->RegisterMemory(dst.data(), kBytes);
  auto descriptor = (*receiver)->LocalDescriptor();
  ASSERT_TRUE(src_region.ok() && dst_region.ok() && descriptor.ok());
  auto peer = (*sender)->Connect(*descriptor);
  ASSERT_TRUE(peer.ok());
  // The first segment is held in Admit; the rest pile up behind it.
  std::vector<Segment> segments;
  for (size_t offset = 0; offset < kBytes; offset += 1 << 20) {
    segments.push_back(Segment{*src_region, offset, *dst_region, offset, 1 << 20, 0});
  }
  auto transfer = (*sender)->Submit(*peer, segments);
  ASSERT_TRUE(transfer.ok());
  const absl::Status status = (*transfer)->Wait(absl::Seconds(20));
  listener.release.Notify();
  EXPECT_TRUE(absl::IsUnavailable(status)) << status;
}

// `src` sent into `dst` as one segment, in pieces of 64 KiB (the transports' message limit), with
// `listener` on the receiving transport. The transports must outlive the transfer: they travel
// with it.
struct PieceSend {
  std::unique_ptr<GrpcTransport> sender, receiver;
  std::unique_ptr<Transfer> transfer;
};
absl::StatusOr<PieceSend> SendInPieces(WriteListener& listener, std::vector<char>& src,
                                       std::vector<char>& dst) {
  GrpcTransportOptions small;
  small.max_message_bytes = 64 << 10;
  PieceSend out;
  TESSERA_ASSIGN_OR_RETURN(out.sender, GrpcTransport::Create({"sender"}, small));
  TESSERA_ASSIGN_OR_RETURN(out.receiver, GrpcTransport::Create({"receiver"}, small));
  out.receiver->SetWriteListener(&listener);
  TESSERA_ASSIGN_OR_RETURN(RegionId src_region, out.sender->RegisterMemory(src.data(), src.size()));
  TESSERA_ASSIGN_OR_RETURN(RegionId dst_region,
                           out.receiver->RegisterMemory(dst.data(), dst.size()));
  TESSERA_ASSIGN_OR_RETURN(std::string descriptor, out.receiver->LocalDescriptor());
  TESSERA_ASSIGN_OR_RETURN(PeerId peer, out.sender->Connect(descriptor));
  const Segment segment{src_region, 0, dst_region, 0, src.size(), 3};
  TESSERA_ASSIGN_OR_RETURN(out.transfer, out.sender->Submit(peer, {&segment, 1}));
  return out;
}

TEST(GrpcTransportTest, LongSegmentReachesTheListenerOnce) {
  class Counting final : public WriteListener {
   public:
    absl::Status Admit(const WriteInfo& w) override {
      ++admits;
      length = w.length;
      return absl::OkStatus();
    }
    void Written(const WriteInfo&) override { ++written; }
    void NotWritten(const WriteInfo&, const absl::Status&) override { ++not_written; }
    std::atomic<int> admits{0}, written{0}, not_written{0};
    std::atomic<uint64_t> length{0};
  } listener;
  constexpr size_t kBytes = size_t{1} << 20;
  std::vector<char> src(kBytes, 7), dst(kBytes, 0);
  auto sent = SendInPieces(listener, src, dst);
  ASSERT_TRUE(sent.ok()) << sent.status();
  ASSERT_TRUE(sent->transfer->Wait(absl::Seconds(30)).ok());
  EXPECT_EQ(listener.admits.load(), 1);
  EXPECT_EQ(listener.written.load(), 1);
  EXPECT_EQ(listener.not_written.load(), 0);
  EXPECT_EQ(listener.length.load(), kBytes);
  EXPECT_EQ(src, dst);
}

// A segment sent in many pieces whose stream is cancelled after its first piece was admitted:
// the receiver's listener hears NotWritten for it (a KV port counting writes in flight would
// otherwise wait for it until its quiesce timeout and hold the blocks back).
TEST(GrpcTransportTest, AStreamCancelledInsideASegmentEndsItNotWritten) {
  class Holding final : public WriteListener {
   public:
    absl::Status Admit(const WriteInfo&) override {
      entered.Notify();
      release.WaitForNotificationWithTimeout(absl::Seconds(30));
      return absl::OkStatus();
    }
    void Written(const WriteInfo&) override { ++written; }
    void NotWritten(const WriteInfo&, const absl::Status&) override {
      ++not_written;
      ended.Notify();
    }
    absl::Notification entered, release, ended;
    std::atomic<int> written{0}, not_written{0};
  } listener;
  // 1024 pieces: far more than the flow-control windows hold while the receiver waits in Admit.
  constexpr size_t kBytes = size_t{64} << 20;
  std::vector<char> src(kBytes, 7), dst(kBytes, 0);
  auto sent = SendInPieces(listener, src, dst);
  ASSERT_TRUE(sent.ok()) << sent.status();
  ASSERT_TRUE(listener.entered.WaitForNotificationWithTimeout(absl::Seconds(30)));
  sent->transfer->Cancel();
  listener.release.Notify();
  EXPECT_TRUE(absl::IsCancelled(sent->transfer->Wait(absl::Seconds(30))));
  ASSERT_TRUE(listener.ended.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(listener.not_written.load(), 1);
  EXPECT_EQ(listener.written.load(), 0);
}

}  // namespace
}  // namespace tessera::kvtransfer
