// OpenAI-compatible HTTP client: POST /v1/completions with the prompt as token ids, streamed as
// server-sent events. stream_options.continuous_usage_stats puts the running completion_tokens
// count in every chunk, so tokens are counted exactly even when a chunk carries several; without
// it (other servers) each chunk with text counts one token and the closing usage chunk
// (include_usage) sets the total.
#include <algorithm>
#include <chrono>
#include <exception>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "bench/client.h"
#include "bench/http_get.h"
#include "common/net.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace tessera::bench {
namespace {

using nlohmann::json;

constexpr absl::string_view kCompletionsPath = "/v1/completions";

// Parses the SSE byte stream of one response; feeds the timer.
class SseReader {
 public:
  explicit SseReader(ResponseTimer& timer) : timer_(timer) {}

  // Consumes bytes; false when the stream reported an error (see error()).
  bool Feed(absl::string_view bytes) {
    for (char c : bytes) {
      if (c != '\r') buffer_.push_back(c);  // CRLF line ends read as LF
    }
    size_t end = 0;
    while ((end = buffer_.find("\n\n")) != std::string::npos) {
      const std::string event = buffer_.substr(0, end);
      buffer_.erase(0, end + 2);
      if (!Event(event)) return false;
    }
    return true;
  }

  bool done() const { return done_; }
  const std::string& error() const { return error_; }
  int64_t usage_total() const { return usage_total_; }
  int64_t counted() const { return counted_; }

 private:
  bool Event(absl::string_view event) {
    std::string data;
    for (absl::string_view line : absl::StrSplit(event, '\n')) {
      if (absl::ConsumePrefix(&line, "data:")) {
        absl::ConsumePrefix(&line, " ");
        absl::StrAppend(&data, line);
      }  // comments (": keep-alive") and other fields are ignored
    }
    if (data.empty()) return true;
    if (data == "[DONE]") {
      done_ = true;
      return true;
    }
    const json chunk = json::parse(data, nullptr, /*allow_exceptions=*/false);
    if (!chunk.is_object()) {
      error_ = absl::StrCat("not a JSON object in the stream: ", data.substr(0, 120));
      return false;
    }
    if (auto it = chunk.find("error"); it != chunk.end()) {
      const json& message = it->is_object() ? it->value("message", json()) : *it;
      error_ = message.is_string() ? message.get<std::string>() : it->dump();
      return false;
    }
    int64_t tokens = 0;
    const json* usage = nullptr;
    if (auto it = chunk.find("usage"); it != chunk.end() && it->is_object()) usage = &*it;
    int64_t completion = -1;
    if (usage != nullptr) {
      auto c = usage->find("completion_tokens");
      if (c != usage->end() && c->is_number_integer()) completion = c->get<int64_t>();
    }
    bool has_choice = false;
    bool has_text = false;
    if (auto it = chunk.find("choices"); it != chunk.end() && it->is_array() && !it->empty()) {
      has_choice = true;
      const json& choice = it->front();
      if (choice.is_object()) {
        auto text = choice.find("text");
        has_text = text != choice.end() && text->is_string() &&
                   !text->get_ref<const std::string&>().empty();
      }
    }
    if (has_choice && completion >= 0) {
      tokens = std::max<int64_t>(0, completion - counted_);  // continuous usage: exact
      continuous_ = true;
    } else if (has_choice && has_text && !continuous_) {
      tokens = 1;
    }
    if (!has_choice && completion >= 0) usage_total_ = completion;  // the closing usage chunk
    counted_ += tokens;
    timer_.OnResponse(tokens);
    return true;
  }

  ResponseTimer& timer_;
  std::string buffer_;
  bool done_ = false;
  bool continuous_ = false;
  std::string error_;
  int64_t counted_ = 0;
  int64_t usage_total_ = -1;
};

class OpenAiClient final : public RequestClient {
 public:
  explicit OpenAiClient(ClientOptions options) : options_(std::move(options)) {}

  absl::Status Probe() {
    absl::StatusOr<std::string> body = HttpGet(options_.host, options_.port, "/v1/models",
                                               options_.connect_timeout, options_.api_key);
    if (!body.ok()) {
      if (absl::IsUnavailable(body.status())) {
        return absl::UnavailableError(
            absl::StrCat("OpenAI HTTP server at http://", HostPort(options_.host, options_.port),
                         " cannot be reached: ", body.status().message()));
      }
      if (absl::StrContains(body.status().message(), "HTTP 401")) {
        return absl::UnauthenticatedError(absl::StrCat(
            body.status().message(), options_.api_key.empty()
                                         ? "; the server needs an API key: --api-key or "
                                           "$OPENAI_API_KEY"
                                         : "; the server refused the API key given"));
      }
      return body.status();
    }
    const json models = json::parse(*body, nullptr, /*allow_exceptions=*/false);
    const json* data = nullptr;
    if (models.is_object()) {
      auto it = models.find("data");
      if (it != models.end() && it->is_array()) data = &*it;
    }
    if (data == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("GET /v1/models: expected {\"data\": [...]}, got ", body->substr(0, 200)));
    }
    for (const json& entry : *data) {
      if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_string()) continue;
      const std::string id = entry["id"].get<std::string>();
      if (!options_.model.empty() && id != options_.model) continue;
      info_.model = id;
      if (auto it = entry.find("max_model_len"); it != entry.end() && it->is_number_integer()) {
        info_.max_model_len = it->get<int64_t>();
      }
      return absl::OkStatus();
    }
    return absl::NotFoundError(
        options_.model.empty()
            ? absl::StrCat(Describe(), " lists no model")
            : absl::StrCat("model '", options_.model, "' is not served by ", Describe()));
  }

  const ServerInfo& info() const override { return info_; }
  std::string Describe() const override {
    return absl::StrCat("openai http://", HostPort(options_.host, options_.port));
  }

  RequestRecord Send(const RequestSpec& spec, absl::Time run_start) override {
    RequestRecord record;
    ResponseTimer timer(*options_.clock, run_start, static_cast<int64_t>(spec.prompt.size()),
                        &record);
    try {
      SendOrThrow(spec, timer);
    } catch (const std::exception& e) {  // httplib and nlohmann may throw
      timer.Fail(absl::StrCat("POST ", kCompletionsPath, ": ", e.what()));
    }
    return record;
  }

 private:
  void SendOrThrow(const RequestSpec& spec, ResponseTimer& timer) {
    json body = {{"model", info_.model},
                 {"prompt", spec.prompt},
                 {"max_tokens", spec.output_len},
                 {"temperature", options_.temperature},
                 {"ignore_eos", options_.ignore_eos},
                 {"stream", true},
                 {"stream_options", {{"include_usage", true}, {"continuous_usage_stats", true}}}};
    if (!options_.structured_outputs.empty()) {
      body["structured_outputs"] =  // validated by ValidateBenchConfig
          json::parse(options_.structured_outputs, nullptr, /*allow_exceptions=*/false);
    }
    const absl::Time deadline = absl::Now() + options_.request_timeout;
    httplib::Client client(options_.host, options_.port);
    client.set_connection_timeout(
        std::chrono::microseconds(absl::ToInt64Microseconds(options_.connect_timeout)));
    // A stream is quiet at most the server's keep-alive interval (10 s) between events; the
    // request's own deadline is checked on every event.
    const absl::Duration read = std::min(options_.request_timeout, absl::Seconds(60));
    client.set_read_timeout(std::chrono::microseconds(absl::ToInt64Microseconds(read)));
    client.set_write_timeout(std::chrono::microseconds(absl::ToInt64Microseconds(read)));

    SseReader reader(timer);
    int status = 0;
    std::string error_body;
    bool timed_out = false;
    bool stream_error = false;
    httplib::Request request;
    request.method = "POST";
    request.path = std::string(kCompletionsPath);
    request.headers = {{"Accept", "text/event-stream"}};
    request.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
    request.set_header("Content-Type", "application/json");
    if (!options_.api_key.empty()) {
      request.set_header("Authorization", absl::StrCat("Bearer ", options_.api_key));
    }
    request.response_handler = [&](const httplib::Response& response) {
      status = response.status;
      return true;
    };
    request.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      if (absl::Now() > deadline) {
        timed_out = true;
        return false;
      }
      if (status != 200) {
        if (error_body.size() < 4096) error_body.append(data, n);
        return true;
      }
      if (!reader.Feed(absl::string_view(data, n))) {
        stream_error = true;
        return false;
      }
      return true;
    };
    httplib::Result result = client.send(request);
    if (timed_out) {
      timer.Fail(absl::StrCat("no end within the request timeout of ",
                              absl::FormatDuration(options_.request_timeout)));
    } else if (stream_error) {
      timer.Fail(absl::StrCat("error in the stream: ", reader.error()));
    } else if (status != 0 && status != 200) {
      timer.Fail(absl::StrCat("HTTP ", status, ": ", ErrorMessage(error_body)));
    } else if (!result) {
      timer.Fail(absl::StrCat("POST ", kCompletionsPath, ": ", httplib::to_string(result.error())));
    } else if (!reader.done()) {
      timer.Fail("the stream ended without data: [DONE]");
    } else {
      timer.Succeed();
    }
  }

  // The message of an OpenAI error body, or the body itself.
  static std::string ErrorMessage(const std::string& body) {
    const json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_object()) {
      auto it = parsed.find("error");
      if (it != parsed.end() && it->is_object()) {
        auto message = it->find("message");
        if (message != it->end() && message->is_string()) return message->get<std::string>();
      }
    }
    return body.substr(0, 200);
  }

  const ClientOptions options_;
  ServerInfo info_;  // set by Probe before any Send
};

}  // namespace

absl::StatusOr<std::unique_ptr<RequestClient>> CreateOpenAiClient(const ClientOptions& options) {
  auto client = std::make_unique<OpenAiClient>(options);
  absl::Status status = client->Probe();
  if (!status.ok()) return status;
  return client;
}

}  // namespace tessera::bench
