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

}  // namespace tessera::model::internal
