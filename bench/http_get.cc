#include "bench/http_get.h"

#include <chrono>
#include <exception>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
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
  const size_t colon = rest.rfind(':');
  if (colon != absl::string_view::npos && rest.find(']') == absl::string_view::npos) {
    if (!absl::SimpleAtoi(rest.substr(colon + 1), &out.port) || out.port <= 0 || out.port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("'", url, "': bad port"));
    }
    rest = rest.substr(0, colon);
  }
  if (rest.empty()) return absl::InvalidArgumentError(absl::StrCat("'", url, "': no host"));
  out.host = std::string(rest);
  return out;
}

absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path,
                                    absl::Duration timeout) {
  const std::string where = absl::StrCat("http://", host, ":", port, path);
  try {
    httplib::Client client(host, port);
    const auto micros = std::chrono::microseconds(absl::ToInt64Microseconds(timeout));
    client.set_connection_timeout(micros);
    client.set_read_timeout(micros);
    client.set_write_timeout(micros);
    httplib::Result result = client.Get(path.c_str());
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
