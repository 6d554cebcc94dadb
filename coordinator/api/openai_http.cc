// Deviations from vLLM's OpenAI server (vllm/entrypoints/openai), on purpose or for now:
//  - best_of must be 1 (vLLM's V1 engine dropped it). n > 1 (at most kMaxChoices choices in all)
//    runs each prompt n times as separate requests, seed + i when a seed is given, as vLLM's
//    parallel sampling; a batch of prompts in /v1/completions is answered with choice p * n + i
//    for prompt p's i-th completion, as vLLM does. Usage counts each prompt once.
//  - echo together with logprobs (prompt logprobs) is refused with 400; echo alone works.
//  - Reasoning (reasoning.h): with a reasoning parser (ModelInfo::reasoning_parser, from the chat
//    template or --reasoning-parser), chat responses carry the model's <think> block as
//    message.reasoning and reasoning_content (vLLM's newer and older names), streamed as deltas
//    of both; include_reasoning=false leaves it out. A structured output is enforced after the
//    end of the reasoning (the "</think>" token), as vLLM's; on /v1/chat/completions only.
//  - Tool calling (tool_calls.h): tools, tool_choice none/auto/required/named and
//    parallel_tool_calls. "auto" needs a tool-call parser (ModelInfo::tool_call_parser, from the
//    chat template or the coordinator's --tool-call-parser); without one it is a 400, as vLLM
//    without --enable-auto-tool-choice. Streamed calls arrive whole (one delta each, arguments
//    included) where vLLM streams arguments piece by piece; clients that join deltas see the
//    same calls. Image and audio content parts are refused with 400. Other unknown fields are
//    ignored, as vLLM does.
//  - Structured outputs: response_format json_object and json_schema, structured_outputs json,
//    json_object, choice and regex, guided_json, guided_choice and guided_regex
//    (model/structured_output.h says which schemas, model/regex_dfa.h which expressions); the
//    grammar kind is refused with 400, and so is more than one ask.
//  - Sampling defaults are the OpenAI API's (temperature 1, top_p 1); vLLM reads the model's
//    generation_config.json for them, which the Frontend does not expose.
//  - stop_reason is the stop token id when a stop_token_id ended the request, the stop string when
//    include_stop_str_in_output kept it at the end of the text, else null (the Frontend does not
//    report which stop string matched).
//  - A non-streaming request keeps running when its client disconnects (cpp-httplib 0.11 cannot
//    tell before the response is written); streaming requests are cancelled.
//  - Error "type" for statuses vLLM does not produce: 405 MethodNotAllowedError, 413
//    RequestEntityTooLargeError, 429 RateLimitError, 503 ServiceUnavailableError, 504
//    TimeoutError. Streams send an SSE comment (": keep-alive") after stream_keepalive of silence.
#include "coordinator/api/openai_http.h"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "coordinator/api/openai_protocol.h"
#include "coordinator/api/reasoning.h"

namespace tessera::coordinator::api {
namespace {

using json = nlohmann::json;

constexpr char kJsonType[] = "application/json";
constexpr char kSseType[] = "text/event-stream";
constexpr char kMetricsType[] = "text/plain; version=0.0.4; charset=utf-8";

void SendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(Dump(body), kJsonType);
}

void SendError(httplib::Response& res, const ApiError& error) {
  SendJson(res, error.http_status, ErrorJson(error));
}

// Which choice an event belongs to, and everything the responses need about the request.
struct Job {
  bool chat = false;
  ResponseHeader header;
  CommonRequest common;
  std::optional<int32_t> completion_logprobs;  // completions: top-N
  bool chat_logprobs = false;
  int32_t chat_top_logprobs = 0;
  std::vector<GenerateRequest> requests;  // one per choice
  std::vector<std::string> echo;          // completions with echo: the prompt text per choice
  ToolRequest tools;                      // chat: what the request asks of tools
  std::string tool_parser;                // chat, tool_choice auto: the parser
  std::string reasoning_parser;           // chat: splits reasoning from content; empty: none
  bool include_reasoning = true;          // chat: return the reasoning (vLLM's include_reasoning)
};

// What one chat chunk says when its text goes through a reasoning or tool-call parser.
struct ChatDelta {
  std::string reasoning;
  std::string content;
  json tool_calls = json::array();
  bool empty() const { return reasoning.empty() && content.empty() && tool_calls.empty(); }
};

// Per-choice progress while reading a stream.
struct ChoiceState {
  ChoiceOutput output;
  std::unique_ptr<GenerateStream> stream;
  bool done = false;
  absl::Status status;
  bool echoed = false;
  int64_t text_chars = 0;  // characters emitted so far (completions logprobs text_offset)
  Usage usage;
  // Chat streaming: the parsers the text goes through, reasoning first (tools read the content).
  std::optional<ReasoningStream> reasoning_stream;
  std::optional<ToolCallStream> tool_stream;
};

// Runs a chat chunk's text through the choice's parsers (`final`: the last chunk, which also
// takes what they held back).
ChatDelta ParseChatText(ChoiceState& choice, absl::string_view text, bool final) {
  ChatDelta out;
  std::string content(text);
  if (choice.reasoning_stream.has_value()) {
    ReasoningStream::Delta r = choice.reasoning_stream->Add(text);
    if (final) {
      const ReasoningStream::Delta tail = choice.reasoning_stream->Finish();
      r.reasoning += tail.reasoning;
      r.content += tail.content;
    }
    out.reasoning = std::move(r.reasoning);
    content = std::move(r.content);
  }
  if (choice.tool_stream.has_value()) {
    ToolCallStream::Delta t = choice.tool_stream->Add(content);
    if (final) {
      ToolCallStream::Delta tail = choice.tool_stream->Finish();
      t.content += tail.content;
      for (json& call : tail.tool_calls) t.tool_calls.push_back(std::move(call));
    }
    content = std::move(t.content);
    out.tool_calls = std::move(t.tool_calls);
  }
  out.content = std::move(content);
  return out;
}

json ToolCallJson(const ToolCall& call) {
  return json{{"id", call.id},
              {"type", "function"},
              {"function", json{{"name", call.name}, {"arguments", call.arguments}}}};
}

// Parses the body again keeping key order, when it may hold tools or tool calls (the chat
// template shows them as the client wrote them).
std::optional<nlohmann::ordered_json> OrderedBody(const std::string& text) {
  if (text.find("\"tool") == std::string::npos) return std::nullopt;
  nlohmann::ordered_json body =
      nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return std::nullopt;
  return body;
}

json StopReason(const Job& job, const ChoiceOutput& output) {
  if (output.finish_reason != model::FinishReason::kStop) return nullptr;
  if (!output.token_ids.empty()) {
    const int32_t last = output.token_ids.back();
    const auto& ids = job.common.sampling.stop_token_ids;
    if (std::find(ids.begin(), ids.end(), last) != ids.end()) return last;
  }
  if (job.common.include_stop_str_in_output) {
    for (const std::string& stop : job.common.sampling.stop) {
      if (absl::EndsWith(output.text, stop)) return stop;
    }
  }
  return nullptr;
}

// Adds an event to a choice; returns the index of the first token it added.
size_t Apply(ChoiceState& choice, const GenerateEvent& event) {
  const size_t begin = choice.output.token_ids.size();
  ChoiceOutput& out = choice.output;
  out.text += event.text;
  out.token_ids.insert(out.token_ids.end(), event.token_ids.begin(), event.token_ids.end());
  out.logprobs.insert(out.logprobs.end(), event.logprobs.begin(), event.logprobs.end());
  out.top_logprobs.insert(out.top_logprobs.end(), event.top_logprobs.begin(),
                          event.top_logprobs.end());
  choice.usage.prompt_tokens = event.prompt_tokens;
  choice.usage.completion_tokens = event.completion_tokens;
  choice.usage.cached_tokens = event.cached_tokens;
  if (event.finished) {
    choice.done = true;
    choice.status = event.status;
    out.finish_reason = event.finish_reason;
  }
  return begin;
}

// Prompt (and cached) tokens once per prompt, whatever n; completion tokens of every choice.
Usage TotalUsage(const std::vector<ChoiceState>& choices, int32_t n) {
  Usage total;
  for (const ChoiceState& choice : choices) {
    if (choice.output.index % n == 0) {
      total.prompt_tokens += choice.usage.prompt_tokens;
      total.cached_tokens += choice.usage.cached_tokens;
    }
    total.completion_tokens += choice.usage.completion_tokens;
  }
  return total;
}

}  // namespace

class OpenAiHttpServer::Handlers {
 public:
  Handlers(Frontend& frontend, const OpenAiHttpOptions& options, std::atomic<bool>& shut_down)
      : frontend_(frontend), options_(options), shut_down_(shut_down), keys_(options.api_keys) {
    names_ = options_.served_model_names;
    if (names_.empty()) names_.push_back(frontend_.model().name);
    std::random_device device;
    id_seed_ = (static_cast<uint64_t>(device()) << 32) ^ device();
  }

  void Register(httplib::Server& server) {
    if (keys_.enabled()) {
      server.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
        return Authorize(req, res);
      });
    }
    server.Get("/v1/models", Wrap([this](const auto& req, auto& res) { Models(req, res); }));
    server.Get("/health", Wrap([this](const auto& req, auto& res) { Health(req, res); }));
    // SageMaker's health check, as vLLM serves it.
    server.Get("/ping", Wrap([this](const auto& req, auto& res) { Health(req, res); }));
    server.Post("/ping", Wrap([this](const auto& req, auto& res) { Health(req, res); }));
    server.Get("/metrics", Wrap([this](const auto& req, auto& res) { Metrics(req, res); }));
    server.Get("/version", Wrap([this](const auto& req, auto& res) { Version(req, res); }));
    server.Post("/v1/completions",
                Wrap([this](const auto& req, auto& res) { Generate(req, res, false); }));
    server.Post("/v1/chat/completions",
                Wrap([this](const auto& req, auto& res) { Generate(req, res, true); }));
    server.Post("/tokenize", Wrap([this](const auto& req, auto& res) { Tokenize(req, res); }));
    server.Post("/detokenize", Wrap([this](const auto& req, auto& res) { Detokenize(req, res); }));
    server.set_error_handler(httplib::Server::HandlerWithResponse(
        [this](const httplib::Request& req, httplib::Response& res) { return OnError(req, res); }));
    server.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, const std::exception_ptr&) {
          SendError(res, MakeError(500, "internal error while handling the request"));
        });
  }

 private:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;

  // Third-party exceptions (nlohmann, std::bad_alloc) end here as a 500.
  static Handler Wrap(Handler handler) {
    return [handler = std::move(handler)](const httplib::Request& req, httplib::Response& res) {
      try {
        handler(req, res);
      } catch (const std::exception& e) {
        SendError(res, MakeError(500, absl::StrCat("internal error: ", e.what())));
      } catch (...) {
        SendError(res, MakeError(500, "internal error"));
      }
    };
  }

  // Fills the body of errors httplib produced itself (no route, wrong method, body too large).
  httplib::Server::HandlerResponse OnError(const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty() || res.content_length_ > 0 || res.is_chunked_content_provider_) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    if (res.status == 404) {
      const std::string allowed = AllowedMethods(req.path);
      if (!allowed.empty()) {
        res.set_header("Allow", allowed);
        SendError(res, MakeError(405, absl::StrCat("Method ", req.method, " not allowed for ",
                                                   req.path, "; use ", allowed)));
      } else {
        SendError(res, MakeError(404, absl::StrCat("Not found: ", req.path)));
      }
    } else if (res.status == 413) {
      SendError(res, MakeError(413,
                               absl::StrCat("body: request body larger than ",
                                            options_.max_body_bytes, " bytes"),
                               "body"));
    } else {
      SendError(res, MakeError(res.status, absl::StrCat("HTTP error ", res.status)));
    }
    return httplib::Server::HandlerResponse::Handled;
  }

  static std::string AllowedMethods(const std::string& path) {
    if (path == "/v1/models" || path == "/health" || path == "/metrics" || path == "/version") {
      return "GET, HEAD";
    }
    if (path == "/v1/completions" || path == "/v1/chat/completions" || path == "/tokenize" ||
        path == "/detokenize") {
      return "POST";
    }
    if (path == "/ping") return "GET, HEAD, POST";
    return "";
  }

  // With API keys: every path but the probes' and scrapers' needs "Authorization: Bearer KEY"
  // (vLLM's middleware: 401 {"error": "Unauthorized"}; CORS preflights pass).
  httplib::Server::HandlerResponse Authorize(const httplib::Request& req, httplib::Response& res) {
    static constexpr const char* kOpen[] = {"/health", "/ping", "/version", "/metrics"};
    if (req.method == "OPTIONS") return httplib::Server::HandlerResponse::Unhandled;
    for (const char* open : kOpen) {
      if (req.path == open) return httplib::Server::HandlerResponse::Unhandled;
    }
    if (keys_.Allows(req.get_header_value("Authorization"))) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    res.set_header("WWW-Authenticate", "Bearer");
    SendJson(res, 401, json{{"error", "Unauthorized"}});
    return httplib::Server::HandlerResponse::Handled;
  }

  // POST /tokenize (vLLM's): {count, max_model_len, tokens[, token_strs]}.
  void Tokenize(const httplib::Request& req, httplib::Response& res) {
    absl::StatusOr<json> body = ParseBody(req.body);
    if (!body.ok()) return SendError(res, ErrorFromStatus(body.status()));
    const std::optional<nlohmann::ordered_json> ordered = OrderedBody(req.body);
    absl::StatusOr<TokenizeRequest> parsed =
        ParseTokenizeRequest(*body, ordered.has_value() ? &*ordered : nullptr);
    if (!parsed.ok()) return SendError(res, ErrorFromStatus(parsed.status()));
    if (auto error = CheckModel(parsed->model)) return SendError(res, *error);
    std::string text;
    if (parsed->prompt.has_value()) {
      text = *parsed->prompt;
    } else {
      absl::StatusOr<std::string> applied =
          frontend_.ApplyChatTemplate(parsed->messages, parsed->template_options);
      if (!applied.ok()) return SendError(res, ErrorFromStatus(applied.status()));
      text = std::move(*applied);
    }
    absl::StatusOr<std::vector<int32_t>> ids = frontend_.Tokenize(text, parsed->add_special_tokens);
    if (!ids.ok()) return SendError(res, ErrorFromStatus(ids.status()));
    json out{{"count", ids->size()},
             {"max_model_len", frontend_.model().max_model_len},
             {"tokens", *ids},
             {"token_strs", nullptr}};
    if (parsed->return_token_strs) {
      absl::StatusOr<std::vector<std::string>> strs = frontend_.IdsToTokens(*ids);
      if (!strs.ok()) return SendError(res, ErrorFromStatus(strs.status()));
      out["token_strs"] = std::move(*strs);
    }
    SendJson(res, 200, out);
  }

  // POST /detokenize (vLLM's): {prompt}, special tokens kept (tokenizer.decode's default).
  void Detokenize(const httplib::Request& req, httplib::Response& res) {
    absl::StatusOr<json> body = ParseBody(req.body);
    if (!body.ok()) return SendError(res, ErrorFromStatus(body.status()));
    absl::StatusOr<DetokenizeRequest> parsed = ParseDetokenizeRequest(*body);
    if (!parsed.ok()) return SendError(res, ErrorFromStatus(parsed.status()));
    if (auto error = CheckModel(parsed->model)) return SendError(res, *error);
    const int32_t vocab = frontend_.model().vocab_size;
    for (size_t i = 0; i < parsed->tokens.size(); ++i) {
      if (parsed->tokens[i] >= vocab) {
        return SendError(res,
                         MakeError(400,
                                   absl::StrCat("tokens[", i, "]: token id ", parsed->tokens[i],
                                                " is outside the vocabulary (", vocab, ")"),
                                   "tokens"));
      }
    }
    absl::StatusOr<std::string> text = frontend_.Detokenize(parsed->tokens, false);
    if (!text.ok()) return SendError(res, ErrorFromStatus(text.status()));
    SendJson(res, 200, json{{"prompt", std::move(*text)}});
  }

  void Models(const httplib::Request&, httplib::Response& res) {
    SendJson(res, 200, ModelListJson(frontend_.model(), names_));
  }

  void Health(const httplib::Request&, httplib::Response& res) {
    if (frontend_.Ready()) {
      res.status = 200;
      res.set_content("", "text/plain");
    } else {
      SendError(res, MakeError(503, "not ready: no replica takes requests"));
    }
  }

  void Metrics(const httplib::Request&, httplib::Response& res) {
    res.status = 200;
    res.set_content(frontend_.RenderMetrics(), kMetricsType);
  }

  void Version(const httplib::Request&, httplib::Response& res) {
    SendJson(res, 200, json{{"version", options_.version}});
  }

  std::string NewBaseId() {
    // splitmix64 over a per-process random seed and a counter: unique and cheap.
    uint64_t z = id_seed_ + 0x9E3779B97F4A7C15ull * (id_counter_.fetch_add(1) + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return absl::StrFormat("%016x", z);
  }

  // Resolves the model name: nullopt when served, else the 404.
  std::optional<ApiError> CheckModel(const std::optional<std::string>& model) const {
    if (!model.has_value() || model->empty()) return std::nullopt;
    for (const std::string& name : names_) {
      if (name == *model) return std::nullopt;
    }
    return ModelNotFound(*model);
  }

  absl::Status FitMaxTokens(const std::optional<int32_t>& max_tokens, size_t prompt_len,
                            absl::string_view prompt_field, GenerateRequest& request) const {
    if (max_tokens.has_value()) {
      request.sampling.max_tokens = *max_tokens;
      return absl::OkStatus();
    }
    const int64_t room =
        static_cast<int64_t>(frontend_.model().max_model_len) - static_cast<int64_t>(prompt_len);
    if (room < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(prompt_field, ": this model's maximum context length is ",
                       frontend_.model().max_model_len, " tokens, and the prompt has ", prompt_len,
                       " tokens, which leaves no room for the completion"));
    }
    request.sampling.max_tokens = static_cast<int32_t>(room);
    return absl::OkStatus();
  }

  GenerateRequest BaseRequest(const CommonRequest& common) const {
    GenerateRequest request;
    request.sampling = common.sampling;
    request.skip_special_tokens = common.skip_special_tokens;
    request.include_stop_str_in_output = common.include_stop_str_in_output;
    request.cache_salt = common.cache_salt;
    request.priority = common.priority;
    if (options_.request_timeout != absl::InfiniteDuration()) {
      request.deadline = absl::Now() + options_.request_timeout;
    }
    return request;
  }

  absl::Status BuildCompletionJob(const CompletionRequest& parsed, Job& job) const {
    const size_t count = parsed.text_prompts.size() + parsed.token_prompts.size();
    for (size_t i = 0; i < count; ++i) {
      GenerateRequest request = BaseRequest(parsed.common);
      request.add_special_tokens = parsed.add_special_tokens;
      std::string echo;
      if (i < parsed.text_prompts.size()) {
        const std::string& text = parsed.text_prompts[i];
        echo = text;
        if (parsed.common.max_tokens.has_value()) {
          request.prompt_text = text;
        } else {
          // The length is needed to fill the context: tokenize here.
          absl::StatusOr<std::vector<int32_t>> ids =
              frontend_.Tokenize(text, parsed.add_special_tokens);
          if (!ids.ok()) return ids.status();
          request.prompt_token_ids = std::move(*ids);
        }
      } else {
        request.prompt_token_ids = parsed.token_prompts[i - parsed.text_prompts.size()];
        if (parsed.echo) {
          absl::StatusOr<std::string> text =
              frontend_.Detokenize(*request.prompt_token_ids, parsed.common.skip_special_tokens);
          if (!text.ok()) return text.status();
          echo = std::move(*text);
        }
      }
      const size_t prompt_len =
          request.prompt_token_ids.has_value() ? request.prompt_token_ids->size() : 0;
      if (absl::Status status =
              FitMaxTokens(parsed.common.max_tokens, prompt_len, "prompt", request);
          !status.ok()) {
        return status;
      }
      job.requests.push_back(std::move(request));
      job.echo.push_back(parsed.echo ? std::move(echo) : std::string());
    }
    return absl::OkStatus();
  }

  absl::Status BuildChatJob(const ChatRequest& parsed, Job& job) const {
    absl::StatusOr<std::string> prompt =
        frontend_.ApplyChatTemplate(parsed.messages, parsed.template_options);
    if (!prompt.ok()) {
      if (prompt.status().code() == absl::StatusCode::kInvalidArgument) {
        return absl::InvalidArgumentError(absl::StrCat("messages: ", prompt.status().message()));
      }
      return prompt.status();
    }
    absl::StatusOr<std::vector<int32_t>> ids =
        frontend_.Tokenize(*prompt, parsed.add_special_tokens);
    if (!ids.ok()) return ids.status();
    GenerateRequest request = BaseRequest(parsed.common);
    request.add_special_tokens = parsed.add_special_tokens;
    GateStructuredOutputOnReasoning(job, *prompt, request.sampling.structured_output);
    const size_t prompt_len = ids->size();
    request.prompt_token_ids = std::move(*ids);
    if (absl::Status status =
            FitMaxTokens(parsed.common.max_tokens, prompt_len, "messages", request);
        !status.ok()) {
      return status;
    }
    job.requests.push_back(std::move(request));
    job.echo.emplace_back();
    return absl::OkStatus();
  }

  // With a reasoning parser, a structured output holds once the model has closed its <think>
  // block, as vLLM does (GrammarStartToken).
  void GateStructuredOutputOnReasoning(const Job& job, absl::string_view prompt,
                                       model::StructuredOutput& structured) const {
    if (structured.kind == model::StructuredOutput::Kind::kNone) return;
    structured.start_after_token = GrammarStartToken(
        job.reasoning_parser, prompt,
        [this](absl::string_view text) { return frontend_.Tokenize(text, false); });
  }

  // n > 1: each prompt's request n times (prompt-major, so choice p * n + i is prompt p's i-th),
  // a given seed made seed + i as vLLM's parallel sampling does.
  static void FanOut(Job& job) {
    const auto n = static_cast<size_t>(job.common.n);
    std::vector<GenerateRequest> requests;
    std::vector<std::string> echo;
    requests.reserve(job.requests.size() * n);
    for (size_t p = 0; p < job.requests.size(); ++p) {
      for (size_t i = 0; i < n; ++i) {
        GenerateRequest child = job.requests[p];
        if (child.sampling.seed.has_value()) *child.sampling.seed += static_cast<int64_t>(i);
        requests.push_back(std::move(child));
        echo.push_back(job.echo[p]);
      }
    }
    job.requests = std::move(requests);
    job.echo = std::move(echo);
  }

  TokenText MakeTokenText() const {
    return [this](int32_t id) {
      absl::StatusOr<std::string> text = frontend_.Detokenize({id}, false);
      return text.ok() ? *text : std::string();
    };
  }

  // The JSON choice for the text/tokens [begin, end) just added to `choice`.
  // `chat_delta`: a chat chunk's parsed text when the request has parsers (else `text`).
  json ChoiceJson(const Job& job, const ChoiceState& choice, absl::string_view text, size_t begin,
                  size_t end, bool chunk, bool final_chunk,
                  const ChatDelta* chat_delta = nullptr) const {
    const ChoiceOutput& out = choice.output;
    json logprobs = nullptr;
    if (job.chat) {
      if (job.chat_logprobs) {
        logprobs = ChatLogprobsJson(out, begin, end, job.chat_top_logprobs, MakeTokenText());
      }
      json result = {{"index", out.index}};
      json finish_reason = final_chunk ? FinishReasonJson(out.finish_reason) : nullptr;
      const bool stopped = out.finish_reason == model::FinishReason::kStop;
      if (chunk && chat_delta != nullptr) {
        json delta = json::object();
        if (!chat_delta->reasoning.empty()) {  // Pump cleared it without include_reasoning
          delta["reasoning"] = chat_delta->reasoning;
          delta["reasoning_content"] = chat_delta->reasoning;  // vLLM's older name
        }
        if (!chat_delta->content.empty() || (delta.empty() && chat_delta->tool_calls.empty())) {
          delta["content"] = chat_delta->content;
        }
        if (!chat_delta->tool_calls.empty()) delta["tool_calls"] = chat_delta->tool_calls;
        result["delta"] = std::move(delta);
        if (final_chunk && choice.tool_stream.has_value() &&
            choice.tool_stream->FinishAsToolCalls(stopped)) {
          finish_reason = "tool_calls";
        }
      } else if (chunk) {
        result["delta"] = json{{"content", text}};
      } else {
        // The whole text: reasoning split off first, then tool calls read from the content.
        ReasoningSplit split = SplitReasoning(job.reasoning_parser, text);
        json message = {{"role", "assistant"}};
        json tool_calls = json::array();
        if (job.tools.choice != ToolRequest::Choice::kNone && split.content.has_value()) {
          ToolCallResult calls =
              ExtractToolCalls(job.tools, job.tool_parser, *split.content, stopped);
          for (const ToolCall& call : calls.calls) tool_calls.push_back(ToolCallJson(call));
          split.content = std::move(calls.content);
          if (calls.finish_as_tool_calls) finish_reason = "tool_calls";
        }
        message["content"] = split.content.has_value() ? json(*split.content) : json(nullptr);
        if (!job.reasoning_parser.empty()) {
          const json reasoning = split.reasoning.has_value() && job.include_reasoning
                                     ? json(*split.reasoning)
                                     : json(nullptr);
          message["reasoning"] = reasoning;
          message["reasoning_content"] = reasoning;  // vLLM's older name
        }
        message["tool_calls"] = std::move(tool_calls);
        result["message"] = std::move(message);
      }
      result["logprobs"] = std::move(logprobs);
      result["finish_reason"] = std::move(finish_reason);
      if (final_chunk) result["stop_reason"] = StopReason(job, out);
      return result;
    }
    if (job.completion_logprobs.has_value()) {
      const int64_t offset = choice.text_chars + CodePointCount(job.echo[out.index]) *
                                                     (chunk && !choice.echoed ? 1 : 0);
      logprobs = CompletionLogprobsJson(out, begin, end, *job.completion_logprobs,
                                        chunk ? offset : CodePointCount(job.echo[out.index]),
                                        MakeTokenText());
    }
    return json{{"index", out.index},
                {"text", text},
                {"logprobs", std::move(logprobs)},
                {"finish_reason", final_chunk ? FinishReasonJson(out.finish_reason) : nullptr},
                {"stop_reason", final_chunk ? StopReason(job, out) : nullptr}};
  }

  void Generate(const httplib::Request& req, httplib::Response& res, bool chat) {
    std::string base_id = req.get_header_value("X-Request-Id");
    if (base_id.empty()) base_id = NewBaseId();
    res.set_header("X-Request-Id", base_id);

    absl::StatusOr<json> body = ParseBody(req.body);
    if (!body.ok()) return SendError(res, ErrorFromStatus(body.status()));

    auto job = std::make_shared<Job>();
    job->chat = chat;
    job->header.id = absl::StrCat(chat ? "chatcmpl-" : "cmpl-", base_id);
    job->header.created = absl::ToUnixSeconds(absl::Now());
    job->header.model = names_.front();
    absl::Status built;
    if (chat) {
      const std::optional<nlohmann::ordered_json> ordered = OrderedBody(req.body);
      absl::StatusOr<ChatRequest> parsed =
          ParseChatRequest(*body, ordered.has_value() ? &*ordered : nullptr);
      if (!parsed.ok()) return SendError(res, ErrorFromStatus(parsed.status()));
      if (auto error = CheckModel(parsed->common.model)) return SendError(res, *error);
      if (absl::Status tools = PrepareTools(*parsed, *job); !tools.ok()) {
        return SendError(res, ErrorFromStatus(tools));
      }
      job->reasoning_parser = frontend_.model().reasoning_parser;
      job->include_reasoning = parsed->include_reasoning;
      job->common = parsed->common;
      job->chat_logprobs = parsed->logprobs;
      job->chat_top_logprobs = parsed->top_logprobs;
      built = BuildChatJob(*parsed, *job);
    } else {
      absl::StatusOr<CompletionRequest> parsed = ParseCompletionRequest(*body);
      if (!parsed.ok()) return SendError(res, ErrorFromStatus(parsed.status()));
      if (auto error = CheckModel(parsed->common.model)) return SendError(res, *error);
      job->common = parsed->common;
      job->completion_logprobs = parsed->logprobs;
      built = BuildCompletionJob(*parsed, *job);
    }
    if (!built.ok()) return SendError(res, ErrorFromStatus(built));
    if (job->common.n > 1) {
      if (job->requests.size() * static_cast<size_t>(job->common.n) >
          static_cast<size_t>(kMaxChoices)) {
        return SendError(res, MakeError(400,
                                        absl::StrCat("n: ", job->requests.size(),
                                                     " prompts x n = ", job->common.n,
                                                     " is more than ", kMaxChoices, " choices"),
                                        "n"));
      }
      FanOut(*job);
    }
    // Validate before anything starts (the Frontend checks again, with the same messages).
    for (const GenerateRequest& request : job->requests) {
      absl::Status valid =
          model::ValidateSamplingParams(request.sampling, frontend_.model().vocab_size);
      if (!valid.ok()) return SendError(res, ErrorFromStatus(valid));
    }

    auto choices = std::make_shared<std::vector<ChoiceState>>(job->requests.size());
    for (size_t i = 0; i < job->requests.size(); ++i) {
      GenerateRequest request = job->requests[i];
      request.request_id =
          job->requests.size() == 1 ? job->header.id : absl::StrCat(job->header.id, "-", i);
      absl::StatusOr<std::unique_ptr<GenerateStream>> stream =
          frontend_.Generate(std::move(request));
      if (!stream.ok()) return SendError(res, ErrorFromStatus(stream.status()));
      (*choices)[i].stream = std::move(*stream);
      (*choices)[i].output.index = static_cast<int32_t>(i);
      if (job->chat && job->common.stream && !job->reasoning_parser.empty()) {
        (*choices)[i].reasoning_stream.emplace(job->reasoning_parser);
      }
      if (job->chat && job->common.stream && job->tools.choice != ToolRequest::Choice::kNone) {
        (*choices)[i].tool_stream.emplace(job->tools, job->tool_parser);
      }
    }

    if (job->common.stream) {
      StartStreaming(res, std::move(job), std::move(choices));
    } else {
      Collect(res, *job, *choices);
    }
  }

  // Tools of a chat request: the parser for "auto" (a 400 without one); hermes and mistral read
  // markers that are special tokens in some vocabularies, so those stay in the text (vLLM's
  // adjust_request does the same).
  absl::Status PrepareTools(ChatRequest& parsed, Job& job) const {
    job.tools = parsed.tools;
    if (parsed.tools.choice != ToolRequest::Choice::kAuto) return absl::OkStatus();
    job.tool_parser = frontend_.model().tool_call_parser;
    if (job.tool_parser.empty()) {
      return absl::InvalidArgumentError(
          "tool_choice: \"auto\" needs a tool-call parser, and this model's chat template has "
          "none; start the coordinator with --tool-call-parser (hermes, llama3_json, mistral), "
          "or ask for tool_choice \"required\" or a named function");
    }
    if (job.tool_parser == "hermes" || job.tool_parser == "mistral") {
      parsed.common.skip_special_tokens = false;
    }
    return absl::OkStatus();
  }

  // Non-streaming: read every choice to its end, then answer once.
  void Collect(httplib::Response& res, const Job& job, std::vector<ChoiceState>& choices) {
    for (ChoiceState& choice : choices) {
      while (!choice.done) {
        absl::StatusOr<GenerateEvent> event = choice.stream->Next(options_.poll_interval);
        if (!event.ok()) {
          if (event.status().code() != absl::StatusCode::kDeadlineExceeded) {
            return SendError(res, ErrorFromStatus(event.status()));
          }
          if (shut_down_.load()) {
            return SendError(res, MakeError(503, "the server is shutting down"));
          }
          continue;
        }
        Apply(choice, *event);
      }
      if (!choice.status.ok()) return SendError(res, ErrorFromStatus(choice.status));
    }
    json out = json::array();
    for (const ChoiceState& choice : choices) {
      const std::string text = job.echo[choice.output.index] + choice.output.text;
      out.push_back(ChoiceJson(job, choice, text, 0, choice.output.token_ids.size(),
                               /*chunk=*/false, /*final_chunk=*/true));
    }
    const Usage usage = TotalUsage(choices, job.common.n);
    SendJson(res, 200,
             job.chat ? ChatResponseJson(job.header, std::move(out), usage)
                      : CompletionResponseJson(job.header, std::move(out), usage));
  }

  // The state of one SSE response, driven by httplib's chunked content provider on the handler's
  // thread. Shared by the provider and the releaser lambdas (httplib copies them); freed with the
  // httplib::Response.
  struct StreamingState {
    std::shared_ptr<Job> job;
    std::shared_ptr<std::vector<ChoiceState>> choices;
    bool started = false;
    bool finished = false;
    size_t next = 0;
    absl::Time last_write;
  };

  void StartStreaming(httplib::Response& res, std::shared_ptr<Job> job,
                      std::shared_ptr<std::vector<ChoiceState>> choices) {
    auto state = std::make_shared<StreamingState>();
    state->job = std::move(job);
    state->choices = std::move(choices);
    state->last_write = absl::Now();
    res.status = 200;
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        kSseType,
        [this, state](size_t, httplib::DataSink& sink) {
          try {
            return Pump(*state, sink);
          } catch (const std::exception&) {
            return false;  // ends the connection; the releaser cancels the requests
          }
        },
        [state](bool) {
          for (ChoiceState& choice : *state->choices) {
            if (choice.stream != nullptr && !choice.done) choice.stream->Cancel();
            choice.stream.reset();
          }
        });
  }

  static bool Write(StreamingState& state, httplib::DataSink& sink, const std::string& data) {
    state.last_write = absl::Now();
    return sink.write(data.data(), data.size());
  }

  bool Finish(StreamingState& state, httplib::DataSink& sink,
              const std::optional<ApiError>& error) {
    state.finished = true;
    std::string tail;
    if (error.has_value()) {
      tail = SseEvent(ErrorJson(*error));
    } else if (state.job->common.stream_options.has_value() &&
               state.job->common.stream_options->include_usage) {
      const Usage usage = TotalUsage(*state.choices, state.job->common.n);
      tail = SseEvent(state.job->chat
                          ? ChatChunkJson(state.job->header, json::array(), usage)
                          : CompletionResponseJson(state.job->header, json::array(), usage));
    }
    absl::StrAppend(&tail, kSseDone);
    if (!Write(state, sink, tail)) return false;
    sink.done();
    return true;
  }

  // One step of a streaming response: false ends the connection (the client went away).
  bool Pump(StreamingState& state, httplib::DataSink& sink) {
    const Job& job = *state.job;
    std::vector<ChoiceState>& choices = *state.choices;
    if (state.finished) return true;
    if (!state.started) {
      state.started = true;
      if (job.chat) {
        std::string first;
        for (const ChoiceState& choice : choices) {
          json delta = {{"index", choice.output.index},
                        {"delta", json{{"role", "assistant"}, {"content", ""}}},
                        {"logprobs", nullptr},
                        {"finish_reason", nullptr}};
          first +=
              SseEvent(ChatChunkJson(job.header, json::array({std::move(delta)}), std::nullopt));
        }
        return Write(state, sink, first);
      }
    }
    if (shut_down_.load())
      return Finish(state, sink, MakeError(503, "the server is shutting down"));

    size_t active = 0;
    for (const ChoiceState& choice : choices) active += choice.done ? 0 : 1;
    if (active == 0) return Finish(state, sink, std::nullopt);

    // Round-robin over the choices still running.
    while (choices[state.next % choices.size()].done) ++state.next;
    ChoiceState& choice = choices[state.next % choices.size()];
    ++state.next;
    const absl::Duration timeout =
        active == 1
            ? options_.poll_interval
            : std::max(options_.poll_interval / static_cast<double>(active), absl::Milliseconds(1));
    absl::StatusOr<GenerateEvent> event = choice.stream->Next(timeout);
    if (!event.ok()) {
      if (event.status().code() != absl::StatusCode::kDeadlineExceeded) {
        return Finish(state, sink, ErrorFromStatus(event.status()));
      }
      if (absl::Now() - state.last_write >= options_.stream_keepalive) {
        return Write(state, sink, ": keep-alive\n\n");
      }
      return true;
    }
    const size_t begin = Apply(choice, *event);
    const size_t end = choice.output.token_ids.size();
    const bool failed = choice.done && !choice.status.ok();
    const bool final_chunk = choice.done && !failed;
    // vLLM sends nothing for an event with neither text nor tokens unless it ends the choice.
    if (event->token_ids.empty() && event->text.empty() && !final_chunk) {
      if (failed) return Finish(state, sink, ErrorFromStatus(choice.status));
      return true;
    }
    std::string text = event->text;
    if (!job.chat && !choice.echoed) {
      text = job.echo[choice.output.index] + text;
    }
    std::optional<ChatDelta> chat_delta;
    if (choice.reasoning_stream.has_value() || choice.tool_stream.has_value()) {
      chat_delta = ParseChatText(choice, text, final_chunk);
      if (!job.include_reasoning) chat_delta->reasoning.clear();
      // Held back (a marker may be starting): nothing to send yet.
      if (chat_delta->empty() && !final_chunk && !job.chat_logprobs) {
        if (failed) return Finish(state, sink, ErrorFromStatus(choice.status));
        return true;
      }
    }
    json chunk_choice = ChoiceJson(job, choice, text, begin, end, /*chunk=*/true, final_chunk,
                                   chat_delta.has_value() ? &*chat_delta : nullptr);
    choice.echoed = true;
    choice.text_chars += CodePointCount(text);
    std::optional<Usage> usage;
    if (job.common.stream_options.has_value() &&
        job.common.stream_options->continuous_usage_stats) {
      usage = choice.usage;
    }
    json chunk = job.chat ? ChatChunkJson(job.header, json::array({std::move(chunk_choice)}), usage)
                          : CompletionResponseJson(job.header,
                                                   json::array({std::move(chunk_choice)}), usage);
    if (!Write(state, sink, SseEvent(chunk))) return false;
    if (failed) return Finish(state, sink, ErrorFromStatus(choice.status));
    return true;
  }

  Frontend& frontend_;
  const OpenAiHttpOptions& options_;
  std::atomic<bool>& shut_down_;
  const ApiKeys keys_;
  std::vector<std::string> names_;
  uint64_t id_seed_ = 0;
  std::atomic<uint64_t> id_counter_{0};
};

OpenAiHttpServer::OpenAiHttpServer(OpenAiHttpOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<OpenAiHttpServer>> OpenAiHttpServer::Create(
    Frontend& frontend, OpenAiHttpOptions options) {
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("port: must be in [0, 65535], got ", options.port));
  }
  if (options.num_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_threads: must be at least 1, got ", options.num_threads));
  }
  if (options.max_body_bytes == 0) {
    return absl::InvalidArgumentError("max_body_bytes: must be positive");
  }
  if (options.poll_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("poll_interval: must be positive");
  }
  std::unique_ptr<OpenAiHttpServer> server(new OpenAiHttpServer(std::move(options)));
  const OpenAiHttpOptions& opts = server->options_;
  server->handlers_ = std::make_unique<Handlers>(frontend, opts, server->shut_down_);
  try {
    server->server_ = std::make_unique<httplib::Server>();
    httplib::Server& http = *server->server_;
    const size_t threads = static_cast<size_t>(opts.num_threads);
    http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    http.set_payload_max_length(opts.max_body_bytes);
    http.set_read_timeout(absl::ToChronoMicroseconds(opts.read_timeout));
    http.set_write_timeout(absl::ToChronoMicroseconds(opts.write_timeout));
    http.set_keep_alive_timeout(
        std::max<time_t>(1, static_cast<time_t>(absl::ToInt64Seconds(opts.keep_alive_timeout))));
    http.set_keep_alive_max_count(static_cast<size_t>(std::max(1, opts.keep_alive_max_requests)));
    http.set_tcp_nodelay(true);
    // Debian's libcpp-httplib is compiled with a listen backlog of 5, too short for bursts of
    // connections (64 clients at once overflow it and see read errors). Keep the listening
    // socket (what httplib's default options do: SO_REUSEADDR) to raise the backlog after bind.
    auto listen_fd = std::make_shared<int>(-1);
    http.set_socket_options([listen_fd](int fd) {
      int yes = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
      *listen_fd = fd;
    });
    server->handlers_->Register(http);
    if (opts.port == 0) {
      server->port_ = http.bind_to_any_port(opts.host);
      if (server->port_ <= 0) server->port_ = 0;
    } else if (http.bind_to_port(opts.host, opts.port)) {
      server->port_ = opts.port;
    }
    if (server->port_ != 0 && *listen_fd >= 0) {
      // On a listening socket, listen() again only updates the backlog (Linux, BSD).
      ::listen(*listen_fd, SOMAXCONN);
    }
    if (server->port_ == 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot bind the OpenAI HTTP server to ", opts.host, ":", opts.port));
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("starting the OpenAI HTTP server: ", e.what()));
  }

  // httplib's stop() is a no-op until its accept loop runs: wait for it (bounded).
  auto listen_returned = std::make_shared<std::atomic<bool>>(false);
  server->listen_thread_ = std::thread([http = server->server_.get(), listen_returned] {
    try {
      http->listen_after_bind();
    } catch (...) {
      // httplib reports failures by returning; anything thrown ends the accept loop alone.
    }
    listen_returned->store(true);
  });
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!server->server_->is_running() && !listen_returned->load() && absl::Now() < deadline) {
    absl::SleepFor(absl::Microseconds(200));
  }
  if (!server->server_->is_running()) {
    server->Shutdown();
    return absl::UnavailableError("the OpenAI HTTP server's accept loop did not start");
  }
  return server;
}

OpenAiHttpServer::~OpenAiHttpServer() { Shutdown(); }

void OpenAiHttpServer::Shutdown() {
  if (shut_down_.exchange(true)) return;
  if (server_ != nullptr) server_->stop();
  if (listen_thread_.joinable()) listen_thread_.join();
}

}  // namespace tessera::coordinator::api
