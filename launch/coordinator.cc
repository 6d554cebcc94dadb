// `tessera coordinator`: the front door and control plane. Loads the model's config and tokenizer
// (never its weights), serves the OpenAI HTTP API and the KServe v2 gRPC API, and takes replica
// registrations on an internal gRPC port. SIGINT/SIGTERM drain it: readiness turns false, new
// requests are refused, requests in flight get --drain-timeout seconds to finish.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/logging.h"
#include "common/net.h"
#include "common/status_macros.h"
#include "coordinator/api/api_keys.h"
#include "coordinator/api/kserve_server.h"
#include "coordinator/api/openai_http.h"
#include "coordinator/api/reasoning.h"
#include "coordinator/api/tool_calls.h"
#include "coordinator/coordinator.h"
#include "coordinator/rpc/grpc_replica_client.h"
#include "coordinator/rpc/registry_server.h"
#include "launch/commands.h"
#include "launch/signals.h"
#include "launch/topology.h"
#include "model/chat_template.h"
#include "model/config.h"
#include "model/tokenizer.h"

namespace tessera::launch {
namespace {

struct CoordinatorFlags {
  std::string model;
  std::string served_model_name;
  std::string host = "127.0.0.1";
  int port = 8000;
  int grpc_port = 8001;
  std::string internal_address = "127.0.0.1:8002";
  int32_t max_model_len = 0;
  int64_t max_queued_requests = 256;
  double lease_timeout_s = 3.0;
  double drain_timeout_s = 30.0;
  std::string port_file;
  std::string topology;               // the settings the command line does not give come from here
  bool check = false;                 // validate and exit
  std::vector<std::string> api_keys;  // --api-key, then $TESSERA_API_KEY
  std::string tool_call_parser = "auto";
  std::string reasoning_parser = "auto";
};

// A parser flag (--tool-call-parser, --reasoning-parser): "auto" is the chat template's parser
// (unset), "none" is none (""), anything else must be one `known` takes.
absl::StatusOr<std::optional<std::string>> ParserFlag(absl::string_view flag,
                                                      const std::string& value,
                                                      bool (*known)(absl::string_view),
                                                      absl::string_view names) {
  if (value == "auto") return std::optional<std::string>();
  if (value == "none") return std::optional<std::string>("");
  if (value.empty() || !known(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " '", value, "' is not one of auto, none, ", names));
  }
  return std::optional<std::string>(value);
}

absl::StatusOr<std::optional<std::string>> ToolCallParserOf(const CoordinatorFlags& flags) {
  return ParserFlag("--tool-call-parser", flags.tool_call_parser,
                    coordinator::api::IsToolCallParser, coordinator::api::kToolCallParsers);
}

absl::StatusOr<std::optional<std::string>> ReasoningParserOf(const CoordinatorFlags& flags) {
  return ParserFlag("--reasoning-parser", flags.reasoning_parser,
                    coordinator::api::IsReasoningParser, coordinator::api::kReasoningParsers);
}

// The keys clients must present: --api-key (repeatable), else $TESSERA_API_KEY (what `tessera
// serve --api-key` and `tessera launch --api-key` pass, so that no key shows in a process list).
absl::StatusOr<std::vector<std::string>> ApiKeysOf(const CoordinatorFlags& flags) {
  std::vector<std::string> keys = flags.api_keys;
  if (keys.empty()) {
    if (const char* env = std::getenv("TESSERA_API_KEY"); env != nullptr && *env != '\0') {
      keys.push_back(env);
    }
  }
  TESSERA_RETURN_IF_ERROR(coordinator::api::ApiKeys::Validate(
      keys, flags.api_keys.empty() ? "TESSERA_API_KEY" : "--api-key"));
  return keys;
}

// Fills what the command line left unset from the topology file's model and coordinator section
// (what `tessera launch` would pass), so a Kubernetes coordinator reads the same ConfigMap as its
// workers. `given(name)`: whether the command line set that option.
absl::Status ApplyTopology(CoordinatorFlags& flags, const std::function<bool(const char*)>& given) {
  TESSERA_ASSIGN_OR_RETURN(const Topology t, LoadTopology(flags.topology));
  const CoordinatorSettings c = CoordinatorSettingsOf(t);
  if (!given("--model")) flags.model = c.model;
  if (!given("--served-model-name")) flags.served_model_name = c.served_model_name;
  if (!given("--host")) flags.host = c.bind_host;
  if (!given("--port")) flags.port = c.http_port;
  if (!given("--grpc-port")) flags.grpc_port = c.grpc_port;
  if (!given("--internal-address")) flags.internal_address = c.internal_address;
  if (!given("--max-model-len")) flags.max_model_len = c.max_model_len;
  if (!given("--max-queued-requests")) flags.max_queued_requests = c.max_queued_requests;
  if (!given("--lease-timeout")) flags.lease_timeout_s = c.lease_timeout_s;
  if (!given("--drain-timeout")) flags.drain_timeout_s = c.drain_timeout_s;
  if (!given("--tool-call-parser")) flags.tool_call_parser = c.tool_call_parser;
  if (!given("--reasoning-parser")) flags.reasoning_parser = c.reasoning_parser;
  return absl::OkStatus();
}

// --check: the flags, and the model when it is on this machine (its config and tokenizer load).
absl::Status CheckCoordinator(const CoordinatorFlags& flags) {
  TESSERA_RETURN_IF_ERROR(ApiKeysOf(flags).status());
  TESSERA_RETURN_IF_ERROR(ToolCallParserOf(flags).status());
  TESSERA_RETURN_IF_ERROR(ReasoningParserOf(flags).status());
  for (const auto& [name, port] :
       {std::pair<const char*, int>{"--port", flags.port}, {"--grpc-port", flags.grpc_port}}) {
    if (port < 0 || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(name, " ", port, " is not in [0, 65535]"));
    }
  }
  const size_t colon = flags.internal_address.rfind(':');
  int internal = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(flags.internal_address.substr(colon + 1), &internal) || internal < 0 ||
      internal > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--internal-address '", flags.internal_address, "' is not HOST:PORT"));
  }
  if (!(flags.lease_timeout_s > 0)) {
    return absl::InvalidArgumentError("--lease-timeout must be positive");
  }
  if (flags.drain_timeout_s < 0 || flags.max_queued_requests < 0 || flags.max_model_len < 0) {
    return absl::InvalidArgumentError(
        "--drain-timeout, --max-queued-requests and --max-model-len must not be negative");
  }
  std::string model_note = "not on this machine: not checked";
  std::error_code error;
  if (std::filesystem::is_directory(flags.model, error)) {
    TESSERA_ASSIGN_OR_RETURN(model::ModelConfig config, model::LoadModelConfig(flags.model));
    TESSERA_RETURN_IF_ERROR(model::Tokenizer::FromDirectory(flags.model).status());
    if (flags.max_model_len > config.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("--max-model-len ", flags.max_model_len,
                                                     " exceeds the model's "
                                                     "max_position_embeddings ",
                                                     config.max_position_embeddings));
    }
    model_note = "config and tokenizer load";
  }
  std::printf(
      "tessera coordinator: configuration ok — model %s (%s), HTTP %s:%d, gRPC %s:%d, replicas "
      "register at %s\n",
      flags.model.c_str(), model_note.c_str(), flags.host.c_str(), flags.port, flags.host.c_str(),
      flags.grpc_port, flags.internal_address.c_str());
  return absl::OkStatus();
}

absl::Status WritePortFile(const std::string& path, int http, int grpc, int internal) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << "{\"http\": " << http << ", \"grpc\": " << grpc << ", \"internal\": " << internal << "}\n";
    if (!f) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status RunCoordinator(const CoordinatorFlags& flags) {
  if (flags.check) return CheckCoordinator(flags);
  TESSERA_ASSIGN_OR_RETURN(const std::vector<std::string> api_keys, ApiKeysOf(flags));
  InstallTerminationHandlers();
  TESSERA_ASSIGN_OR_RETURN(model::ModelConfig config, model::LoadModelConfig(flags.model));
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> tokenizer,
                           model::Tokenizer::FromDirectory(flags.model));
  std::optional<model::ChatTemplate> chat;
  if (auto t = model::ChatTemplate::FromTokenizer(*tokenizer); t.ok()) {
    chat = *std::move(t);
  } else {
    TESSERA_LOG(WARNING) << "no chat template: " << t.status()
                         << " (/v1/chat/completions is refused)";
  }
  coordinator::CoordinatorOptions options;
  options.model.name = flags.served_model_name.empty() ? flags.model : flags.served_model_name;
  options.model.root = flags.model;
  options.model.vocab_size = static_cast<int32_t>(config.vocab_size);
  options.model.max_model_len =
      flags.max_model_len > 0
          ? flags.max_model_len
          : static_cast<int32_t>(std::min<int64_t>(config.max_position_embeddings, 8192));
  if (options.model.max_model_len > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--max-model-len ", flags.max_model_len,
                                                   " exceeds the model's max_position_embeddings ",
                                                   config.max_position_embeddings));
  }
  options.max_queued_requests = flags.max_queued_requests;
  TESSERA_ASSIGN_OR_RETURN(options.tool_call_parser, ToolCallParserOf(flags));
  TESSERA_ASSIGN_OR_RETURN(options.reasoning_parser, ReasoningParserOf(flags));
  if (!(flags.lease_timeout_s > 0)) {
    return absl::InvalidArgumentError("--lease-timeout must be positive");
  }
  options.registry.lease = absl::Seconds(flags.lease_timeout_s);
  std::unique_ptr<coordinator::ReplicaConnector> connector =
      coordinator::MakeGrpcReplicaConnector();
  TESSERA_ASSIGN_OR_RETURN(
      std::unique_ptr<coordinator::Coordinator> core,
      coordinator::Coordinator::Create(options, std::move(tokenizer), std::move(chat), *connector));
  TESSERA_ASSIGN_OR_RETURN(auto registry,
                           coordinator::RegistryServer::Create(*core, flags.internal_address));
  coordinator::KServeServerOptions kserve_options;
  kserve_options.address = HostPort(flags.host, flags.grpc_port);
  kserve_options.service.api_keys = api_keys;
  TESSERA_ASSIGN_OR_RETURN(auto kserve, coordinator::KServeServer::Create(*core, kserve_options));
  coordinator::api::OpenAiHttpOptions http_options;
  http_options.host = flags.host;
  http_options.port = flags.port;
  http_options.api_keys = api_keys;
  TESSERA_ASSIGN_OR_RETURN(auto http,
                           coordinator::api::OpenAiHttpServer::Create(*core, http_options));
  if (!flags.port_file.empty()) {
    TESSERA_RETURN_IF_ERROR(
        WritePortFile(flags.port_file, http->port(), kserve->port(), registry->port()));
  }
  std::printf(
      "tessera coordinator: model %s; OpenAI HTTP on http://%s/v1, KServe gRPC on %s, "
      "replicas register at port %d%s\n",
      options.model.name.c_str(), HostPort(flags.host, http->port()).c_str(),
      HostPort(flags.host, kserve->port()).c_str(), registry->port(),
      api_keys.empty() ? "" : absl::StrCat("; ", api_keys.size(), " API key(s) required").c_str());
  std::fflush(stdout);

  // Serve until a termination signal; keep gRPC health in step with readiness meanwhile.
  std::optional<int> sig;
  while (!(sig = WaitForTerminationSignal(absl::Milliseconds(250))).has_value()) {
    kserve->RefreshHealth();
  }
  TESSERA_LOG(INFO) << "signal " << *sig << ": draining (" << flags.drain_timeout_s << " s)";
  kserve->SetServing(false);
  const absl::Status drained = core->Drain(absl::Seconds(flags.drain_timeout_s));
  if (!drained.ok()) TESSERA_LOG(WARNING) << drained;
  http->Shutdown();
  kserve->Shutdown(absl::Now() + absl::Seconds(2));
  registry->Shutdown(absl::Seconds(1));
  return absl::OkStatus();
}

}  // namespace

Command RegisterCoordinator(CLI::App& app) {
  auto flags = std::make_shared<CoordinatorFlags>();
  CLI::App* sub = app.add_subcommand(
      "coordinator", "Serve the OpenAI and KServe APIs in front of registered replicas");
  sub->add_option("--model", flags->model,
                  "Model directory (config.json, tokenizer.json); required without --topology");
  sub->add_option("--topology", flags->topology,
                  "A topology file (docs/topology.md): its model and coordinator section give "
                  "every setting the command line does not");
  sub->add_option("--served-model-name", flags->served_model_name,
                  "The model's name in the APIs (default: the --model path, as vLLM)");
  sub->add_option("--host", flags->host, "Address the public APIs bind to")->capture_default_str();
  sub->add_option("--port", flags->port, "OpenAI HTTP port (0: any free port)")
      ->capture_default_str();
  sub->add_option("--grpc-port", flags->grpc_port, "KServe v2 gRPC port (0: any free port)")
      ->capture_default_str();
  sub->add_option("--internal-address", flags->internal_address,
                  "Where replicas register (internal; loopback unless told otherwise)")
      ->capture_default_str();
  sub->add_option("--max-model-len", flags->max_model_len,
                  "Prompt plus output tokens of one request (0: the model's, at most 8192)");
  sub->add_option("--max-queued-requests", flags->max_queued_requests,
                  "Requests admitted beyond the replicas' running capacity; more get 429")
      ->capture_default_str();
  sub->add_option("--lease-timeout", flags->lease_timeout_s,
                  "Seconds without a heartbeat before a replica leaves rotation")
      ->capture_default_str();
  sub->add_option("--drain-timeout", flags->drain_timeout_s,
                  "Seconds requests in flight get to finish on SIGTERM")
      ->capture_default_str();
  sub->add_option("--port-file", flags->port_file,
                  "Write the bound ports here as JSON once listening (for scripts)");
  sub->add_option("--api-key", flags->api_keys,
                  "Require \"Authorization: Bearer KEY\" (HTTP) or the metadata \"authorization: "
                  "Bearer KEY\" (gRPC) on every API call but health, metrics and version; "
                  "repeatable (default: $TESSERA_API_KEY)");
  sub->add_option("--tool-call-parser", flags->tool_call_parser,
                  "How tool_choice \"auto\" reads tool calls from the model's text: hermes "
                  "(Qwen2.5, Qwen3), llama3_json (Llama 3.1+), mistral; auto: the chat "
                  "template's; none: \"auto\" is refused")
      ->capture_default_str();
  sub->add_option("--reasoning-parser", flags->reasoning_parser,
                  "How chat responses split a thinking model's reasoning (message.reasoning) from "
                  "its answer: qwen3, deepseek_r1; auto: the chat template's; none: all content")
      ->capture_default_str();
  sub->add_flag("--check", flags->check,
                "Validate the flags (and the model when it is here), print them and exit");
  return ExitCodeOf("coordinator", [flags, sub] {
    if (!flags->topology.empty()) {
      TESSERA_RETURN_IF_ERROR(
          ApplyTopology(*flags, [sub](const char* name) { return sub->count(name) > 0; }));
    }
    if (flags->model.empty()) {
      return absl::InvalidArgumentError("--model is required (or --topology naming one)");
    }
    return RunCoordinator(*flags);
  });
}

}  // namespace tessera::launch
