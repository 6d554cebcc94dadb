// The OpenAI-compatible HTTP API over a coordinator::Frontend, with vLLM's OpenAI server as the
// model for every endpoint and field (the deviations are listed atop openai_http.cc):
//   GET  /v1/models                the served model under each of its names
//   POST /v1/completions           text completions, streamed as SSE with "stream": true
//   POST /v1/chat/completions      chat completions (the model's chat template), SSE as above
//   GET  /health                   200 when Frontend::Ready(), else 503
//   GET|POST /ping                 the same (SageMaker's health check, as vLLM)
//   GET  /metrics                  Frontend::RenderMetrics() (Prometheus text format 0.0.4)
//   GET  /version                  {"version": options.version}
//   POST /tokenize                 a prompt, or messages through the chat template, as token ids
//                                  (vLLM's: count, max_model_len, tokens, token_strs)
//   POST /detokenize               token ids as text (vLLM's: {"prompt": ...})
// With api_keys, every path but /health, /ping, /version and /metrics needs "Authorization:
// Bearer KEY" (api_keys.h); 401 {"error": "Unauthorized"} otherwise.
// Errors are vLLM's body {"error": {"message", "type", "param", "code"}} with the status of
// openai_protocol.h's ErrorFromStatus; 404 for unknown paths, 405 for a known path with the wrong
// method, 413 for bodies over max_body_bytes. An X-Request-Id header names the request (ids
// "cmpl-<it>", "chatcmpl-<it>") and is echoed back.
//
// Threads: cpp-httplib accepts on one thread and serves each connection on a pool thread (up to
// `num_threads` connections at once; more wait in its queue). A handler blocks only its own
// thread: it polls the GenerateStream with `poll_interval` and gives up the request (the stream
// is destroyed, which cancels it on its replica) when the client has gone or on Shutdown.
// Ownership: the server borrows the Frontend, which must outlive it.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/api/api_keys.h"
#include "coordinator/frontend.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace tessera::coordinator::api {

struct OpenAiHttpOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port (read it back with port())
  size_t max_body_bytes = 16 << 20;
  // Pool threads = connections served at once (a streaming response holds one for its length).
  int num_threads = 256;
  // Names the model answers to (/v1/models lists each; responses carry the first). Empty: the
  // Frontend's model().name.
  std::vector<std::string> served_model_names;
  std::string version = "tessera";
  // How long a handler waits on GenerateStream::Next before checking the connection and Shutdown.
  absl::Duration poll_interval = absl::Milliseconds(50);
  // An SSE comment (": keep-alive") after this long without output, so that a client that went
  // away is noticed while a request waits in a queue. Ignored by SSE clients.
  absl::Duration stream_keepalive = absl::Seconds(10);
  // Whole-request deadline passed to the Frontend; infinite: none.
  absl::Duration request_timeout = absl::InfiniteDuration();
  // Socket timeouts and keep-alive (an idle keep-alive connection delays Shutdown this long).
  absl::Duration read_timeout = absl::Seconds(30);
  absl::Duration write_timeout = absl::Seconds(30);
  absl::Duration keep_alive_timeout = absl::Seconds(5);
  int keep_alive_max_requests = 100;
  // Keys a request must present (api_keys.h); empty: the API is open.
  std::vector<std::string> api_keys;
};

class OpenAiHttpServer {
 public:
  // Binds host:port and starts serving before returning. kInvalidArgument for bad options,
  // kUnavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<OpenAiHttpServer>> Create(Frontend& frontend,
                                                                  OpenAiHttpOptions options);
  ~OpenAiHttpServer();  // Shutdown()

  OpenAiHttpServer(const OpenAiHttpServer&) = delete;
  OpenAiHttpServer& operator=(const OpenAiHttpServer&) = delete;

  int port() const { return port_; }

  // Stops accepting, ends streams in flight (their requests are cancelled), waits for the
  // handler threads (at most about keep_alive_timeout + poll_interval). Idempotent; any thread
  // but a handler's.
  void Shutdown();

 private:
  class Handlers;
  explicit OpenAiHttpServer(OpenAiHttpOptions options);

  const OpenAiHttpOptions options_;
  std::unique_ptr<Handlers> handlers_;
  std::unique_ptr<httplib::Server> server_;
  std::thread listen_thread_;
  std::atomic<bool> shut_down_{false};
  int port_ = 0;
};

}  // namespace tessera::coordinator::api
