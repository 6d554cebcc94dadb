// One conformance suite for the Store implementations (in memory; gRPC client + StoreServer),
// plus the server's own failure behaviour.
#include <memory>
#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "parallel/comm/inproc/in_memory_store.h"
#include "parallel/comm/rpc/grpc_store.h"
#include "parallel/comm/rpc/store_server.h"
#include "tests/parallel/comm/test_status.h"

namespace tessera::parallel {
namespace {

// A store under test, with whatever keeps it alive.
struct StoreUnderTest {
  std::unique_ptr<StoreServer> server;  // gRPC only
  std::unique_ptr<Store> store;
};

StoreUnderTest MakeStore(const std::string& kind) {
  StoreUnderTest made;
  if (kind == "memory") {
    made.store = std::make_unique<InMemoryStore>();
    return made;
  }
  auto server = StoreServer::Create("127.0.0.1:0");
  if (!server.ok()) {
    ADD_FAILURE() << server.status();
    return made;
  }
  made.server = *std::move(server);
  auto client = GrpcStore::Create("127.0.0.1:" + std::to_string(made.server->port()));
  if (!client.ok()) {
    ADD_FAILURE() << client.status();
    return made;
  }
  made.store = *std::move(client);
  return made;
}

class StoreConformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    made_ = MakeStore(GetParam());
    ASSERT_NE(made_.store, nullptr);
  }
  Store& store() { return *made_.store; }
  StoreUnderTest made_;
};

TEST_P(StoreConformance, GetReturnsWhatWasSet) {
  COMM_ASSERT_OK(store().Set("nccl/id", "abc"));
  auto value = store().Get("nccl/id", absl::Seconds(5));
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, "abc");
}

TEST_P(StoreConformance, SetOverwritesAndKeepsBinaryValues) {
  const std::string binary("\0\x01\xff tail", 7);
  COMM_ASSERT_OK(store().Set("k", "first"));
  COMM_ASSERT_OK(store().Set("k", binary));
  auto value = store().Get("k", absl::Seconds(5));
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, binary);
}

TEST_P(StoreConformance, GetWaitsForALaterSetFromAnotherThread) {
  // The getter starts first and must wait; the setter's delay only makes that the likely order,
  // the result is the same either way.
  std::thread setter([this] {
    absl::SleepFor(absl::Milliseconds(100));
    COMM_EXPECT_OK(store().Set("late", "value"));
  });
  auto value = store().Get("late", absl::Seconds(20));
  setter.join();
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, "value");
}

TEST_P(StoreConformance, GetTimesOutNamingTheKey) {
  const absl::Time start = absl::Now();
  auto value = store().Get("never/set", absl::Milliseconds(100));
  EXPECT_EQ(value.status().code(), absl::StatusCode::kDeadlineExceeded) << value.status();
  EXPECT_NE(value.status().message().find("never/set"), absl::string_view::npos) << value.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

INSTANTIATE_TEST_SUITE_P(All, StoreConformance, ::testing::Values("memory", "grpc"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

TEST(GrpcStoreTest, ServerDownIsUnavailable) {
  auto server = StoreServer::Create("127.0.0.1:0");
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  (*server)->Shutdown(absl::Seconds(1));
  server->reset();
  auto client = GrpcStore::Create("127.0.0.1:" + std::to_string(port));
  ASSERT_TRUE(client.ok()) << client.status();
  auto value = (*client)->Get("k", absl::Seconds(1));
  EXPECT_EQ(value.status().code(), absl::StatusCode::kUnavailable) << value.status();
  EXPECT_NE(value.status().message().find("RendezvousStore.Get: UNAVAILABLE"),
            absl::string_view::npos)
      << value.status();
  const absl::Status set = (*client)->Set("k", "v");
  EXPECT_EQ(set.code(), absl::StatusCode::kUnavailable) << set;
}

TEST(GrpcStoreTest, ShutdownAnswersAWaitingGet) {
  auto server = StoreServer::Create("127.0.0.1:0");
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = GrpcStore::Create("127.0.0.1:" + std::to_string((*server)->port()));
  ASSERT_TRUE(client.ok()) << client.status();
  const absl::Time start = absl::Now();
  std::thread stopper([&server] {
    absl::SleepFor(absl::Milliseconds(100));
    (*server)->Shutdown(absl::Seconds(1));
  });
  auto value = (*client)->Get("k", absl::Seconds(30));
  stopper.join();
  EXPECT_EQ(value.status().code(), absl::StatusCode::kUnavailable) << value.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST(GrpcStoreTest, ManyClientsRendezvous) {
  auto server = StoreServer::Create("127.0.0.1:0");
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string target = "127.0.0.1:" + std::to_string((*server)->port());
  constexpr int kRanks = 4;
  std::vector<std::thread> ranks;
  for (int r = 0; r < kRanks; ++r) {
    ranks.emplace_back([&target, r] {
      auto store = GrpcStore::Create(target);
      ASSERT_TRUE(store.ok()) << store.status();
      COMM_ASSERT_OK((*store)->Set("rank/" + std::to_string(r), std::to_string(r * r)));
      for (int peer = 0; peer < kRanks; ++peer) {
        auto value = (*store)->Get("rank/" + std::to_string(peer), absl::Seconds(20));
        ASSERT_TRUE(value.ok()) << value.status();
        EXPECT_EQ(*value, std::to_string(peer * peer));
      }
    });
  }
  for (std::thread& rank : ranks) rank.join();
}

TEST(StoreServerTest, UnbindableAddressIsUnavailable) {
  auto server = StoreServer::Create("256.0.0.1:0");
  EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable) << server.status();
}

TEST(GrpcStoreTest, EmptyTargetIsInvalid) {
  EXPECT_EQ(GrpcStore::Create("").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tessera::parallel
