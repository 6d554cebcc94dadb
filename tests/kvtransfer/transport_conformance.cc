#include "tests/kvtransfer/transport_conformance.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace tessera::kvtransfer::testing {
namespace {

constexpr absl::Duration kWait = absl::Seconds(60);  // generous bound; tests never sleep
constexpr uint8_t kUntouched = 0xA5;

std::string TransportFactoryNameImpl(const TransportFactory& factory) { return factory.name; }

uint64_t NewSeed() { return std::random_device{}() ^ (uint64_t{std::random_device{}()} << 32); }

void FillRandom(std::vector<uint8_t>& bytes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    const uint64_t v = rng();
    std::memcpy(bytes.data() + i, &v, 8);
  }
  for (; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(rng());
}

// Records listener calls; can refuse a tag, or hold Admit until released (bounded).
class RecordingListener final : public WriteListener {
 public:
  struct Event {
    bool written = false;  // false: Admit (or NotWritten)
    WriteInfo info;
    bool not_written = false;
  };

  void RefuseTag(uint64_t tag, absl::Status status) {
    absl::MutexLock lock(&mu_);
    refuse_tag_ = tag;
    refuse_status_ = std::move(status);
  }
  // The next Admit signals `entered` and waits (at most kWait) for `release`.
  void HoldNextAdmit(absl::Notification* entered, absl::Notification* release) {
    absl::MutexLock lock(&mu_);
    hold_entered_ = entered;
    hold_release_ = release;
  }

  absl::Status Admit(const WriteInfo& write) override {
    absl::Notification* entered = nullptr;
    absl::Notification* release = nullptr;
    absl::Status status;
    {
      absl::MutexLock lock(&mu_);
      events_.push_back(Event{false, write});
      std::swap(entered, hold_entered_);
      std::swap(release, hold_release_);
      if (refuse_tag_.has_value() && *refuse_tag_ == write.tag) status = refuse_status_;
      if (status.ok()) ++admitted_;
    }
    if (entered != nullptr) {
      entered->Notify();
      release->WaitForNotificationWithTimeout(kWait);
    }
    return status;
  }
  void Written(const WriteInfo& write) override {
    absl::MutexLock lock(&mu_);
    events_.push_back(Event{true, write});
    ++ended_;
  }
  void NotWritten(const WriteInfo& write, const absl::Status&) override {
    absl::MutexLock lock(&mu_);
    events_.push_back(Event{false, write, true});
    ++ended_;
  }
  // Waits (at most kWait) until every admitted write has ended, landed or not; false if one
  // never does (a receiver counting writes in flight would wait for it forever).
  bool AwaitEveryAdmittedWriteEnded() {
    absl::MutexLock lock(&mu_);
    auto ended = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return ended_ >= admitted_; };
    return mu_.AwaitWithTimeout(absl::Condition(&ended), kWait) && ended_ == admitted_;
  }
  std::vector<Event> events() {
    absl::MutexLock lock(&mu_);
    return events_;
  }

 private:
  absl::Mutex mu_;
  std::vector<Event> events_ ABSL_GUARDED_BY(mu_);
  int admitted_ ABSL_GUARDED_BY(mu_) = 0;  // Admit calls that returned OK
  int ended_ ABSL_GUARDED_BY(mu_) = 0;     // Written and NotWritten calls
  std::optional<uint64_t> refuse_tag_ ABSL_GUARDED_BY(mu_);
  absl::Status refuse_status_ ABSL_GUARDED_BY(mu_);
  absl::Notification* hold_entered_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Notification* hold_release_ ABSL_GUARDED_BY(mu_) = nullptr;
};

// A sender and a receiver, each with one region (src, dst), connected. The buffers are declared
// first so that they outlive the transports.
struct Pair {
  std::vector<uint8_t> src;
  std::vector<uint8_t> dst;
  RecordingListener listener;
  std::unique_ptr<Transport> sender;
  std::unique_ptr<Transport> receiver;
  RegionId src_region = 0;
  RegionId dst_region = 0;
  PeerId peer = 0;

  Segment Seg(uint64_t src_offset, uint64_t dst_offset, uint64_t length, uint64_t tag = 0) const {
    return Segment{src_region, src_offset, dst_region, dst_offset, length, tag};
  }
};

}  // namespace

std::string TransportFactoryName(const ::testing::TestParamInfo<TransportFactory>& info) {
  return TransportFactoryNameImpl(info.param);
}

TransportOptions TransportConformanceTest::Options(const std::string& name) {
  TransportOptions options;
  options.name = name;
  options.connect_timeout = absl::Seconds(10);
  options.peer_timeout = absl::Seconds(5);
  return options;
}

std::unique_ptr<Transport> TransportConformanceTest::Make(const std::string& name) {
  absl::StatusOr<std::unique_ptr<Transport>> transport = GetParam().create(Options(name));
  if (absl::IsUnavailable(transport.status())) {
    skip_reason_ = absl::StrCat(GetParam().name, " unavailable: ", transport.status().ToString());
    return nullptr;
  }
  EXPECT_TRUE(transport.ok()) << transport.status();
  return transport.ok() ? *std::move(transport) : nullptr;
}

namespace {

// Makes a transport or ends the test (skipped when the factory says kUnavailable).
#define TESSERA_MAKE_OR_RETURN(var, name)                      \
  do {                                                         \
    var = Make(name);                                          \
    if (var == nullptr) {                                      \
      if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_; \
      return;                                                  \
    }                                                          \
  } while (false)

// Sets up `pair` with buffers of the given sizes (src random from `seed`, dst kUntouched).
// Returns false (after a skip or failure) when that was impossible.
#define TESSERA_SETUP_PAIR(pair, src_bytes, dst_bytes, seed)                                 \
  do {                                                                                       \
    (pair).src.resize(src_bytes);                                                            \
    FillRandom((pair).src, seed);                                                            \
    (pair).dst.assign(dst_bytes, kUntouched);                                                \
    TESSERA_MAKE_OR_RETURN((pair).sender, "sender");                                         \
    TESSERA_MAKE_OR_RETURN((pair).receiver, "receiver");                                     \
    (pair).receiver->SetWriteListener(&(pair).listener);                                     \
    auto src_region = (pair).sender->RegisterMemory((pair).src.data(), (pair).src.size());   \
    ASSERT_TRUE(src_region.ok()) << src_region.status();                                     \
    (pair).src_region = *src_region;                                                         \
    auto dst_region = (pair).receiver->RegisterMemory((pair).dst.data(), (pair).dst.size()); \
    ASSERT_TRUE(dst_region.ok()) << dst_region.status();                                     \
    (pair).dst_region = *dst_region;                                                         \
    auto descriptor = (pair).receiver->LocalDescriptor();                                    \
    ASSERT_TRUE(descriptor.ok()) << descriptor.status();                                     \
    auto peer = (pair).sender->Connect(*descriptor);                                         \
    ASSERT_TRUE(peer.ok()) << peer.status();                                                 \
    (pair).peer = *peer;                                                                     \
  } while (false)

bool AllUntouched(const std::vector<uint8_t>& bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == kUntouched; });
}

}  // namespace

TEST_P(TransportConformanceTest, ScatterGatherLandsByteExact) {
  const uint64_t seed = NewSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  Pair pair;
  TESSERA_SETUP_PAIR(pair, 2 << 20, 2 << 20, seed);
  // A random permutation of 512 destination slots of random lengths, from random sources.
  std::mt19937_64 rng(seed + 1);
  constexpr uint64_t kSlot = 4096;
  std::vector<uint64_t> slots(pair.dst.size() / kSlot);
  for (size_t i = 0; i < slots.size(); ++i) slots[i] = i;
  std::shuffle(slots.begin(), slots.end(), rng);
  std::vector<Segment> segments;
  std::vector<uint8_t> expected(pair.dst.size(), kUntouched);
  uint64_t total = 0;
  for (size_t i = 0; i < slots.size(); ++i) {
    const uint64_t length = 1 + rng() % kSlot;
    const uint64_t src_offset = rng() % (pair.src.size() - length);
    const uint64_t dst_offset = slots[i] * kSlot + rng() % (kSlot - length + 1);
    segments.push_back(pair.Seg(src_offset, dst_offset, length, i));
    std::memcpy(expected.data() + dst_offset, pair.src.data() + src_offset, length);
    total += length;
  }
  auto transfer = pair.sender->Submit(pair.peer, segments);
  ASSERT_TRUE(transfer.ok()) << transfer.status();
  ASSERT_TRUE((*transfer)->Wait(kWait).ok());
  EXPECT_TRUE((*transfer)->Done());
  EXPECT_EQ((*transfer)->bytes_done(), total);
  EXPECT_TRUE(pair.dst == expected);
}

TEST_P(TransportConformanceTest, LargeTransferLandsByteExact) {
  const uint64_t seed = NewSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  constexpr uint64_t kBytes = uint64_t{64} << 20;
  Pair pair;
  TESSERA_SETUP_PAIR(pair, kBytes, kBytes, seed);
  const Segment segment = pair.Seg(0, 0, kBytes);
  auto transfer = pair.sender->Submit(pair.peer, {&segment, 1});
  ASSERT_TRUE(transfer.ok()) << transfer.status();
  ASSERT_TRUE((*transfer)->Wait(kWait).ok());
  EXPECT_EQ((*transfer)->bytes_done(), kBytes);
  EXPECT_EQ(std::memcmp(pair.src.data(), pair.dst.data(), kBytes), 0);
}

TEST_P(TransportConformanceTest, InvalidSubmitsFailBeforeAnythingMoves) {
  Pair pair;
  TESSERA_SETUP_PAIR(pair, 4096, 4096, 1);
  const Segment good = pair.Seg(0, 0, 16);
  const std::vector<std::pair<std::string, Segment>> bad = {
      {"zero length", pair.Seg(0, 0, 0)},
      {"local out of bounds", pair.Seg(4090, 0, 16)},
      {"remote out of bounds", pair.Seg(0, 4090, 16)},
      {"remote offset overflow", pair.Seg(0, ~uint64_t{0} - 4, 16)},
      {"local offset overflow", pair.Seg(~uint64_t{0} - 4, 0, 16)},
      {"unknown local region", Segment{pair.src_region + 100, 0, pair.dst_region, 0, 16, 0}},
      {"unknown remote region", Segment{pair.src_region, 0, pair.dst_region + 100, 0, 16, 0}},
  };
  for (const auto& [what, segment] : bad) {
    SCOPED_TRACE(what);
    // The bad segment after a good one: nothing of the good one may move either.
    const std::vector<Segment> segments = {good, segment};
    auto transfer = pair.sender->Submit(pair.peer, segments);
    EXPECT_TRUE(absl::IsInvalidArgument(transfer.status())) << transfer.status();
  }
  auto transfer = pair.sender->Submit(pair.peer + 100, {&good, 1});
  EXPECT_TRUE(absl::IsInvalidArgument(transfer.status())) << transfer.status();
  EXPECT_TRUE(AllUntouched(pair.dst));
  EXPECT_TRUE(pair.listener.events().empty());
  // The rejected submits hold nothing: the regions can go.
  EXPECT_TRUE(pair.sender->DeregisterMemory(pair.src_region).ok());
}

TEST_P(TransportConformanceTest, ListenerSeesAdmitThenWrittenPerSegment) {
  Pair pair;
  TESSERA_SETUP_PAIR(pair, 8192, 8192, 2);
  const std::vector<Segment> segments = {pair.Seg(0, 100, 10, 7), pair.Seg(200, 4096, 4000, 8)};
  auto transfer = pair.sender->Submit(pair.peer, segments);
  ASSERT_TRUE(transfer.ok()) << transfer.status();
  ASSERT_TRUE((*transfer)->Wait(kWait).ok());
  const auto events = pair.listener.events();
  ASSERT_EQ(events.size(), 4u);
  for (const Segment& s : segments) {
    SCOPED_TRACE(absl::StrCat("tag ", s.tag));
    int admit = -1;
    int written = -1;
    for (size_t i = 0; i < events.size(); ++i) {
      const WriteInfo& info = events[i].info;
      if (info.tag != s.tag) continue;
      EXPECT_EQ(info.region, pair.dst_region);
      EXPECT_EQ(info.offset, s.remote_offset);
      EXPECT_EQ(info.length, s.length);
      EXPECT_EQ(info.peer_name, "sender");
      (events[i].written ? written : admit) = static_cast<int>(i);
    }
    ASSERT_GE(admit, 0);
    ASSERT_GE(written, 0);
    EXPECT_LT(admit, written);
  }
}

TEST_P(TransportConformanceTest, RefusedWriteLeavesDestinationAndFailsWithListenersCode) {
  for (const absl::Status& refusal :
       {absl::PermissionDeniedError("stale token"), absl::AbortedError("block released")}) {
    SCOPED_TRACE(refusal.ToString());
    Pair pair;
    TESSERA_SETUP_PAIR(pair, 8192, 8192, 3);
    pair.listener.RefuseTag(42, refusal);
    const Segment segment = pair.Seg(0, 0, 8192, 42);
    auto transfer = pair.sender->Submit(pair.peer, {&segment, 1});
    ASSERT_TRUE(transfer.ok()) << transfer.status();
    const absl::Status status = (*transfer)->Wait(kWait);
    EXPECT_EQ(status.code(), refusal.code()) << status;
    EXPECT_TRUE(AllUntouched(pair.dst));
    for (const auto& event : pair.listener.events()) EXPECT_FALSE(event.written);
  }
}

TEST_P(TransportConformanceTest, CancelEndsCancelledAndWaitRepeatsTheStatus) {
  Pair pair;
  TESSERA_SETUP_PAIR(pair, 8192, 8192, 4);
  absl::Notification entered;
  absl::Notification release;
  pair.listener.HoldNextAdmit(&entered, &release);
  const std::vector<Segment> segments = {pair.Seg(0, 0, 4096, 1), pair.Seg(4096, 4096, 4096, 2)};
  auto transfer = pair.sender->Submit(pair.peer, segments);
  ASSERT_TRUE(transfer.ok()) << transfer.status();
  ASSERT_TRUE(entered.WaitForNotificationWithTimeout(kWait));
  EXPECT_FALSE((*transfer)->Done());
  (*transfer)->Cancel();
  (*transfer)->Cancel();  // idempotent
  release.Notify();
  const absl::Status status = (*transfer)->Wait(kWait);
  EXPECT_TRUE(absl::IsCancelled(status)) << status;
  EXPECT_TRUE((*transfer)->Done());
  // The held segment was admitted: whether or not its bytes landed, the receiver hears that it
  // ended (else its KV blocks would wait for a write that never comes).
  EXPECT_TRUE(pair.listener.AwaitEveryAdmittedWriteEnded());
  EXPECT_EQ((*transfer)->Wait(absl::ZeroDuration()), status);
  EXPECT_EQ((*transfer)->Wait(absl::Seconds(1)), status);
}

TEST_P(TransportConformanceTest, CancelAfterDoneKeepsOk) {
  Pair pair;
  TESSERA_SETUP_PAIR(pair, 4096, 4096, 5);
  const Segment segment = pair.Seg(0, 0, 4096);
  auto transfer = pair.sender->Submit(pair.peer, {&segment, 1});
  ASSERT_TRUE(transfer.ok()) << transfer.status();
  ASSERT_TRUE((*transfer)->Wait(kWait).ok());
  (*transfer)->Cancel();
  EXPECT_TRUE((*transfer)->Wait(absl::ZeroDuration()).ok());
  EXPECT_TRUE((*transfer)->Wait(kWait).ok());
}

TEST_P(TransportConformanceTest, WaitTimesOutOnABigTransferThenCompletes) {
  constexpr uint64_t kBytes = uint64_t{64} << 20;
  Pair pair;
  TESSERA_SETUP_PAIR(pair, kBytes, kBytes, 6);
  const Segment segment = pair.Seg(0, 0, kBytes);
  auto transfer = pair.sender->Submit(pair.peer, {&segment, 1});
  ASSERT_TRUE(transfer.ok()) << transfer.status();
  const absl::Status early = (*transfer)->Wait(absl::Microseconds(1));
  EXPECT_TRUE(absl::IsDeadlineExceeded(early)) << early;
  EXPECT_TRUE((*transfer)->Wait(kWait).ok());
  EXPECT_EQ((*transfer)->bytes_done(), kBytes);
}

TEST_P(TransportConformanceTest, ConcurrentTransfersFromSeveralThreads) {
  const uint64_t seed = NewSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  constexpr int kThreads = 4;
  constexpr int kTransfersPerThread = 16;
  constexpr uint64_t kChunk = 64 << 10;  // one transfer's bytes
  constexpr uint64_t kBytes = kThreads * kTransfersPerThread * kChunk;
  Pair pair;
  TESSERA_SETUP_PAIR(pair, kBytes, kBytes, seed);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::unique_ptr<Transfer>> transfers;
      for (int i = 0; i < kTransfersPerThread; ++i) {
        const uint64_t offset = (t * kTransfersPerThread + i) * kChunk;
        // Two segments per transfer, swapped halves, so the scatter is not the identity.
        const std::vector<Segment> segments = {pair.Seg(offset, offset + kChunk / 2, kChunk / 2),
                                               pair.Seg(offset + kChunk / 2, offset, kChunk / 2)};
        auto transfer = pair.sender->Submit(pair.peer, segments);
        if (!transfer.ok()) {
          ++failures;
          continue;
        }
        transfers.push_back(*std::move(transfer));
      }
      for (auto& transfer : transfers) {
        if (!transfer->Wait(kWait).ok()) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  for (uint64_t offset = 0; offset < kBytes; offset += kChunk) {
    ASSERT_EQ(
        std::memcmp(pair.dst.data() + offset, pair.src.data() + offset + kChunk / 2, kChunk / 2), 0)
        << offset;
    ASSERT_EQ(
        std::memcmp(pair.dst.data() + offset + kChunk / 2, pair.src.data() + offset, kChunk / 2), 0)
        << offset;
  }
}

TEST_P(TransportConformanceTest, PeerDestroyedBeforeSubmitFailsUnavailable) {
  Pair pair;
  TESSERA_SETUP_PAIR(pair, 4096, 4096, 7);
  pair.receiver.reset();
  const Segment segment = pair.Seg(0, 0, 4096);
  const absl::Time start = absl::Now();
  auto transfer = pair.sender->Submit(pair.peer, {&segment, 1});
  absl::Status status = transfer.status();
  if (transfer.ok()) status = (*transfer)->Wait(kWait);
  EXPECT_TRUE(absl::IsUnavailable(status)) << status;
  // Within the peer_timeout (5 s) and some slack; never a hang.
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
}

TEST_P(TransportConformanceTest, PeerDestroyedDuringTransferEndsWithoutHanging) {
  constexpr uint64_t kBytes = uint64_t{64} << 20;
  Pair pair;
  TESSERA_SETUP_PAIR(pair, kBytes, kBytes, 8);
  std::vector<Segment> segments;
  for (uint64_t offset = 0; offset < kBytes; offset += 1 << 20) {
    segments.push_back(pair.Seg(offset, offset, 1 << 20));
  }
  auto transfer = pair.sender->Submit(pair.peer, segments);
  ASSERT_TRUE(transfer.ok()) << transfer.status();
  pair.receiver.reset();
  const absl::Status status = (*transfer)->Wait(kWait);
  EXPECT_TRUE(status.ok() || absl::IsUnavailable(status)) << status;
}

TEST_P(TransportConformanceTest, DeregisterOfARegionInUseIsFailedPrecondition) {
  Pair pair;
  TESSERA_SETUP_PAIR(pair, 8192, 8192, 9);
  absl::Notification entered;
  absl::Notification release;
  pair.listener.HoldNextAdmit(&entered, &release);
  const Segment segment = pair.Seg(0, 0, 8192);
  auto transfer = pair.sender->Submit(pair.peer, {&segment, 1});
  ASSERT_TRUE(transfer.ok()) << transfer.status();
  ASSERT_TRUE(entered.WaitForNotificationWithTimeout(kWait));
  const absl::Status in_use = pair.sender->DeregisterMemory(pair.src_region);
  release.Notify();
  EXPECT_TRUE(absl::IsFailedPrecondition(in_use)) << in_use;
  EXPECT_TRUE((*transfer)->Wait(kWait).ok());
  EXPECT_TRUE(pair.sender->DeregisterMemory(pair.src_region).ok());
  EXPECT_TRUE(absl::IsNotFound(pair.sender->DeregisterMemory(pair.src_region)));
}

TEST_P(TransportConformanceTest, RegisterMemoryRejectsNullAndEmpty) {
  std::unique_ptr<Transport> transport;
  TESSERA_MAKE_OR_RETURN(transport, "t");
  char byte = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(transport->RegisterMemory(nullptr, 16).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(transport->RegisterMemory(&byte, 0).status()));
  EXPECT_TRUE(absl::IsNotFound(transport->DeregisterMemory(12345)));
}

TEST_P(TransportConformanceTest, MalformedDescriptorIsInvalidArgument) {
  std::unique_ptr<Transport> transport;
  TESSERA_MAKE_OR_RETURN(transport, "t");
  for (const std::string& descriptor : {std::string(), std::string("not a descriptor"),
                                        std::string("\x08\x96\x01\xff\xff garbage", 12)}) {
    EXPECT_TRUE(absl::IsInvalidArgument(transport->Connect(descriptor).status()));
  }
}

TEST_P(TransportConformanceTest, DisconnectForgetsThePeer) {
  Pair pair;
  TESSERA_SETUP_PAIR(pair, 4096, 4096, 10);
  ASSERT_TRUE(pair.sender->Disconnect(pair.peer).ok());
  EXPECT_TRUE(absl::IsNotFound(pair.sender->Disconnect(pair.peer)));
  const Segment segment = pair.Seg(0, 0, 4096);
  EXPECT_TRUE(absl::IsInvalidArgument(pair.sender->Submit(pair.peer, {&segment, 1}).status()));
  EXPECT_TRUE(AllUntouched(pair.dst));
}

TEST_P(TransportConformanceTest, RegionsRegisteredAfterConnectNeedAFreshDescriptor) {
  Pair pair;
  TESSERA_SETUP_PAIR(pair, 4096, 4096, 11);
  std::vector<uint8_t> late(4096, kUntouched);
  auto late_region = pair.receiver->RegisterMemory(late.data(), late.size());
  ASSERT_TRUE(late_region.ok());
  const Segment segment{pair.src_region, 0, *late_region, 0, 4096, 0};
  EXPECT_TRUE(absl::IsInvalidArgument(pair.sender->Submit(pair.peer, {&segment, 1}).status()));
  auto descriptor = pair.receiver->LocalDescriptor();
  ASSERT_TRUE(descriptor.ok());
  auto peer = pair.sender->Connect(*descriptor);
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_NE(*peer, pair.peer);
  auto transfer = pair.sender->Submit(*peer, {&segment, 1});
  ASSERT_TRUE(transfer.ok()) << transfer.status();
  ASSERT_TRUE((*transfer)->Wait(kWait).ok());
  EXPECT_EQ(std::memcmp(late.data(), pair.src.data(), 4096), 0);
  transfer->reset();
  pair.sender.reset();  // before `late`
  pair.receiver.reset();
}

}  // namespace tessera::kvtransfer::testing
