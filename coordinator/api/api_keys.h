// API keys for the public APIs, as vLLM's --api-key: when any are configured, a request must
// carry "Authorization: Bearer KEY" (the scheme in any case) with one of them. OpenAI HTTP answers
// 401 {"error": "Unauthorized"} otherwise, KServe gRPC UNAUTHENTICATED (the key in the
// "authorization" metadata, which tritonclient sends with headers={...}). Health, readiness,
// metrics and version stay open, for probes and scrapers.
//
// Keys are compared in time that depends on the configured keys' lengths only, not on how much
// of a guess matches.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tessera::coordinator::api {

class ApiKeys {
 public:
  ApiKeys() = default;
  explicit ApiKeys(std::vector<std::string> keys) : keys_(std::move(keys)) {}

  // kInvalidArgument for an empty key or one with whitespace or control characters (it could
  // not be sent in a header), naming `flag` and the key's position, never the key.
  static absl::Status Validate(const std::vector<std::string>& keys, absl::string_view flag);

  bool enabled() const { return !keys_.empty(); }
  // Whether an Authorization header value ("Bearer KEY") names a configured key; always true
  // when none is configured.
  bool Allows(absl::string_view authorization) const;

 private:
  std::vector<std::string> keys_;
};

}  // namespace tessera::coordinator::api
