#include "bench/http_get.h"

#include <chrono>
#include <exception>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/net.h"
#include "httplib.h"

namespace tessera::bench {

absl::StatusOr<HttpUrl> ParseHttpUrl(absl::string_view url) {
  constexpr absl::string_view kScheme = "http://";
  if (!absl::StartsWith(url, kScheme)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", url, "': expected http://host[:port][/path]"));
  }
  absl::string_view rest = url.substr(kScheme.size());
  HttpUrl out;
  const size_t slash = rest.find('/');
  if (slash != absl::string_view::npos) {
    out.path = std::string(rest.substr(slash));
    rest = rest.substr(0, slash);
  }
  // host[:port], an IPv6 host in brackets ("[::1]:8000").
  auto error = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("'", url, "': ", what));
  };
  absl::string_view host = rest;
  std::optional<absl::string_view> port;
  if (absl::StartsWith(rest, "[")) {
    const size_t close = rest.find(']');
    if (close == absl::string_view::npos) return error("no ']' after an IPv6 host");
    host = rest.substr(1, close - 1);
    absl::string_view after = rest.substr(close + 1);
    if (!after.empty()) {
      if (!absl::ConsumePrefix(&after, ":")) return error("expected ':port' after ']'");
      port = after;
    }
  } else if (const size_t colon = rest.find(':'); colon != absl::string_view::npos) {
    if (rest.rfind(':') != colon) return error("an IPv6 host goes in brackets (http://[::1]:8000)");
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (port.has_value() &&
      (!absl::SimpleAtoi(*port, &out.port) || out.port <= 0 || out.port > 65535)) {
    return error("bad port");
  }
  if (host.empty()) return error("no host");
  out.host = std::string(host);
  return out;
}

absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path,
                                    absl::Duration timeout, const std::string& api_key) {
  const std::string where = absl::StrCat("http://", HostPort(host, port), path);
  try {
    httplib::Client client(host, port);
    const auto micros = std::chrono::microseconds(absl::ToInt64Microseconds(timeout));
    client.set_connection_timeout(micros);
    client.set_read_timeout(micros);
    client.set_write_timeout(micros);
    httplib::Headers headers;
    if (!api_key.empty()) headers.emplace("Authorization", absl::StrCat("Bearer ", api_key));
    httplib::Result result = client.Get(path.c_str(), headers);
    if (!result) {
      return absl::UnavailableError(absl::StrCat(
          "GET ", where, ": cannot reach the server: ", httplib::to_string(result.error())));
    }
    if (result->status != 200) {
      return absl::FailedPreconditionError(absl::StrCat("GET ", where, ": HTTP ", result->status,
                                                        ": ", result->body.substr(0, 200)));
    }
    return result->body;
  } catch (const std::exception& e) {  // httplib may throw (std::bad_alloc, std::system_error)
    return absl::InternalError(absl::StrCat("GET ", where, ": ", e.what()));
  }
}

}  // namespace tessera::bench
