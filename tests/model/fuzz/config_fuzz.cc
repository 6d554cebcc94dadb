// libFuzzer target: arbitrary bytes as a config.json (ParseModelConfig) and a
// generation_config.json. Every input must give a value or a Status; a config that parses must
// survive ModelConfigToJson and read back identically. Built by scripts/run-fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "model/config.h"
#include "model/rope.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = tessera::model::ParseModelConfig(text, "fuzz/config.json");
  if (config.ok()) {
    auto again =
        tessera::model::ParseModelConfig(tessera::model::ModelConfigToJson(*config), "written");
    if (!again.ok()) __builtin_trap();
    // Qwen2 always has biases and Mistral never does, whatever the struct says; otherwise exact.
    if (!(*again == *config)) __builtin_trap();
    if (config->head_dim <= 4096) (void)tessera::model::RopeInvFreq(*config);
    (void)tessera::model::MergeGenerationConfig(text, "fuzz/generation_config.json", *config);
  }
  (void)tessera::model::ParseGenerationDefaults(text, "fuzz/generation_config.json");
  return 0;
}
