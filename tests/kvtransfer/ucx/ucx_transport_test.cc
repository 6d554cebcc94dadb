// UCX transport behaviour with two transports (two workers, two progress threads) in one process,
// over whatever UCX picks on loopback (shared memory, tcp).
#include "kvtransfer/ucx/ucx_transport.h"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace tessera::kvtransfer {
namespace {

constexpr uint64_t kMiB = 1ull << 20;

std::unique_ptr<UcxTransport> MakeTransport(const std::string& name,
                                            absl::Duration peer_timeout = absl::Seconds(5)) {
  UcxTransportOptions options;
  options.base.name = name;
  options.base.connect_timeout = absl::Seconds(10);
  options.base.peer_timeout = peer_timeout;
  auto t = UcxTransport::Create(options);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937_64 rng(seed);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t x = rng();
    std::memcpy(v.data() + i, &x, 8);
  }
  for (; i < n; ++i) v[i] = static_cast<uint8_t>(rng());
  return v;
}

class RecordingListener : public WriteListener {
 public:
  absl::Status Admit(const WriteInfo& write) override {
    absl::MutexLock lock(&mu_);
    admitted_.push_back(write);
    if (write.tag == refused_tag_) return absl::PermissionDeniedError("stale generation");
    return absl::OkStatus();
  }
  void Written(const WriteInfo& write) override {
    absl::MutexLock lock(&mu_);
    written_.push_back(write);
  }
  void NotWritten(const WriteInfo& write, const absl::Status&) override {
    absl::MutexLock lock(&mu_);
    not_written_.push_back(write);
  }
  void RefuseTag(uint64_t tag) {
    absl::MutexLock lock(&mu_);
    refused_tag_ = tag;
  }
  std::vector<WriteInfo> admitted() {
    absl::MutexLock lock(&mu_);
    return admitted_;
  }
  std::vector<WriteInfo> written() {
    absl::MutexLock lock(&mu_);
    return written_;
  }

 private:
  absl::Mutex mu_;
  uint64_t refused_tag_ ABSL_GUARDED_BY(mu_) = ~0ull;
  std::vector<WriteInfo> admitted_ ABSL_GUARDED_BY(mu_);
  std::vector<WriteInfo> written_ ABSL_GUARDED_BY(mu_);
  std::vector<WriteInfo> not_written_ ABSL_GUARDED_BY(mu_);
};

// A sender "prefill" and a receiver "decode", each with one registered buffer.
class UcxTransportTest : public ::testing::Test {
 protected:
  void SetUpPair(size_t src_bytes, size_t dst_bytes,
                 absl::Duration peer_timeout = absl::Seconds(5)) {
    sender_ = MakeTransport("prefill", peer_timeout);
    receiver_ = MakeTransport("decode", peer_timeout);
    ASSERT_NE(sender_, nullptr);
    ASSERT_NE(receiver_, nullptr);
    src_ = RandomBytes(src_bytes, 42);
    dst_.assign(dst_bytes, 0);
    auto s = sender_->RegisterMemory(src_.data(), src_.size());
    auto d = receiver_->RegisterMemory(dst_.data(), dst_.size());
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_TRUE(d.ok()) << d.status();
    src_region_ = *s;
    dst_region_ = *d;
    auto descriptor = receiver_->LocalDescriptor();
    ASSERT_TRUE(descriptor.ok()) << descriptor.status();
    auto peer = sender_->Connect(*descriptor);
    ASSERT_TRUE(peer.ok()) << peer.status();
    peer_ = *peer;
  }

  Segment Seg(uint64_t src_off, uint64_t dst_off, uint64_t len, uint64_t tag = 7) const {
    return Segment{src_region_, src_off, dst_region_, dst_off, len, tag};
  }

  absl::Status Run(const std::vector<Segment>& segments,
                   absl::Duration timeout = absl::Seconds(60)) {
    auto transfer = sender_->Submit(peer_, segments);
    if (!transfer.ok()) return transfer.status();
    return (*transfer)->Wait(timeout);
  }

  bool Landed(const Segment& s) const {
    return std::memcmp(src_.data() + s.local_offset, dst_.data() + s.remote_offset, s.length) == 0;
  }

  // Buffers first: registered memory must outlive the transports (members die in reverse).
  std::vector<uint8_t> src_;
  std::vector<uint8_t> dst_;
  std::unique_ptr<UcxTransport> sender_;
  std::unique_ptr<UcxTransport> receiver_;
  RegionId src_region_ = 0;
  RegionId dst_region_ = 0;
  PeerId peer_ = 0;
};

TEST_F(UcxTransportTest, KindIsUcx) {
  SetUpPair(4096, 4096);
  EXPECT_EQ(sender_->kind(), "ucx");
}

TEST_F(UcxTransportTest, ScatterGatherRoundTripIsByteExact) {
  SetUpPair(4 * kMiB, 4 * kMiB);
  // Out of order, odd sizes and offsets, mixed eager and rendezvous sizes.
  std::vector<Segment> segments = {Seg(0, 3 * kMiB, 1), Seg(17, 100, 4093),
                                   Seg(kMiB, 16384, 700 * 1024 + 3), Seg(2 * kMiB, 2 * kMiB, kMiB),
                                   Seg(4 * kMiB - 10, 8192, 10)};
  auto transfer = sender_->Submit(peer_, segments);
  ASSERT_TRUE(transfer.ok()) << transfer.status();
  ASSERT_TRUE((*transfer)->Wait(absl::Seconds(30)).ok());
  EXPECT_TRUE((*transfer)->Done());
  uint64_t total = 0;
  for (const Segment& s : segments) {
    EXPECT_TRUE(Landed(s)) << "segment at remote offset " << s.remote_offset;
    total += s.length;
  }
  EXPECT_EQ((*transfer)->bytes_done(), total);
  EXPECT_EQ(dst_[0], 0);  // bytes outside the segments stay untouched
  EXPECT_EQ(dst_[4 * kMiB - 1], 0);
}

TEST_F(UcxTransportTest, LargeRendezvousSegmentsArriveIntact) {
  SetUpPair(64 * kMiB, 128 * kMiB);
  const std::vector<Segment> segments = {Seg(0, 64 * kMiB, 64 * kMiB), Seg(3, 1, 32 * kMiB - 7)};
  ASSERT_TRUE(Run(segments).ok());
  EXPECT_TRUE(Landed(segments[0]));
  EXPECT_TRUE(Landed(segments[1]));
}

TEST_F(UcxTransportTest, ManySmallEagerSegmentsArriveIntact) {
  SetUpPair(kMiB, kMiB);
  std::vector<Segment> segments;
  for (uint64_t i = 0; i < 2000; ++i) segments.push_back(Seg(i * 64, kMiB - (i + 1) * 64, 64, i));
  ASSERT_TRUE(Run(segments).ok());
  for (const Segment& s : segments) ASSERT_TRUE(Landed(s));
}

TEST_F(UcxTransportTest, ListenerSeesAdmitThenWrittenWithSenderName) {
  SetUpPair(2 * kMiB, 2 * kMiB);
  RecordingListener listener;
  receiver_->SetWriteListener(&listener);
  ASSERT_TRUE(Run({Seg(0, 0, 100, 11), Seg(0, kMiB, kMiB, 12)}).ok());
  receiver_->SetWriteListener(nullptr);
  const auto admitted = listener.admitted();
  const auto written = listener.written();
  ASSERT_EQ(admitted.size(), 2u);
  ASSERT_EQ(written.size(), 2u);
  for (const WriteInfo& w : written) {
    EXPECT_EQ(w.peer_name, "prefill");
    EXPECT_EQ(w.region, dst_region_);
    if (w.tag == 12) {
      EXPECT_EQ(w.offset, kMiB);
      EXPECT_EQ(w.length, kMiB);
    } else {
      EXPECT_EQ(w.tag, 11u);
      EXPECT_EQ(w.length, 100u);
    }
  }
}

TEST_F(UcxTransportTest, RefusedWriteLeavesDestinationUntouchedAndReportsListenerStatus) {
  SetUpPair(16 * kMiB, 16 * kMiB);
  RecordingListener listener;
  listener.RefuseTag(99);
  receiver_->SetWriteListener(&listener);
  // A small (eager) and a large (rendezvous) refused segment, plus an admitted one.
  const absl::Status status =
      Run({Seg(0, 0, 256, 99), Seg(kMiB, kMiB, 8 * kMiB, 99), Seg(0, 12 * kMiB, 4096, 1)});
  receiver_->SetWriteListener(nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_NE(status.message().find("stale generation"), std::string::npos) << status;
  for (uint64_t i = 0; i < 9 * kMiB; ++i) {
    ASSERT_EQ(dst_[i], 0) << "refused byte " << i << " was written";
  }
  for (const WriteInfo& w : listener.written()) EXPECT_NE(w.tag, 99u);
}

TEST_F(UcxTransportTest, MalformedDescriptorIsInvalidArgument) {
  SetUpPair(4096, 4096);
  EXPECT_EQ(sender_->Connect("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sender_->Connect("not a descriptor").status().code(),
            absl::StatusCode::kInvalidArgument);
  auto descriptor = receiver_->LocalDescriptor();
  ASSERT_TRUE(descriptor.ok());
  std::string truncated = descriptor->substr(0, descriptor->size() / 2);
  EXPECT_EQ(sender_->Connect(truncated).status().code(), absl::StatusCode::kInvalidArgument);
  std::string flipped = *descriptor;
  flipped[flipped.size() / 2] ^= 0x20;
  EXPECT_EQ(sender_->Connect(flipped).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(UcxTransportTest, SubmitValidatesBeforeSending) {
  SetUpPair(4096, 4096);
  auto code = [&](std::vector<Segment> s) { return sender_->Submit(peer_, s).status().code(); };
  EXPECT_EQ(code({Seg(0, 4000, 100)}), absl::StatusCode::kInvalidArgument);  // remote bounds
  EXPECT_EQ(code({Seg(4000, 0, 100)}), absl::StatusCode::kInvalidArgument);  // local bounds
  EXPECT_EQ(code({Seg(0, 0, 0)}), absl::StatusCode::kInvalidArgument);       // empty segment
  EXPECT_EQ(code({Segment{src_region_, 0, 12345, 0, 8, 0}}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({Segment{12345, 0, dst_region_, 0, 8, 0}}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({Seg(1, ~0ull, 2)}), absl::StatusCode::kInvalidArgument);  // overflow
  EXPECT_EQ(sender_->Submit(peer_ + 100, {Seg(0, 0, 8)}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sender_->DeregisterMemory(999).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(sender_->RegisterMemory(nullptr, 8).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(std::all_of(dst_.begin(), dst_.end(), [](uint8_t b) { return b == 0; }));
}

TEST_F(UcxTransportTest, DeregisterWhileTransferRunsIsFailedPrecondition) {
  SetUpPair(64 * kMiB, 64 * kMiB);
  std::vector<Segment> segments(16, Seg(0, 0, 64 * kMiB));
  auto transfer = sender_->Submit(peer_, segments);
  ASSERT_TRUE(transfer.ok());
  const absl::Status early = sender_->DeregisterMemory(src_region_);
  if (!(*transfer)->Done() || !early.ok()) {
    EXPECT_EQ(early.code(), absl::StatusCode::kFailedPrecondition) << early;
  }
  ASSERT_TRUE((*transfer)->Wait(absl::Seconds(60)).ok());
  transfer->reset();
  if (!early.ok()) {
    EXPECT_TRUE(sender_->DeregisterMemory(src_region_).ok());
  }
  EXPECT_TRUE(receiver_->DeregisterMemory(dst_region_).ok());
}

TEST_F(UcxTransportTest, PeerDestroyedMidTransferFailsUnavailableInBoundedTime) {
  SetUpPair(64 * kMiB, 64 * kMiB, /*peer_timeout=*/absl::Seconds(3));
  std::vector<Segment> segments(256, Seg(0, 0, 64 * kMiB));  // 16 GiB: far longer than the test
  auto transfer = sender_->Submit(peer_, segments);
  ASSERT_TRUE(transfer.ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while ((*transfer)->bytes_done() == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));  // polling progress, not synchronising
  }
  const absl::Time start = absl::Now();
  receiver_.reset();
  const absl::Status status = (*transfer)->Wait(absl::Seconds(20));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_LT((*transfer)->bytes_done(), 256 * 64 * kMiB);
  // The peer is failed: new submissions fail fast.
  EXPECT_EQ(sender_->Submit(peer_, {Seg(0, 0, 8)}).status().code(), absl::StatusCode::kUnavailable);
}

// A receiver whose listener hangs stops answering: the sender gives up after peer_timeout.
TEST_F(UcxTransportTest, SilentPeerFailsUnavailableAfterPeerTimeout) {
  SetUpPair(kMiB, kMiB, /*peer_timeout=*/absl::Seconds(1));
  class HangingListener : public WriteListener {
   public:
    absl::Status Admit(const WriteInfo&) override {
      release.WaitForNotificationWithTimeout(absl::Seconds(30));
      return absl::OkStatus();
    }
    void Written(const WriteInfo&) override {}
    void NotWritten(const WriteInfo&, const absl::Status&) override {}
    absl::Notification release;
  } listener;
  receiver_->SetWriteListener(&listener);
  const absl::Time start = absl::Now();
  const absl::Status status = Run({Seg(0, 0, 4096)}, absl::Seconds(20));
  const absl::Duration took = absl::Now() - start;
  listener.release.Notify();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_GE(took, absl::Milliseconds(900));
  EXPECT_LT(took, absl::Seconds(10));
  receiver_->SetWriteListener(nullptr);
}

TEST_F(UcxTransportTest, CancelStopsTheTransferWithCancelled) {
  SetUpPair(64 * kMiB, 64 * kMiB);
  std::vector<Segment> segments(256, Seg(0, 0, 64 * kMiB));
  auto transfer = sender_->Submit(peer_, segments);
  ASSERT_TRUE(transfer.ok());
  (*transfer)->Cancel();
  (*transfer)->Cancel();  // idempotent
  const absl::Status status = (*transfer)->Wait(absl::Seconds(30));
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  EXPECT_EQ((*transfer)->Wait(absl::Seconds(1)).code(), absl::StatusCode::kCancelled);
  EXPECT_LT((*transfer)->bytes_done(), 256 * 64 * kMiB);
  transfer->reset();  // returns once UCX no longer reads the buffer
  EXPECT_TRUE(sender_->DeregisterMemory(src_region_).ok());
  // The connection still works afterwards.
  auto region = sender_->RegisterMemory(src_.data(), src_.size());
  ASSERT_TRUE(region.ok());
  src_region_ = *region;
  ASSERT_TRUE(Run({Seg(5, 9, 3 * kMiB)}).ok());
  EXPECT_TRUE(Landed(Seg(5, 9, 3 * kMiB)));
}

TEST_F(UcxTransportTest, DestroyingARunningTransferCancelsIt) {
  SetUpPair(64 * kMiB, 64 * kMiB);
  std::vector<Segment> segments(64, Seg(0, 0, 64 * kMiB));
  auto transfer = sender_->Submit(peer_, segments);
  ASSERT_TRUE(transfer.ok());
  transfer->reset();
  EXPECT_TRUE(sender_->DeregisterMemory(src_region_).ok());
}

TEST_F(UcxTransportTest, WaitTimesOutWithDeadlineExceededWhileRunning) {
  SetUpPair(64 * kMiB, 64 * kMiB);
  std::vector<Segment> segments(256, Seg(0, 0, 64 * kMiB));
  auto transfer = sender_->Submit(peer_, segments);
  ASSERT_TRUE(transfer.ok());
  EXPECT_EQ((*transfer)->Wait(absl::Milliseconds(1)).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE((*transfer)->Done());
}

TEST_F(UcxTransportTest, ConcurrentTransfersFromSeveralThreads) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 25;
  constexpr uint64_t kSlot = 64 * 1024;
  SetUpPair(kThreads * kPerThread * kSlot, kThreads * kPerThread * kSlot);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const uint64_t off = (t * kPerThread + i) * kSlot;
        // Each transfer: two segments inside its own slot, one small, one larger.
        auto transfer =
            sender_->Submit(peer_, {Seg(off, off, 100), Seg(off + 100, off + 100, kSlot - 100)});
        if (!transfer.ok() || !(*transfer)->Wait(absl::Seconds(60)).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(std::memcmp(src_.data(), dst_.data(), src_.size()), 0);
}

TEST_F(UcxTransportTest, DisconnectForgetsThePeer) {
  SetUpPair(4096, 4096);
  EXPECT_TRUE(sender_->Disconnect(peer_).ok());
  EXPECT_EQ(sender_->Disconnect(peer_).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(sender_->Submit(peer_, {Seg(0, 0, 8)}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Reconnecting with the same descriptor yields a fresh, working peer.
  auto descriptor = receiver_->LocalDescriptor();
  ASSERT_TRUE(descriptor.ok());
  auto again = sender_->Connect(*descriptor);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_NE(*again, peer_);
  peer_ = *again;
  ASSERT_TRUE(Run({Seg(0, 0, 4096)}).ok());
  EXPECT_TRUE(Landed(Seg(0, 0, 4096)));
}

TEST_F(UcxTransportTest, ConnectToDestroyedPeerIsUnavailable) {
  auto receiver = MakeTransport("gone");
  ASSERT_NE(receiver, nullptr);
  auto descriptor = receiver->LocalDescriptor();
  ASSERT_TRUE(descriptor.ok());
  receiver.reset();
  UcxTransportOptions options;
  options.base.name = "prefill";
  options.base.connect_timeout = absl::Seconds(1);
  auto sender = UcxTransport::Create(options);
  ASSERT_TRUE(sender.ok());
  const absl::Time start = absl::Now();
  EXPECT_EQ((*sender)->Connect(*descriptor).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

}  // namespace
}  // namespace tessera::kvtransfer
