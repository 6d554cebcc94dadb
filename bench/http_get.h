// Small HTTP helpers over cpp-httplib for the benchmark's side requests (GET /v1/models,
// GET /metrics). httplib stays out of the headers; nothing here throws.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tessera::bench {

struct HttpUrl {
  std::string host;
  int port = 80;
  std::string path = "/";
};

// "http://host[:port][/path]" (only http). kInvalidArgument naming what is wrong.
absl::StatusOr<HttpUrl> ParseHttpUrl(absl::string_view url);

// GET `path` from host:port; the body of a 200 answer. kUnavailable naming the address when the
// server cannot be reached within `timeout`; kFailedPrecondition with the status and body for
// any other status.
// `api_key`, when set, goes as "Authorization: Bearer KEY".
absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path,
                                    absl::Duration timeout, const std::string& api_key = "");

}  // namespace tessera::bench
