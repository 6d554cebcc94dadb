#include "common/net.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tessera {
namespace {

TEST(NetTest, HostPortBracketsIpv6) {
  EXPECT_EQ(HostPort("node0", 29500), "node0:29500");
  EXPECT_EQ(HostPort("::1", 8000), "[::1]:8000");
  EXPECT_EQ(HostPort("[fe80::1]", 8000), "[fe80::1]:8000");
}

TEST(NetTest, SpotsLoopbackAndWildcardHosts) {
  for (const char* host : {"localhost", "127.0.0.1", "127.0.1.1", "::1", "[::1]"}) {
    EXPECT_TRUE(IsLoopbackHost(host)) << host;
    EXPECT_FALSE(IsWildcardHost(host)) << host;
  }
  for (const char* host : {"0.0.0.0", "::", "[::]", ""}) {
    EXPECT_TRUE(IsWildcardHost(host)) << host;
    EXPECT_FALSE(IsLoopbackHost(host)) << host;
  }
  for (const char* host : {"10.0.0.2", "node-a", "fe80::1", "1270.0.0.1"}) {
    EXPECT_FALSE(IsLoopbackHost(host)) << host;
    EXPECT_FALSE(IsWildcardHost(host)) << host;
  }
}

TEST(NetTest, HostOfAddressesAndGrpcPeers) {
  EXPECT_EQ(HostOf("node-a:8002"), "node-a");
  EXPECT_EQ(HostOf("[::1]:8000"), "::1");
  EXPECT_EQ(HostOf("ipv4:10.0.0.2:5000"), "10.0.0.2");
  EXPECT_EQ(HostOf("ipv6:[fe80::1]:5000"), "fe80::1");
  EXPECT_EQ(HostOf("ipv6:%5B::1%5D:5000"), "::1");  // as grpc::ServerContext::peer() gives it
  EXPECT_TRUE(IsLoopbackHost(HostOf("ipv6:%5B::1%5D:5000")));
  EXPECT_EQ(HostOf("node-a"), "node-a");
  EXPECT_EQ(HostOf("fe80::1"), "fe80::1");
}

TEST(NetTest, TheLocalAddressTowardLoopbackIsLoopback) {
  absl::StatusOr<std::string> local = LocalAddressToward("127.0.0.1");
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ(*local, "127.0.0.1");
  local = LocalAddressToward("localhost");
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_TRUE(IsLoopbackHost(*local)) << *local;
}

TEST(NetTest, ThisHostHasAName) { EXPECT_FALSE(ThisHostName().empty()); }

TEST(NetTest, ListensWhereThePeerCanReachAndAdvertisesWhatItCanDial) {
  EXPECT_EQ(ListenHostFor("localhost"), "127.0.0.1");
  EXPECT_EQ(ListenHostFor("127.0.0.1"), "127.0.0.1");
  EXPECT_EQ(ListenHostFor("[::1]"), "::1");
  EXPECT_EQ(ListenHostFor("node-a"), "0.0.0.0");
  EXPECT_EQ(ListenHostFor("10.0.0.1"), "0.0.0.0");
  EXPECT_EQ(AdvertiseHostToward("127.0.0.1"), "127.0.0.1");
  EXPECT_EQ(AdvertiseHostToward("::1"), "::1");
  // Another machine: this one's address on the route there, never loopback; without a route,
  // the hostname.
  const std::string toward = AdvertiseHostToward("192.0.2.7");
  absl::StatusOr<std::string> route = LocalAddressToward("192.0.2.7");
  EXPECT_EQ(toward, route.ok() && !IsLoopbackHost(*route) ? *route : ThisHostName()) << toward;
  EXPECT_EQ(AdvertiseHostToward("no-such-host.invalid"), ThisHostName());
}

TEST(NetTest, BindableAddressesAreThisMachines) {
  absl::StatusOr<std::string> loopback = BindableAddress("localhost");
  ASSERT_TRUE(loopback.ok()) << loopback.status();
  EXPECT_TRUE(IsLoopbackHost(*loopback)) << *loopback;
  EXPECT_THAT(std::string(BindableAddress("192.0.2.7").status().message()),
              ::testing::HasSubstr("no address of host '192.0.2.7' is on this machine"));
  EXPECT_THAT(std::string(BindableAddress("no-such-host.invalid").status().message()),
              ::testing::HasSubstr("host 'no-such-host.invalid' does not resolve"));
}

TEST(NetTest, TellsThisMachinesAddressesFromOthers) {
  EXPECT_TRUE(IsLocalAddress("127.0.0.1"));
  EXPECT_FALSE(IsLocalAddress("192.0.2.7"));  // documentation range: nobody's
  EXPECT_FALSE(IsLocalAddress("localhost"));  // a name, not an address
  absl::StatusOr<std::string> own = LocalAddressToward("192.0.2.7");
  if (own.ok()) {  // no route at all: nothing to check
    EXPECT_TRUE(IsLocalAddress(*own)) << *own;
  }
}

TEST(NetTest, AnUnknownHostIsAClearError) {
  absl::StatusOr<std::string> local = LocalAddressToward("no-such-host.invalid");
  ASSERT_FALSE(local.ok());
  EXPECT_NE(std::string(local.status().message()).find("cannot resolve no-such-host.invalid"),
            std::string::npos)
      << local.status();
}

}  // namespace
}  // namespace tessera
