// Shared by model/ and the JSON-speaking API adapters (coordinator/api): JSON parsing that never
// throws and reports where a document is broken, and helpers that describe JSON values in error
// messages.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace tessera::model::internal {

// Parses `text`. Invalid JSON is kInvalidArgument: "SOURCE: invalid JSON: parse error at line L,
// column C: <what the parser expected>".
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, absl::string_view source);

// The contents of the file at `path`. kNotFound when it does not exist; other failures carry the
// errno's canonical code. Messages start with the path.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// "an integer", "a string", "an object", ... for `value`'s type.
std::string JsonTypeName(const nlohmann::json& value);
// The type and a short (truncated) rendering of `value`: `string "abc"`, `number -3`.
std::string DescribeJson(const nlohmann::json& value);

// Python's json.dumps(value, ensure_ascii=False, indent=indent) with the keys in the order they
// came: what chat templates' `tojson` writes (transformers' override of Jinja's) and what vLLM's
// tool-call parsers answer as "arguments". indent < 0: one line, ", " and ": " between items;
// else one item a line, indented. Invalid UTF-8 in strings becomes U+FFFD.
std::string PythonJsonDumps(const nlohmann::ordered_json& value, int indent = -1);

}  // namespace tessera::model::internal
