// `tessera generate`: runs prompts (token ids) through a model in this process and prints the
// generated token ids, one line per prompt.
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
#include "model/config.h"
#include "model/safetensors.h"

namespace tessera::launch {
namespace {

struct GenerateFlags {
  std::string model;
  std::vector<std::string> prompt_ids;
  int32_t max_tokens = 16;
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  int64_t seed = 0;
  bool ignore_eos = false;
  std::string output = "text";
  EngineFlags engine;
};

absl::Status Generate(const GenerateFlags& flags) {
  TESSERA_ASSIGN_OR_RETURN(model::ModelConfig config, model::LoadModelConfig(flags.model));
  TESSERA_ASSIGN_OR_RETURN(auto weights, model::SafetensorsCheckpoint::Open(flags.model));
  std::vector<worker::GenerateRequest> requests;
  for (const std::string& text : flags.prompt_ids) {
    worker::GenerateRequest request;
    TESSERA_ASSIGN_OR_RETURN(request.prompt, ParseIdList(text));
    request.sampling.max_tokens = flags.max_tokens;
    request.sampling.temperature = flags.temperature;
    request.sampling.top_k = flags.top_k;
    request.sampling.top_p = flags.top_p;
    request.sampling.seed = flags.seed;
    request.sampling.ignore_eos = flags.ignore_eos;
    requests.push_back(std::move(request));
  }
  TESSERA_ASSIGN_OR_RETURN(Engine engine, BuildEngine(config, *weights, flags.engine));
  weights.reset();  // the weights are on the backend now
  TESSERA_ASSIGN_OR_RETURN(std::vector<worker::GenerateResult> results,
                           engine.generator->Generate(requests));
  for (size_t i = 0; i < results.size(); ++i) {
    const worker::GenerateResult& r = results[i];
    if (flags.output == "json") {
      std::printf(
          "{\"index\": %zu, \"token_ids\": [%s], \"logprobs\": [%s], "
          "\"finish_reason\": \"%s\"}\n",
          i, absl::StrJoin(r.tokens, ", ").c_str(), absl::StrJoin(r.logprobs, ", ").c_str(),
          std::string(worker::FinishReasonName(r.finish_reason)).c_str());
    } else {
      std::printf("%s\n", absl::StrJoin(r.tokens, ",").c_str());
    }
  }
  return absl::OkStatus();
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
  sub->add_option("--max-tokens", flags->max_tokens)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--temperature", flags->temperature, "0: greedy")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--top-k", flags->top_k, "0: no limit")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--top-p", flags->top_p)->capture_default_str()->check(CLI::Range(0.0, 1.0));
  sub->add_option("--seed", flags->seed)->capture_default_str();
  sub->add_flag("--ignore-eos", flags->ignore_eos, "Keep generating past end-of-sequence tokens");
  sub->add_option("--output", flags->output, "text (ids per line) or json (one object per line)")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
  AddEngineFlags(*sub, flags->engine);
  return [flags] {
    const absl::Status status = Generate(*flags);
    if (!status.ok()) {
      std::fprintf(stderr, "error: generate: %s\n", status.ToString().c_str());
      return 1;
    }
    return 0;
  };
}

}  // namespace tessera::launch
