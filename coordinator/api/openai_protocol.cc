#include "coordinator/api/openai_protocol.h"

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace tessera::coordinator::api {
namespace {

using json = nlohmann::json;

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

std::string TypeName(const json& value) { return value.type_name(); }

// A present, non-null field, or nullptr.
const json* Field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::Status GetBool(const json& body, const char* name, bool& out) {
  const json* value = Field(body, name);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_boolean()) {
    return FieldError(name, absl::StrCat("expected a boolean, got ", TypeName(*value)));
  }
  out = value->get<bool>();
  return absl::OkStatus();
}

absl::Status GetFloat(const json& body, const char* name, float& out) {
  const json* value = Field(body, name);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_number()) {
    return FieldError(name, absl::StrCat("expected a number, got ", TypeName(*value)));
  }
  out = value->get<float>();
  return absl::OkStatus();
}

// Integers; a float with an integral value is accepted (as pydantic does).
absl::Status GetInt64(const json& body, const char* name, std::optional<int64_t>& out) {
  const json* value = Field(body, name);
  if (value == nullptr) return absl::OkStatus();
  if (value->is_number_integer()) {
    if (value->is_number_unsigned() &&
        value->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return FieldError(name, "integer out of range");
    }
    out = value->get<int64_t>();
    return absl::OkStatus();
  }
  if (value->is_number_float()) {
    const double d = value->get<double>();
    if (std::isfinite(d) && d == std::trunc(d) && std::fabs(d) < 9.0e18) {
      out = static_cast<int64_t>(d);
      return absl::OkStatus();
    }
  }
  return FieldError(name, absl::StrCat("expected an integer, got ", TypeName(*value)));
}

absl::Status GetInt32(const json& body, const char* name, std::optional<int32_t>& out) {
  std::optional<int64_t> wide;
  TESSERA_RETURN_IF_ERROR(GetInt64(body, name, wide));
  if (!wide.has_value()) return absl::OkStatus();
  if (*wide < std::numeric_limits<int32_t>::min() || *wide > std::numeric_limits<int32_t>::max()) {
    return FieldError(name, absl::StrCat("integer out of range: ", *wide));
  }
  out = static_cast<int32_t>(*wide);
  return absl::OkStatus();
}

absl::Status GetInt32(const json& body, const char* name, int32_t& out) {
  std::optional<int32_t> value;
  TESSERA_RETURN_IF_ERROR(GetInt32(body, name, value));
  if (value.has_value()) out = *value;
  return absl::OkStatus();
}

absl::Status GetString(const json& body, const char* name, std::optional<std::string>& out) {
  const json* value = Field(body, name);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_string()) {
    return FieldError(name, absl::StrCat("expected a string, got ", TypeName(*value)));
  }
  out = value->get<std::string>();
  return absl::OkStatus();
}

absl::Status GetTokenIds(const json& value, absl::string_view name, std::vector<int32_t>& out) {
  for (const json& item : value) {
    if (!item.is_number_integer()) {
      return FieldError(name, absl::StrCat("expected integer token ids, got ", TypeName(item)));
    }
    const int64_t id = item.get<int64_t>();
    if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
      return FieldError(name, absl::StrCat("token id ", id, " out of range"));
    }
    out.push_back(static_cast<int32_t>(id));
  }
  return absl::OkStatus();
}

absl::Status ParseStructuredOutput(const json& body, model::StructuredOutput& out);

absl::Status ParseCommon(const json& body, CommonRequest& out) {
  TESSERA_RETURN_IF_ERROR(GetString(body, "model", out.model));
  model::SamplingParams& s = out.sampling;
  s.temperature = 1.0f;  // the OpenAI API's default (vLLM's without a generation_config)
  TESSERA_RETURN_IF_ERROR(GetFloat(body, "temperature", s.temperature));
  TESSERA_RETURN_IF_ERROR(GetFloat(body, "top_p", s.top_p));
  TESSERA_RETURN_IF_ERROR(GetInt32(body, "top_k", s.top_k));
  TESSERA_RETURN_IF_ERROR(GetFloat(body, "min_p", s.min_p));
  TESSERA_RETURN_IF_ERROR(GetFloat(body, "repetition_penalty", s.repetition_penalty));
  TESSERA_RETURN_IF_ERROR(GetFloat(body, "presence_penalty", s.presence_penalty));
  TESSERA_RETURN_IF_ERROR(GetFloat(body, "frequency_penalty", s.frequency_penalty));
  TESSERA_RETURN_IF_ERROR(GetInt32(body, "min_tokens", s.min_tokens));
  TESSERA_RETURN_IF_ERROR(GetBool(body, "ignore_eos", s.ignore_eos));
  std::optional<int64_t> seed;
  TESSERA_RETURN_IF_ERROR(GetInt64(body, "seed", seed));
  s.seed = seed;

  if (const json* bias = Field(body, "logit_bias")) {
    if (!bias->is_object()) {
      return FieldError("logit_bias", absl::StrCat("expected an object of token id: bias, got ",
                                                   TypeName(*bias)));
    }
    for (auto it = bias->begin(); it != bias->end(); ++it) {
      if (!it.value().is_number()) {
        return FieldError("logit_bias",
                          absl::StrCat("the bias of '", it.key(), "' must be a number, got ",
                                       TypeName(it.value())));
      }
      absl::StatusOr<model::LogitBias> entry =
          model::LogitBiasEntry(it.key(), it.value().get<double>());
      if (!entry.ok()) return entry.status();
      s.logit_bias.push_back(*entry);
    }
  }

  std::optional<int32_t> priority;
  TESSERA_RETURN_IF_ERROR(GetInt32(body, "priority", priority));
  out.priority = priority.value_or(0);

  std::optional<int32_t> n;
  TESSERA_RETURN_IF_ERROR(GetInt32(body, "n", n));
  if (n.has_value()) {
    if (*n < 1 || *n > kMaxChoices) {
      return FieldError("n", absl::StrCat("must be in [1, ", kMaxChoices, "], got ", *n));
    }
    out.n = *n;
  }
  std::optional<int32_t> best_of;
  TESSERA_RETURN_IF_ERROR(GetInt32(body, "best_of", best_of));
  if (best_of.has_value() && *best_of != 1) {
    return FieldError("best_of", absl::StrCat("only best_of = 1 is supported, got ", *best_of));
  }

  if (const json* stop = Field(body, "stop")) {
    if (stop->is_string()) {
      s.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& item : *stop) {
        if (!item.is_string()) {
          return FieldError("stop", absl::StrCat("expected strings, got ", TypeName(item)));
        }
        s.stop.push_back(item.get<std::string>());
      }
    } else {
      return FieldError(
          "stop", absl::StrCat("expected a string or a list of strings, got ", TypeName(*stop)));
    }
  }
  if (const json* ids = Field(body, "stop_token_ids")) {
    if (!ids->is_array()) {
      return FieldError("stop_token_ids",
                        absl::StrCat("expected a list of integers, got ", TypeName(*ids)));
    }
    TESSERA_RETURN_IF_ERROR(GetTokenIds(*ids, "stop_token_ids", s.stop_token_ids));
  }

  TESSERA_RETURN_IF_ERROR(GetBool(body, "stream", out.stream));
  if (const json* options = Field(body, "stream_options")) {
    if (!out.stream) {
      return FieldError("stream_options", "may only be set when stream is true");
    }
    if (!options->is_object()) {
      return FieldError("stream_options",
                        absl::StrCat("expected an object, got ", TypeName(*options)));
    }
    StreamOptions parsed;
    absl::Status status = GetBool(*options, "include_usage", parsed.include_usage);
    if (status.ok()) {
      status = GetBool(*options, "continuous_usage_stats", parsed.continuous_usage_stats);
    }
    if (!status.ok()) return FieldError("stream_options", status.message());
    out.stream_options = parsed;
  }
  TESSERA_RETURN_IF_ERROR(GetBool(body, "skip_special_tokens", out.skip_special_tokens));
  TESSERA_RETURN_IF_ERROR(
      GetBool(body, "include_stop_str_in_output", out.include_stop_str_in_output));
  std::optional<std::string> salt;
  TESSERA_RETURN_IF_ERROR(GetString(body, "cache_salt", salt));
  if (salt.has_value()) out.cache_salt = *salt;

  return ParseStructuredOutput(body, s.structured_output);
}

// A JSON schema given as an object, or as a string holding one (vLLM takes both).
absl::StatusOr<std::string> SchemaText(const json& schema, const char* field) {
  if (schema.is_object() || schema.is_boolean()) return schema.dump();
  if (schema.is_string()) return schema.get<std::string>();
  return FieldError(field,
                    absl::StrCat("expected a JSON schema (an object), got ", TypeName(schema)));
}

// OpenAI's response_format, vLLM's structured_outputs and its older guided_* fields: at most one
// of them; the grammar is compiled here so that a schema it cannot enforce is a 400 naming why.
absl::Status ParseStructuredOutput(const json& body, model::StructuredOutput& out) {
  using Kind = model::StructuredOutput::Kind;
  std::vector<std::string> given;
  const auto set = [&](const char* field, Kind kind, std::string spec) {
    given.push_back(field);
    out = {kind, std::move(spec)};
  };
  if (const json* format = Field(body, "response_format")) {
    const json* type = format->is_object() ? Field(*format, "type") : nullptr;
    const std::string name = type != nullptr && type->is_string() ? type->get<std::string>() : "";
    if (name == "json_object") {
      set("response_format", Kind::kJsonObject, "");
    } else if (name == "json_schema") {
      const json* spec = Field(*format, "json_schema");
      const json* schema = spec != nullptr && spec->is_object() ? Field(*spec, "schema") : nullptr;
      if (schema == nullptr) {
        return FieldError(
            "response_format",
            "json_schema needs {\"json_schema\": {\"name\": ..., \"schema\": {...}}}");
      }
      TESSERA_ASSIGN_OR_RETURN(std::string text, SchemaText(*schema, "response_format"));
      set("response_format", Kind::kJsonSchema, std::move(text));
    } else if (name != "text") {
      return FieldError("response_format",
                        "type must be \"text\", \"json_object\" or \"json_schema\"");
    }
  }
  if (const json* so = Field(body, "structured_outputs")) {
    absl::StatusOr<model::StructuredOutput> parsed =
        model::StructuredOutputFromVllmParams(so->dump());
    if (!parsed.ok()) return FieldError("structured_outputs", parsed.status().message());
    if (parsed->kind != Kind::kNone) set("structured_outputs", parsed->kind, parsed->spec);
  }
  if (const json* schema = Field(body, "guided_json")) {
    TESSERA_ASSIGN_OR_RETURN(std::string text, SchemaText(*schema, "guided_json"));
    set("guided_json", Kind::kJsonSchema, std::move(text));
  }
  if (const json* choice = Field(body, "guided_choice")) {
    set("guided_choice", Kind::kChoice, choice->dump());
  }
  if (const json* regex = Field(body, "guided_regex")) {
    if (!regex->is_string()) {
      return FieldError("guided_regex", absl::StrCat("expected a string, got ", TypeName(*regex)));
    }
    set("guided_regex", Kind::kRegex, regex->get<std::string>());
  }
  if (Field(body, "guided_grammar") != nullptr) {
    return FieldError("guided_grammar",
                      "is not supported (guided_json, guided_choice and "
                      "guided_regex are)");
  }
  if (given.size() > 1) {
    return FieldError(
        given[0].c_str(),
        absl::StrCat("and ", given[1], " both ask for a structured output; give one"));
  }
  if (given.empty()) return absl::OkStatus();
  if (absl::StatusOr<std::shared_ptr<const model::Grammar>> grammar = model::Grammar::Compile(out);
      !grammar.ok()) {
    return FieldError(given[0].c_str(), grammar.status().message());
  }
  return absl::OkStatus();
}

// Leading field name of a validation message ("top_p must be ...", "prompt: ...").
std::string LeadingField(absl::string_view message) {
  static const auto* const kFields =
      new absl::flat_hash_set<std::string>{"model",
                                           "prompt",
                                           "messages",
                                           "max_tokens",
                                           "max_completion_tokens",
                                           "min_tokens",
                                           "temperature",
                                           "top_p",
                                           "top_k",
                                           "min_p",
                                           "repetition_penalty",
                                           "presence_penalty",
                                           "frequency_penalty",
                                           "logprobs",
                                           "top_logprobs",
                                           "n",
                                           "best_of",
                                           "stop",
                                           "stop_token_ids",
                                           "seed",
                                           "stream",
                                           "stream_options",
                                           "echo",
                                           "ignore_eos",
                                           "skip_special_tokens",
                                           "include_stop_str_in_output",
                                           "chat_template_kwargs",
                                           "add_generation_prompt",
                                           "tools",
                                           "tool_choice",
                                           "include_reasoning",
                                           "parallel_tool_calls",
                                           "response_format",
                                           "body",
                                           "cache_salt",
                                           "add_special_tokens",
                                           "tokens",
                                           "return_token_strs",
                                           "logit_bias",
                                           "priority",
                                           "structured_outputs",
                                           "guided_json",
                                           "guided_choice",
                                           "guided_regex",
                                           "guided_grammar",
                                           "user"};
  size_t end = 0;
  while (end < message.size() &&
         ((message[end] >= 'a' && message[end] <= 'z') || message[end] == '_')) {
    ++end;
  }
  std::string word(message.substr(0, end));
  return kFields->contains(word) ? word : "";
}

double ClampLogprob(float logprob) {
  // vLLM replaces -inf by -9999.0 so that the JSON stays valid.
  if (std::isnan(logprob)) return -9999.0;
  return std::max<double>(logprob, -9999.0);
}

json Utf8Bytes(const std::string& text) {
  json bytes = json::array();
  for (const unsigned char c : text) bytes.push_back(static_cast<int>(c));
  return bytes;
}

}  // namespace

ApiError MakeError(int http_status, std::string message, std::string param) {
  ApiError error;
  error.http_status = http_status;
  error.message = std::move(message);
  error.param = std::move(param);
  switch (http_status) {
    case 400:
      error.type = "BadRequestError";
      break;
    case 404:
      error.type = "NotFoundError";
      break;
    case 405:
      error.type = "MethodNotAllowedError";
      break;
    case 413:
      error.type = "RequestEntityTooLargeError";
      break;
    case 429:
      error.type = "RateLimitError";
      break;
    case 501:
      error.type = "NotImplementedError";
      break;
    case 503:
      error.type = "ServiceUnavailableError";
      break;
    case 504:
      error.type = "TimeoutError";
      break;
    default:
      error.type = http_status >= 500 ? "InternalServerError" : "BadRequestError";
      break;
  }
  return error;
}

ApiError ErrorFromStatus(const absl::Status& status) {
  int http_status = 500;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      http_status = 400;
      break;
    case absl::StatusCode::kNotFound:
      http_status = 404;
      break;
    case absl::StatusCode::kResourceExhausted:
      http_status = 429;
      break;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kAborted:
      http_status = 503;
      break;
    case absl::StatusCode::kDeadlineExceeded:
      http_status = 504;
      break;
    case absl::StatusCode::kUnimplemented:
      http_status = 501;
      break;
    default:
      http_status = 500;
      break;
  }
  std::string message(status.message());
  if (message.empty()) message = absl::StatusCodeToString(status.code());
  std::string param = http_status == 400 ? LeadingField(message) : "";
  return MakeError(http_status, std::move(message), std::move(param));
}

ApiError ModelNotFound(absl::string_view name) {
  return MakeError(404, absl::StrCat("The model `", name, "` does not exist."), "model");
}

json ErrorJson(const ApiError& error) {
  json info = {{"message", error.message},
               {"type", error.type},
               {"param", error.param.empty() ? json(nullptr) : json(error.param)},
               {"code", error.http_status}};
  return json{{"error", std::move(info)}};
}

std::string Dump(const json& value) {
  return value.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

absl::StatusOr<json> ParseBody(absl::string_view body) {
  json parsed = json::parse(body.begin(), body.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return FieldError("body", "malformed JSON");
  if (!parsed.is_object()) {
    return FieldError("body", absl::StrCat("expected a JSON object, got ", TypeName(parsed)));
  }
  return parsed;
}

absl::StatusOr<CompletionRequest> ParseCompletionRequest(const json& body) {
  CompletionRequest out;
  TESSERA_RETURN_IF_ERROR(ParseCommon(body, out.common));
  out.common.max_tokens = 16;  // vLLM's default for completions; null: as many as fit
  if (auto it = body.find("max_tokens"); it != body.end()) {
    out.common.max_tokens.reset();
    TESSERA_RETURN_IF_ERROR(GetInt32(body, "max_tokens", out.common.max_tokens));
  }
  std::optional<int32_t> logprobs;
  TESSERA_RETURN_IF_ERROR(GetInt32(body, "logprobs", logprobs));
  if (logprobs.has_value() && (*logprobs < 0 || *logprobs > model::kMaxLogprobs)) {
    return FieldError("logprobs",
                      absl::StrCat("must be in [0, ", model::kMaxLogprobs, "], got ", *logprobs));
  }
  out.logprobs = logprobs;
  if (logprobs.has_value()) out.common.sampling.logprobs = std::max(*logprobs, 1);
  TESSERA_RETURN_IF_ERROR(GetBool(body, "echo", out.echo));
  TESSERA_RETURN_IF_ERROR(GetBool(body, "add_special_tokens", out.add_special_tokens));

  const json* prompt = Field(body, "prompt");
  if (prompt == nullptr) return FieldError("prompt", "required");
  if (prompt->is_string()) {
    out.text_prompts.push_back(prompt->get<std::string>());
  } else if (prompt->is_array()) {
    if (prompt->empty()) return FieldError("prompt", "must not be empty");
    const json& first = prompt->front();
    if (first.is_number_integer()) {
      out.token_prompts.emplace_back();
      TESSERA_RETURN_IF_ERROR(GetTokenIds(*prompt, "prompt", out.token_prompts.back()));
    } else if (first.is_string()) {
      for (const json& item : *prompt) {
        if (!item.is_string()) {
          return FieldError("prompt", "a list of prompts must hold only strings");
        }
        out.text_prompts.push_back(item.get<std::string>());
      }
    } else if (first.is_array()) {
      for (const json& item : *prompt) {
        if (!item.is_array() || item.empty()) {
          return FieldError("prompt", "a list of token-id prompts must hold non-empty lists");
        }
        out.token_prompts.emplace_back();
        TESSERA_RETURN_IF_ERROR(GetTokenIds(item, "prompt", out.token_prompts.back()));
      }
    } else {
      return FieldError("prompt", absl::StrCat("unexpected element type ", TypeName(first)));
    }
  } else {
    return FieldError("prompt",
                      absl::StrCat("expected a string, a list of strings, token ids or lists of "
                                   "token ids, got ",
                                   TypeName(*prompt)));
  }
  if (out.echo && out.logprobs.has_value()) {
    return FieldError("echo", "echo together with logprobs (prompt logprobs) is not supported");
  }
  return out;
}

namespace {

// add_generation_prompt and chat_template_kwargs, for the chat template.
absl::Status ParseTemplateOptions(const json& body, model::ChatTemplateOptions& out) {
  TESSERA_RETURN_IF_ERROR(GetBool(body, "add_generation_prompt", out.add_generation_prompt));
  if (const json* kwargs = Field(body, "chat_template_kwargs")) {
    if (!kwargs->is_object()) {
      return FieldError("chat_template_kwargs",
                        absl::StrCat("expected an object, got ", TypeName(*kwargs)));
    }
    if (const json* thinking = Field(*kwargs, "enable_thinking")) {
      if (!thinking->is_boolean()) {
        return FieldError("chat_template_kwargs", "enable_thinking: expected a boolean");
      }
      out.enable_thinking = thinking->get<bool>();
    }
  }
  return absl::OkStatus();
}

// The fields of `body` that tools and tool calls are read from, for a caller that has no copy
// with the client's key order (the keys come sorted then): tools, tool_choice,
// parallel_tool_calls, and messages when one holds tool calls. Most requests have none: {}.
nlohmann::ordered_json ToolFields(const json& body) {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  if (!body.is_object()) return out;
  for (const char* key : {"tools", "tool_choice", "parallel_tool_calls"}) {
    if (const auto it = body.find(key); it != body.end()) out[key] = nlohmann::ordered_json(*it);
  }
  if (const auto messages = body.find("messages"); messages != body.end() && messages->is_array()) {
    for (const json& m : *messages) {
      if (m.is_object() && m.contains("tool_calls")) {
        out["messages"] = nlohmann::ordered_json(*messages);
        break;
      }
    }
  }
  return out;
}

// `ordered` when the caller has it, else ToolFields(body) kept in `storage`.
const nlohmann::ordered_json* OrderedOrToolFields(const json& body,
                                                  const nlohmann::ordered_json* ordered,
                                                  nlohmann::ordered_json& storage) {
  if (ordered != nullptr) return ordered;
  storage = ToolFields(body);
  return &storage;
}

// An assistant message's tool_calls (`message` keeps the client's key order): each
// {"id", "type": "function", "function": {"name", "arguments": JSON text}}, the arguments parsed
// for the template (vLLM hands it a dict).
absl::Status ParseToolCalls(const nlohmann::ordered_json& message, const std::string& where,
                            std::vector<model::ChatToolCall>& out) {
  const auto calls = message.find("tool_calls");
  if (calls == message.end() || calls->is_null()) return absl::OkStatus();
  if (!calls->is_array()) {
    return FieldError("messages", where + ".tool_calls: expected a list of tool calls");
  }
  for (size_t k = 0; k < calls->size(); ++k) {
    const nlohmann::ordered_json& call = (*calls)[k];
    const std::string at = absl::StrCat(where, ".tool_calls[", k, "]");
    const auto function = call.is_object() ? call.find("function") : call.end();
    if (function == call.end() || !function->is_object()) {
      return FieldError("messages", at + ".function: expected an object");
    }
    const auto name = function->find("name");
    if (name == function->end() || !name->is_string()) {
      return FieldError("messages", at + ".function.name: expected a string");
    }
    model::ChatToolCall parsed;
    parsed.function = *function;
    const auto arguments = function->find("arguments");
    if (arguments == function->end() || arguments->is_null()) {
      parsed.function["arguments"] = nlohmann::ordered_json::object();
    } else if (arguments->is_string()) {
      const std::string& text = arguments->get_ref<const std::string&>();
      nlohmann::ordered_json value =
          nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (value.is_discarded()) {
        return FieldError("messages", at + ".function.arguments: not valid JSON");
      }
      parsed.function["arguments"] = std::move(value);
    }
    if (const auto id = call.find("id"); id != call.end() && !id->is_null()) {
      if (!id->is_string()) return FieldError("messages", at + ".id: expected a string");
      parsed.id = id->get<std::string>();
    }
    out.push_back(std::move(parsed));
  }
  return absl::OkStatus();
}

// "messages": a non-empty list of {role, content (a string or text parts), reasoning_content,
// tool_calls, tool_call_id}; `ordered` is the same body with its key order.
absl::Status ParseMessages(const json& body, const nlohmann::ordered_json& ordered,
                           std::vector<model::ChatMessage>& out) {
  const json* messages = Field(body, "messages");
  if (messages == nullptr) return FieldError("messages", "required");
  if (!messages->is_array() || messages->empty()) {
    return FieldError("messages", "expected a non-empty list of messages");
  }
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& message = (*messages)[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!message.is_object()) return FieldError("messages", where + ": expected an object");
    model::ChatMessage parsed;
    const json* role = Field(message, "role");
    if (role == nullptr || !role->is_string()) {
      return FieldError("messages", where + ".role: expected a string");
    }
    parsed.role = role->get<std::string>();
    if (const json* content = Field(message, "content")) {
      if (content->is_string()) {
        parsed.content = content->get<std::string>();
      } else if (content->is_array()) {
        std::vector<std::string> texts;
        for (const json& part : *content) {
          const json* type = part.is_object() ? Field(part, "type") : nullptr;
          const json* text = part.is_object() ? Field(part, "text") : nullptr;
          if (type == nullptr || !type->is_string() || type->get<std::string>() != "text" ||
              text == nullptr || !text->is_string()) {
            return FieldError("messages",
                              where +
                                  ".content: only {\"type\": \"text\", \"text\": ...} parts "
                                  "are supported");
          }
          texts.push_back(text->get<std::string>());
        }
        // vLLM joins text parts with newlines.
        parsed.content = absl::StrJoin(texts, "\n");
      } else {
        return FieldError("messages", where + ".content: expected a string or a list of parts");
      }
    }
    // vLLM's older name first, then its newer one (what its responses carry as both).
    std::optional<std::string> reasoning;
    absl::Status status = GetString(message, "reasoning_content", reasoning);
    if (status.ok() && !reasoning.has_value()) status = GetString(message, "reasoning", reasoning);
    if (!status.ok()) return FieldError("messages", absl::StrCat(where, ".", status.message()));
    parsed.reasoning_content = reasoning;
    if (const auto ordered_messages = ordered.find("messages"); ordered_messages != ordered.end() &&
                                                                ordered_messages->is_array() &&
                                                                i < ordered_messages->size()) {
      TESSERA_RETURN_IF_ERROR(ParseToolCalls((*ordered_messages)[i], where, parsed.tool_calls));
    }
    std::optional<std::string> tool_call_id;
    status = GetString(message, "tool_call_id", tool_call_id);
    if (!status.ok()) return FieldError("messages", absl::StrCat(where, ".", status.message()));
    parsed.tool_call_id = tool_call_id.value_or("");
    out.push_back(std::move(parsed));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ChatRequest> ParseChatRequest(const json& body,
                                             const nlohmann::ordered_json* ordered) {
  ChatRequest out;
  TESSERA_RETURN_IF_ERROR(ParseCommon(body, out.common));
  nlohmann::ordered_json sorted;
  ordered = OrderedOrToolFields(body, ordered, sorted);
  std::optional<int32_t> max_tokens;
  TESSERA_RETURN_IF_ERROR(GetInt32(body, "max_tokens", max_tokens));
  std::optional<int32_t> max_completion_tokens;
  TESSERA_RETURN_IF_ERROR(GetInt32(body, "max_completion_tokens", max_completion_tokens));
  out.common.max_tokens = max_completion_tokens.has_value() ? max_completion_tokens : max_tokens;
  if (max_completion_tokens.has_value() && *max_completion_tokens < 1) {
    return FieldError("max_completion_tokens",
                      absl::StrCat("must be at least 1, got ", *max_completion_tokens));
  }

  TESSERA_RETURN_IF_ERROR(GetBool(body, "logprobs", out.logprobs));
  std::optional<int32_t> top_logprobs;
  TESSERA_RETURN_IF_ERROR(GetInt32(body, "top_logprobs", top_logprobs));
  if (top_logprobs.has_value()) {
    if (*top_logprobs < 0 || *top_logprobs > model::kMaxLogprobs) {
      return FieldError("top_logprobs", absl::StrCat("must be in [0, ", model::kMaxLogprobs,
                                                     "], got ", *top_logprobs));
    }
    if (!out.logprobs && *top_logprobs > 0) {
      return FieldError("top_logprobs", "requires logprobs to be true");
    }
    out.top_logprobs = *top_logprobs;
  }
  if (out.logprobs) out.common.sampling.logprobs = std::max(out.top_logprobs, 1);

  TESSERA_RETURN_IF_ERROR(ParseTemplateOptions(body, out.template_options));
  TESSERA_RETURN_IF_ERROR(GetBool(body, "add_special_tokens", out.add_special_tokens));
  TESSERA_RETURN_IF_ERROR(GetBool(body, "include_reasoning", out.include_reasoning));
  TESSERA_RETURN_IF_ERROR(ParseMessages(body, *ordered, out.messages));
  TESSERA_RETURN_IF_ERROR(
      ParseToolRequest(*ordered, out.tools, out.common.sampling.structured_output));
  out.template_options.tools = out.tools.tools;
  return out;
}

absl::StatusOr<TokenizeRequest> ParseTokenizeRequest(const json& body,
                                                     const nlohmann::ordered_json* ordered) {
  if (!body.is_object()) return FieldError("body", "expected a JSON object");
  nlohmann::ordered_json sorted;
  ordered = OrderedOrToolFields(body, ordered, sorted);
  TokenizeRequest out;
  TESSERA_RETURN_IF_ERROR(GetString(body, "model", out.model));
  TESSERA_RETURN_IF_ERROR(GetBool(body, "return_token_strs", out.return_token_strs));
  const bool has_prompt = Field(body, "prompt") != nullptr;
  const bool has_messages = Field(body, "messages") != nullptr;
  if (has_prompt == has_messages) {
    return FieldError(has_prompt ? "messages" : "prompt",
                      "give exactly one of prompt (text) and messages (a conversation)");
  }
  if (has_prompt) {
    TESSERA_RETURN_IF_ERROR(GetString(body, "prompt", out.prompt));
    out.add_special_tokens = true;  // as a completion prompt
  } else {
    TESSERA_RETURN_IF_ERROR(ParseTemplateOptions(body, out.template_options));
    TESSERA_RETURN_IF_ERROR(ParseMessages(body, *ordered, out.messages));
    ToolRequest tools;
    model::StructuredOutput unused;
    TESSERA_RETURN_IF_ERROR(ParseToolRequest(*ordered, tools, unused));
    out.template_options.tools = std::move(tools.tools);
    out.add_special_tokens = false;  // the template has them
  }
  TESSERA_RETURN_IF_ERROR(GetBool(body, "add_special_tokens", out.add_special_tokens));
  return out;
}

absl::StatusOr<DetokenizeRequest> ParseDetokenizeRequest(const json& body) {
  if (!body.is_object()) return FieldError("body", "expected a JSON object");
  DetokenizeRequest out;
  TESSERA_RETURN_IF_ERROR(GetString(body, "model", out.model));
  const json* tokens = Field(body, "tokens");
  if (tokens == nullptr) return FieldError("tokens", "required");
  if (!tokens->is_array()) {
    return FieldError("tokens",
                      absl::StrCat("expected a list of token ids, got ", TypeName(*tokens)));
  }
  TESSERA_RETURN_IF_ERROR(GetTokenIds(*tokens, "tokens", out.tokens));
  return out;
}

json UsageJson(const Usage& usage) {
  return json{{"prompt_tokens", usage.prompt_tokens},
              {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
              {"completion_tokens", usage.completion_tokens},
              {"prompt_tokens_details", json{{"cached_tokens", usage.cached_tokens}}}};
}

int64_t CodePointCount(absl::string_view text) {
  int64_t count = 0;
  for (const char c : text) {
    if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++count;
  }
  return count;
}

json CompletionLogprobsJson(const ChoiceOutput& choice, size_t begin, size_t end, int32_t num_top,
                            int64_t initial_offset, const TokenText& token_text) {
  json text_offset = json::array();
  json token_logprobs = json::array();
  json tokens = json::array();
  json top = json::array();
  int64_t offset = initial_offset;
  for (size_t i = begin; i < end && i < choice.token_ids.size(); ++i) {
    const std::string token = token_text(choice.token_ids[i]);
    const double logprob = i < choice.logprobs.size() ? ClampLogprob(choice.logprobs[i]) : 0.0;
    text_offset.push_back(offset);
    offset += CodePointCount(token);
    token_logprobs.push_back(logprob);
    tokens.push_back(token);
    json entry = json::object();
    if (i < choice.top_logprobs.size()) {
      const auto& candidates = choice.top_logprobs[i];
      for (size_t k = 0; k < candidates.size() && static_cast<int32_t>(k) < num_top; ++k) {
        entry[token_text(candidates[k].token_id)] = ClampLogprob(candidates[k].logprob);
      }
    }
    // The sampled token is always among them (vLLM adds it).
    if (!entry.contains(token)) entry[token] = logprob;
    top.push_back(std::move(entry));
  }
  return json{{"text_offset", std::move(text_offset)},
              {"token_logprobs", std::move(token_logprobs)},
              {"tokens", std::move(tokens)},
              {"top_logprobs", std::move(top)}};
}

json ChatLogprobsJson(const ChoiceOutput& choice, size_t begin, size_t end, int32_t num_top,
                      const TokenText& token_text) {
  json content = json::array();
  for (size_t i = begin; i < end && i < choice.token_ids.size(); ++i) {
    const std::string token = token_text(choice.token_ids[i]);
    json top = json::array();
    if (i < choice.top_logprobs.size()) {
      const auto& candidates = choice.top_logprobs[i];
      for (size_t k = 0; k < candidates.size() && static_cast<int32_t>(k) < num_top; ++k) {
        const std::string text = token_text(candidates[k].token_id);
        top.push_back(json{{"token", text},
                           {"logprob", ClampLogprob(candidates[k].logprob)},
                           {"bytes", Utf8Bytes(text)}});
      }
    }
    content.push_back(
        json{{"token", token},
             {"logprob", i < choice.logprobs.size() ? ClampLogprob(choice.logprobs[i]) : 0.0},
             {"bytes", Utf8Bytes(token)},
             {"top_logprobs", std::move(top)}});
  }
  return json{{"content", std::move(content)}};
}

json FinishReasonJson(const std::optional<model::FinishReason>& finish) {
  if (!finish.has_value()) return nullptr;
  return std::string(model::FinishReasonName(*finish));
}

namespace {

json ResponseJson(const ResponseHeader& header, absl::string_view object, json choices,
                  const std::optional<Usage>& usage) {
  json out = {{"id", header.id},
              {"object", object},
              {"created", header.created},
              {"model", header.model},
              {"choices", std::move(choices)}};
  if (usage.has_value()) out["usage"] = UsageJson(*usage);
  return out;
}

}  // namespace

json CompletionResponseJson(const ResponseHeader& header, json choices,
                            const std::optional<Usage>& usage) {
  return ResponseJson(header, "text_completion", std::move(choices), usage);
}

json ChatResponseJson(const ResponseHeader& header, json choices,
                      const std::optional<Usage>& usage) {
  return ResponseJson(header, "chat.completion", std::move(choices), usage);
}

json ChatChunkJson(const ResponseHeader& header, json choices, const std::optional<Usage>& usage) {
  return ResponseJson(header, "chat.completion.chunk", std::move(choices), usage);
}

json ModelListJson(const ModelInfo& info, const std::vector<std::string>& names) {
  json data = json::array();
  for (const std::string& name : names) {
    data.push_back(json{{"id", name},
                        {"object", "model"},
                        {"created", info.created_unix_s},
                        {"owned_by", "tessera"},
                        {"root", info.root.empty() ? info.name : info.root},
                        {"parent", nullptr},
                        {"max_model_len", info.max_model_len},
                        {"permission", json::array()}});
  }
  return json{{"object", "list"}, {"data", std::move(data)}};
}

std::string SseEvent(const json& value) { return absl::StrCat("data: ", Dump(value), "\n\n"); }

}  // namespace tessera::coordinator::api
