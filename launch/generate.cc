// `tessera generate`: runs prompts (token ids) through a model in this process and prints the
// generated token ids, one line per prompt.
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "launch/commands.h"
#include "launch/engine_setup.h"
#include "launch/replica_runner.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "worker/engine.h"

namespace tessera::launch {
namespace {

struct GenerateFlags {
  std::string model;
  std::vector<std::string> prompt_ids;
  worker::SamplingParams sampling;
  int64_t seed = 0;
  std::string stop_token_ids;
  std::string output = "text";
  EngineFlags engine;
  ReplicaFlags replica;
};

std::string JsonFloat(float f) {
  if (std::isinf(f)) return f > 0 ? "1e999" : "-1e999";  // JSON has no infinity; these parse as it
  return absl::StrCat(f);
}

void PrintResults(const std::vector<worker::RequestOutput>& results, const std::string& output) {
  for (size_t i = 0; i < results.size(); ++i) {
    const worker::RequestOutput& r = results[i];
    if (output == "json") {
      std::string top;
      for (size_t t = 0; t < r.top_logprobs.size(); ++t) {
        absl::StrAppend(&top, t ? ", " : "", "[");
        for (size_t k = 0; k < r.top_logprobs[t].size(); ++k) {
          absl::StrAppend(&top, k ? ", " : "", "[", r.top_logprobs[t][k].token_id, ", ",
                          JsonFloat(r.top_logprobs[t][k].logprob), "]");
        }
        absl::StrAppend(&top, "]");
      }
      std::vector<std::string> logprobs;
      for (float f : r.logprobs) logprobs.push_back(JsonFloat(f));
      std::printf(
          "{\"index\": %zu, \"token_ids\": [%s], \"logprobs\": [%s], \"top_logprobs\": [%s], "
          "\"finish_reason\": \"%s\", \"num_cached_tokens\": %d}\n",
          i, absl::StrJoin(r.token_ids, ", ").c_str(), absl::StrJoin(logprobs, ", ").c_str(),
          top.c_str(), std::string(worker::FinishReasonName(r.finish_reason)).c_str(),
          r.num_cached_tokens);
    } else {
      std::printf("%s\n", absl::StrJoin(r.token_ids, ",").c_str());
    }
  }
  std::fflush(stdout);
}

absl::Status Generate(const GenerateFlags& flags) {
  TESSERA_ASSIGN_OR_RETURN(model::ModelConfig config, model::LoadModelConfig(flags.model));
  TESSERA_ASSIGN_OR_RETURN(auto weights, model::SafetensorsCheckpoint::Open(flags.model));
  std::vector<worker::Request> requests;
  worker::SamplingParams sampling = flags.sampling;
  sampling.seed = flags.seed;
  if (!flags.stop_token_ids.empty()) {
    TESSERA_ASSIGN_OR_RETURN(sampling.stop_token_ids, ParseIdList(flags.stop_token_ids));
  }
  for (const std::string& text : flags.prompt_ids) {
    worker::Request request;
    TESSERA_ASSIGN_OR_RETURN(request.prompt, ParseIdList(text));
    request.sampling = sampling;
    requests.push_back(std::move(request));
  }
  // The replica's leader runs the engine and prints; under TP/PP the other ranks follow its steps.
  auto leader = [&](worker::StepExecutor& executor, int32_t max_model_len,
                    worker::KvEndpoint*) -> absl::Status {
    TESSERA_ASSIGN_OR_RETURN(
        auto engine,
        worker::Engine::Create(executor, config, EngineOptionsFor(flags.engine, max_model_len)));
    TESSERA_ASSIGN_OR_RETURN(std::vector<worker::RequestOutput> results,
                             worker::GenerateAll(*engine, requests, absl::Hours(24)));
    TESSERA_RETURN_IF_ERROR(engine->Shutdown(absl::Seconds(10)));
    for (size_t i = 0; i < results.size(); ++i) {
      if (!results[i].status.ok()) {
        return absl::Status(results[i].status.code(),
                            absl::StrCat("request ", i, ": ", results[i].status.message()));
      }
    }
    PrintResults(results, flags.output);
    return absl::OkStatus();
  };
  bool is_leader = false;
  return RunReplica(config, *weights, flags.engine, flags.replica, leader, &is_leader);
}

}  // namespace

Command RegisterGenerate(CLI::App& app) {
  auto flags = std::make_shared<GenerateFlags>();
  CLI::App* sub = app.add_subcommand(
      "generate", "Generate from token-id prompts in this process; prints one line per prompt");
  sub->add_option("--model", flags->model, "Hugging Face model directory")->required();
  sub->add_option("--prompt-ids", flags->prompt_ids,
                  "A prompt as comma-separated token ids; repeat for several prompts")
      ->required();
  worker::SamplingParams& sp = flags->sampling;
  sub->add_option("--max-tokens", sp.max_tokens)->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--min-tokens", sp.min_tokens, "EOS and stop ids are banned until this many")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--temperature", sp.temperature, "0: greedy")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--top-k", sp.top_k, "0: no limit")->capture_default_str();
  sub->add_option("--top-p", sp.top_p)->capture_default_str()->check(CLI::Range(0.0, 1.0));
  sub->add_option("--min-p", sp.min_p)->capture_default_str()->check(CLI::Range(0.0, 1.0));
  sub->add_option("--repetition-penalty", sp.repetition_penalty)->capture_default_str();
  sub->add_option("--presence-penalty", sp.presence_penalty)->capture_default_str();
  sub->add_option("--frequency-penalty", sp.frequency_penalty)->capture_default_str();
  sub->add_option("--logprobs", sp.logprobs, "Top-N logprobs per generated token (0 to 20)")
      ->capture_default_str();
  sub->add_option("--stop-token-ids", flags->stop_token_ids,
                  "Comma-separated ids that end a sequence");
  sub->add_option("--seed", flags->seed)->capture_default_str();
  sub->add_flag("--ignore-eos", sp.ignore_eos, "Keep generating past end-of-sequence tokens");
  sub->add_option("--output", flags->output, "text (ids per line) or json (one object per line)")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
  AddEngineFlags(*sub, flags->engine);
  AddReplicaFlags(*sub, flags->replica);
  return ExitCodeOf("generate", [flags] { return Generate(*flags); });
}

}  // namespace tessera::launch
