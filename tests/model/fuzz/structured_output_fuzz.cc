// libFuzzer target: arbitrary bytes as a structured-output spec and an output to match against
// it. The input is a kind byte (modulo 4: json_object, json_schema, choice, regex), then the spec
// up to the first NUL, then the output. Every spec must compile or give a Status; every output byte
// must be taken or refused; an output the matcher calls complete under a JSON grammar must be valid
// JSON. Built by scripts/run-fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <string>

#include "model/structured_output.h"
#include "nlohmann/json.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using tessera::model::StructuredOutput;
  if (size < 1) return 0;
  const std::string input(reinterpret_cast<const char*>(data) + 1, size - 1);
  const size_t nul = input.find('\0');
  StructuredOutput spec;
  spec.kind = static_cast<StructuredOutput::Kind>(1 + data[0] % 4);
  spec.spec = input.substr(0, nul);
  const std::string output = nul == std::string::npos ? "" : input.substr(nul + 1);
  auto grammar = tessera::model::Grammar::Compile(spec);
  if (!grammar.ok()) return 0;
  tessera::model::GrammarMatcher matcher(*grammar);
  std::string taken;
  for (const char c : output) {
    if (matcher.Advance(static_cast<uint8_t>(c))) taken += c;
  }
  if (matcher.IsAccepting() &&
      (spec.kind == StructuredOutput::Kind::kJsonObject ||
       spec.kind == StructuredOutput::Kind::kJsonSchema) &&
      !nlohmann::json::accept(taken)) {
    __builtin_trap();
  }
  return 0;
}
