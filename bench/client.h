// The seam between the benchmark and a public API: a RequestClient sends one streaming request
// and times its responses. Two implementations: KServe v2 gRPC (kserve_client.cc) and OpenAI
// HTTP with server-sent events (openai_client.cc).
//
// Create*Client probes the server (kUnavailable naming the address when it cannot be reached
// within connect_timeout) and finds the model (kNotFound when the named one is not served).
// Send never fails as a call: a request that fails (refused, cut, timed out) comes back as a
// record with success = false and the reason, as vLLM counts it. Send is thread-safe; the
// client must outlive every Send.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bench/metrics.h"
#include "bench/workload.h"
#include "common/clock.h"

namespace tessera::bench {

struct ClientOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string model;  // empty: the first the server lists
  bool ignore_eos = true;
  double temperature = 0.0;
  std::string structured_outputs;  // BenchConfig::structured_outputs
  absl::Duration request_timeout = absl::Minutes(10);
  absl::Duration connect_timeout = absl::Seconds(10);
  const Clock* clock = &RealClock::Get();  // MonotonicNow() times the responses
  // Sent as "Authorization: Bearer KEY" (HTTP) or the "authorization" metadata (gRPC); empty:
  // none.
  std::string api_key;
};

// What the server says about itself.
struct ServerInfo {
  std::string model;          // the served name requests use
  int64_t vocab_size = 0;     // 0: not reported
  int64_t max_model_len = 0;  // 0: not reported
};

class RequestClient {
 public:
  virtual ~RequestClient() = default;
  virtual const ServerInfo& info() const = 0;
  // "tessera-grpc 127.0.0.1:8001", for messages.
  virtual std::string Describe() const = 0;
  // Sends `request`, waits for its last response (at most request_timeout) and returns what
  // happened, times measured from `run_start` (a MonotonicNow() value).
  virtual RequestRecord Send(const RequestSpec& request, absl::Time run_start) = 0;
};

absl::StatusOr<std::unique_ptr<RequestClient>> CreateKServeClient(const ClientOptions& options);
absl::StatusOr<std::unique_ptr<RequestClient>> CreateOpenAiClient(const ClientOptions& options);

// Times one request's responses into a RequestRecord: TTFT at the first response carrying
// tokens, an ITL sample between successive ones, E2E at the last response of any kind.
class ResponseTimer {
 public:
  ResponseTimer(const Clock& clock, absl::Time run_start, int64_t prompt_tokens,
                RequestRecord* record);
  // A response arrived now carrying `tokens` output tokens (0: a response without tokens).
  void OnResponse(int64_t tokens);
  // The request ended well (success when at least one response carried tokens) or badly.
  void Succeed();
  void Fail(std::string error);

 private:
  const Clock& clock_;
  RequestRecord* record_;
  absl::Time sent_;
  absl::Time last_token_response_;
  absl::Time last_response_;
  bool any_response_ = false;
};

}  // namespace tessera::bench
