// RegistrationClient against a fake Registry service in this process (ports bound to 0).
#include "worker/rpc/registration.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tessera/v1/replica.grpc.pb.h"
#include "tests/worker/rpc/fake_registry.h"

namespace tessera::worker::rpc {
namespace {

namespace v1 = ::tessera::v1;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(30);
using testing::FakeRegistry;
using testing::FreePort;
using testing::Registry;
using testing::StartRegistry;

v1::ReplicaDescriptor Descriptor() {
  v1::ReplicaDescriptor d;
  d.set_name("mixed-0");
  d.set_address("127.0.0.1:5555");
  d.set_role("mixed");
  d.set_model_name("tiny");
  d.set_max_model_len(256);
  d.set_vocab_size(100);
  d.set_block_size(16);
  d.set_kv_blocks_total(64);
  d.set_max_num_seqs(8);
  d.set_tensor_parallel_size(1);
  d.set_pipeline_parallel_size(1);
  return d;
}

RegistrationOptions FastOptions(const std::string& coordinator) {
  RegistrationOptions o;
  o.coordinator = coordinator;
  o.register_timeout = kWait;
  o.rpc_timeout = absl::Seconds(5);
  o.initial_backoff = absl::Milliseconds(10);
  o.max_backoff = absl::Milliseconds(100);
  return o;
}

StatsCallback Running(int32_t n) {
  return [n] {
    v1::ReplicaStats stats;
    stats.set_num_requests_running(n);
    return stats;
  };
}

TEST(RegistrationClientTest, RegistersThenHeartbeatsWithStats) {
  auto registry = StartRegistry(0);
  ASSERT_NE(registry, nullptr);
  auto client =
      RegistrationClient::Create(Descriptor(), Running(7), FastOptions(registry->address()));
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->replica_id(), "lease-1");
  EXPECT_EQ((*client)->registrations(), 1);
  const std::vector<v1::ReplicaDescriptor> registered = registry->service->registered();
  ASSERT_EQ(registered.size(), 1u);
  EXPECT_EQ(registered[0].SerializeAsString(), Descriptor().SerializeAsString());
  ASSERT_TRUE(registry->service->Await([](FakeRegistry& r) { return r.heartbeats_.size() >= 3; }));
  ASSERT_TRUE(registry->service->Await([](FakeRegistry& r) {
    for (const auto& hb : r.heartbeats_) {
      if (hb.replica_id() != "lease-1" || hb.stats().num_requests_running() != 7) return false;
    }
    return true;
  }));
}

TEST(RegistrationClientTest, HandsTheCoordinatorsKvPeersToItsCallback) {
  auto registry = StartRegistry(0);
  ASSERT_NE(registry, nullptr);
  ASSERT_TRUE(registry->service->Await([](FakeRegistry& r) {
    r.kv_peers_ = {"decode-0 descriptor", "decode-1 descriptor"};
    return true;
  }));
  absl::Mutex mu;
  std::vector<std::string> seen;
  RegistrationOptions options = FastOptions(registry->address());
  options.on_kv_peers = [&](const std::vector<std::string>& peers) {
    absl::MutexLock lock(&mu);
    seen = peers;
  };
  auto client = RegistrationClient::Create(Descriptor(), Running(0), options);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE(registry->service->Await([](FakeRegistry& r) { return r.heartbeats_.size() >= 2; }));
  (*client)->Stop();
  absl::MutexLock lock(&mu);
  EXPECT_EQ(seen, (std::vector<std::string>{"decode-0 descriptor", "decode-1 descriptor"}));
}

TEST(RegistrationClientTest, HandsTheReservationsToRenewToItsCallback) {
  auto registry = StartRegistry(0);
  ASSERT_NE(registry, nullptr);
  ASSERT_TRUE(registry->service->Await([](FakeRegistry& r) {
    r.kv_leases_ = {7, uint64_t{1} << 63};
    return true;
  }));
  absl::Mutex mu;
  std::vector<uint64_t> seen;
  RegistrationOptions options = FastOptions(registry->address());
  options.on_kv_leases = [&](const std::vector<uint64_t>& tokens) {
    absl::MutexLock lock(&mu);
    seen = tokens;
  };
  auto client = RegistrationClient::Create(Descriptor(), Running(0), options);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE(registry->service->Await([](FakeRegistry& r) { return r.heartbeats_.size() >= 2; }));
  (*client)->Stop();
  absl::MutexLock lock(&mu);
  EXPECT_EQ(seen, (std::vector<uint64_t>{7, uint64_t{1} << 63}));
}

TEST(RegistrationClientTest, RegistersAgainWhenTheLeaseIsUnknown) {
  auto registry = StartRegistry(0);
  ASSERT_NE(registry, nullptr);
  auto client =
      RegistrationClient::Create(Descriptor(), Running(1), FastOptions(registry->address()));
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE(registry->service->Await([](FakeRegistry& r) { return !r.heartbeats_.empty(); }));
  registry->service->Forget();
  ASSERT_TRUE(registry->service->Await([](FakeRegistry& r) {
    return r.registered_.size() == 2 && !r.heartbeats_.empty() &&
           r.heartbeats_.back().replica_id() == "lease-2";
  }));
  EXPECT_EQ((*client)->replica_id(), "lease-2");
  EXPECT_EQ((*client)->registrations(), 2);
}

TEST(RegistrationClientTest, RetriesWhileTheRegistryIsUnavailable) {
  auto registry = StartRegistry(0);
  ASSERT_NE(registry, nullptr);
  registry->service->FailRegisters(3);
  auto client =
      RegistrationClient::Create(Descriptor(), Running(0), FastOptions(registry->address()));
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE(registry->service->Await([](FakeRegistry& r) { return r.register_calls_ == 4; }));
  EXPECT_EQ((*client)->registrations(), 1);
}

TEST(RegistrationClientTest, WaitsForARegistryThatStartsLate) {
  const int port = FreePort();
  ASSERT_GT(port, 0);
  absl::StatusOr<std::unique_ptr<RegistrationClient>> client;
  std::thread registering([&] {
    client = RegistrationClient::Create(Descriptor(), Running(0),
                                        FastOptions(absl::StrCat("127.0.0.1:", port)));
  });
  std::unique_ptr<Registry> registry = StartRegistry(port);
  if (registry == nullptr) {
    registering.join();
    GTEST_SKIP() << "port " << port << " was taken meanwhile";
  }
  registering.join();
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ(registry->service->registered().size(), 1u);
  (*client)->Stop();  // before the registry goes away
  EXPECT_EQ(registry->service->deregistered().size(), 1u);
}

TEST(RegistrationClientTest, GivesUpWithUnavailableNamingTheAddress) {
  const int port = FreePort();
  ASSERT_GT(port, 0);
  RegistrationOptions options = FastOptions(absl::StrCat("127.0.0.1:", port));
  options.register_timeout = absl::Milliseconds(200);
  auto client = RegistrationClient::Create(Descriptor(), Running(0), options);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(client.status().message(), HasSubstr(absl::StrCat("127.0.0.1:", port)));
}

TEST(RegistrationClientTest, ARefusalIsNotRetried) {
  auto registry = StartRegistry(0);
  ASSERT_NE(registry, nullptr);
  registry->service->Refuse();
  auto client =
      RegistrationClient::Create(Descriptor(), Running(0), FastOptions(registry->address()));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(client.status().message(), HasSubstr("model mismatch"));
  EXPECT_TRUE(registry->service->Await([](FakeRegistry& r) { return r.register_calls_ == 1; }));
}

TEST(RegistrationClientTest, StopDeregisters) {
  auto registry = StartRegistry(0);
  ASSERT_NE(registry, nullptr);
  auto client =
      RegistrationClient::Create(Descriptor(), Running(0), FastOptions(registry->address()));
  ASSERT_TRUE(client.ok()) << client.status();
  (*client)->Stop();
  (*client)->Stop();  // idempotent
  EXPECT_EQ(registry->service->deregistered(), std::vector<std::string>{"lease-1"});
  client->reset();  // the destructor does not deregister twice
  EXPECT_EQ(registry->service->deregistered().size(), 1u);
}

TEST(RegistrationClientTest, SurvivesACoordinatorRestart) {
  auto first = StartRegistry(0);
  ASSERT_NE(first, nullptr);
  const int port = first->port;
  auto client = RegistrationClient::Create(Descriptor(), Running(2), FastOptions(first->address()));
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE(first->service->Await([](FakeRegistry& r) { return !r.heartbeats_.empty(); }));
  first->Stop();  // heartbeats now fail; the client keeps retrying
  std::unique_ptr<Registry> second = StartRegistry(port, "restarted-");
  if (second == nullptr) GTEST_SKIP() << "port " << port << " could not be bound again";
  // The restarted coordinator knows no lease: the client registers with it again.
  ASSERT_TRUE(second->service->Await([](FakeRegistry& r) {
    return r.registered_.size() == 1 && !r.heartbeats_.empty() &&
           r.heartbeats_.back().replica_id() == "restarted-1" &&
           r.heartbeats_.back().stats().num_requests_running() == 2;
  }));
  EXPECT_EQ((*client)->registrations(), 2);
  (*client)->Stop();  // before the registry goes away
}

}  // namespace
}  // namespace tessera::worker::rpc
