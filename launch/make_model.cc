// `tessera make-model`: a deterministic random checkpoint in Hugging Face format.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "launch/commands.h"
#include "launch/model_flags.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "model/weights.h"

namespace tessera::launch {
namespace {

struct MakeModelFlags {
  std::string out;
  ModelShapeFlags shape;
  std::string dtype = "float32";
  uint64_t seed = 0;
  float init_std = 0.02f;
};

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file << text;
  file.close();
  if (!file) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::Status MakeModel(const MakeModelFlags& flags) {
  TESSERA_ASSIGN_OR_RETURN(model::ModelConfig config, ModelConfigFromFlags(flags.shape));
  TESSERA_ASSIGN_OR_RETURN(DataType dtype, DataTypeFromName(flags.dtype));
  if (!IsFloatingPoint(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype '", flags.dtype, "' must be float32, bfloat16 or float16"));
  }
  config.torch_dtype = dtype;
  std::error_code ec;
  std::filesystem::create_directories(flags.out, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", flags.out, ": ", ec.message()));

  // A byte-level BPE tokenizer (Llama 3 layout: specials at the top ids) when the vocabulary has
  // room for the 256 byte tokens and the specials; bos/eos follow it.
  std::optional<model::ByteLevelTokenizerFiles> tokenizer;
  if (config.vocab_size >= 261) {
    TESSERA_ASSIGN_OR_RETURN(
        tokenizer, model::MakeByteLevelTokenizerFiles(static_cast<int32_t>(config.vocab_size)));
    config.bos_token_id = tokenizer->bos_token_id;
    config.eos_token_ids = {tokenizer->eos_token_id, tokenizer->end_of_text_id};
  }
  std::unique_ptr<model::InMemoryWeights> weights =
      model::MakeRandomWeights(config, dtype, flags.seed, flags.init_std);
  std::vector<std::pair<std::string, TensorView>> tensors;
  for (const model::TensorSpec& spec : model::LlamaTensorSpecs(config)) {
    TESSERA_ASSIGN_OR_RETURN(TensorView view, weights->Get(spec.name));
    tensors.emplace_back(spec.name, view);
  }
  TESSERA_RETURN_IF_ERROR(
      model::WriteSafetensors(flags.out + "/model.safetensors", tensors, {{"format", "pt"}}));
  TESSERA_RETURN_IF_ERROR(WriteText(flags.out + "/config.json", model::ModelConfigToJson(config)));
  if (tokenizer.has_value()) {
    TESSERA_RETURN_IF_ERROR(WriteText(flags.out + "/tokenizer.json", tokenizer->tokenizer_json));
    TESSERA_RETURN_IF_ERROR(
        WriteText(flags.out + "/tokenizer_config.json", tokenizer->tokenizer_config_json));
  }
  std::string eos = "[";
  for (size_t i = 0; i < config.eos_token_ids.size(); ++i) {
    absl::StrAppend(&eos, i ? ", " : "", config.eos_token_ids[i]);
  }
  eos += "]";
  TESSERA_RETURN_IF_ERROR(
      WriteText(flags.out + "/generation_config.json",
                absl::StrCat("{\n  \"bos_token_id\": ", config.bos_token_id.value_or(1),
                             ",\n  \"eos_token_id\": ", eos, "\n}\n")));
  std::printf("wrote %s: %s, %lld layers, hidden %lld, vocab %lld, %s, seed %llu\n",
              flags.out.c_str(), std::string(model::ArchitectureName(config.architecture)).c_str(),
              static_cast<long long>(config.num_hidden_layers),
              static_cast<long long>(config.hidden_size), static_cast<long long>(config.vocab_size),
              std::string(DataTypeName(dtype)).c_str(),
              static_cast<unsigned long long>(flags.seed));
  return absl::OkStatus();
}

}  // namespace

Command RegisterMakeModel(CLI::App& app) {
  auto flags = std::make_shared<MakeModelFlags>();
  CLI::App* sub = app.add_subcommand(
      "make-model", "Write a tiny deterministic random checkpoint in Hugging Face format");
  sub->add_option("--out", flags->out, "Output directory")->required();
  AddModelShapeFlags(*sub, flags->shape);
  sub->add_option("--dtype", flags->dtype, "float32, bfloat16 or float16")->capture_default_str();
  sub->add_option("--seed", flags->seed, "Random seed")->capture_default_str();
  sub->add_option("--init-std", flags->init_std, "Standard deviation of the weights")
      ->capture_default_str();
  return ExitCodeOf("make-model", [flags] { return MakeModel(*flags); });
}

}  // namespace tessera::launch
