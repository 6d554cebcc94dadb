// ParseHttpUrl: what --base-url and --metrics-url accept, IPv6 hosts in brackets included.
#include "bench/http_get.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tessera::bench {
namespace {

using ::testing::HasSubstr;

TEST(ParseHttpUrlTest, HostPortAndPath) {
  absl::StatusOr<HttpUrl> url = ParseHttpUrl("http://node-a:8000/metrics");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->host, "node-a");
  EXPECT_EQ(url->port, 8000);
  EXPECT_EQ(url->path, "/metrics");
  url = ParseHttpUrl("http://10.0.0.1");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->host, "10.0.0.1");
  EXPECT_EQ(url->port, 80);
  EXPECT_EQ(url->path, "/");
}

TEST(ParseHttpUrlTest, IPv6HostsAreBracketed) {
  absl::StatusOr<HttpUrl> url = ParseHttpUrl("http://[fd77::1]:8000/v1");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->host, "fd77::1");
  EXPECT_EQ(url->port, 8000);
  EXPECT_EQ(url->path, "/v1");
  url = ParseHttpUrl("http://[::1]");
  ASSERT_TRUE(url.ok()) << url.status();
  EXPECT_EQ(url->host, "::1");
  EXPECT_EQ(url->port, 80);
}

TEST(ParseHttpUrlTest, MistakesAreNamed) {
  const auto message = [](const char* url) {
    return std::string(ParseHttpUrl(url).status().message());
  };
  EXPECT_THAT(message("https://a:1"), HasSubstr("expected http://host[:port][/path]"));
  EXPECT_THAT(message("http://fd77::1:8000"), HasSubstr("an IPv6 host goes in brackets"));
  EXPECT_THAT(message("http://[fd77::1:8000"), HasSubstr("no ']' after an IPv6 host"));
  EXPECT_THAT(message("http://[fd77::1]8000"), HasSubstr("expected ':port' after ']'"));
  EXPECT_THAT(message("http://a:0"), HasSubstr("bad port"));
  EXPECT_THAT(message("http://a:"), HasSubstr("bad port"));
  EXPECT_THAT(message("http://a:99999"), HasSubstr("bad port"));
  EXPECT_THAT(message("http://:8000"), HasSubstr("no host"));
  EXPECT_THAT(message("http://[]:8000"), HasSubstr("no host"));
}

}  // namespace
}  // namespace tessera::bench
