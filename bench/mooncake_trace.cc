#include "bench/mooncake_trace.h"

#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "model/json_util.h"
#include "nlohmann/json.hpp"

namespace tessera::bench {
namespace {

using model::internal::DescribeJson;
using nlohmann::json;

// Integers as JSON integers, or as floats with no fractional part (some traces are written
// by tools that emit 512.0).
bool AsInteger(const json& value, int64_t* out) {
  if (value.is_number_unsigned()) {
    const uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (value.is_number_integer()) {
    *out = value.get<int64_t>();
    return true;
  }
  if (value.is_number_float()) {
    const double d = value.get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e15) return false;
    *out = static_cast<int64_t>(d);
    return true;
  }
  return false;
}

class LineReader {
 public:
  LineReader(absl::string_view source, int64_t line) : source_(source), line_(line) {}

  absl::Status Error(absl::string_view field, absl::string_view message) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ":", line_, ": ", field, ": ", message));
  }
  absl::Status Expected(absl::string_view field, absl::string_view what, const json& got) const {
    return Error(field, absl::StrCat("expected ", what, ", got ", DescribeJson(got)));
  }

  absl::StatusOr<const json*> Field(const json& object, absl::string_view name) const {
    auto it = object.find(std::string(name));
    if (it == object.end()) return Error(name, "missing");
    return &*it;
  }

  absl::StatusOr<int64_t> Integer(const json& object, absl::string_view name, int64_t min) const {
    absl::StatusOr<const json*> value = Field(object, name);
    if (!value.ok()) return value.status();
    int64_t out = 0;
    const std::string what = min == 0 ? "a non-negative integer" : "a positive integer";
    if (!AsInteger(**value, &out) || out < min) return Expected(name, what, **value);
    return out;
  }

 private:
  absl::string_view source_;
  int64_t line_;
};

absl::StatusOr<TraceEntry> ParseLine(absl::string_view text, absl::string_view source,
                                     int64_t line) {
  LineReader reader(source, line);
  const json object = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ":", line, ": not valid JSON: ", text.substr(0, 80)));
  }
  if (!object.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ":", line, ": expected a JSON object, got ", DescribeJson(object)));
  }
  TraceEntry entry;
  entry.line = line;
  absl::StatusOr<const json*> timestamp = reader.Field(object, "timestamp");
  if (!timestamp.ok()) return timestamp.status();
  if (!(*timestamp)->is_number() || !std::isfinite((*timestamp)->get<double>()) ||
      (*timestamp)->get<double>() < 0) {
    return reader.Expected("timestamp", "a non-negative number of milliseconds", **timestamp);
  }
  entry.timestamp_ms = (*timestamp)->get<double>();
  absl::StatusOr<int64_t> input = reader.Integer(object, "input_length", 1);
  if (!input.ok()) return input.status();
  entry.input_length = *input;
  absl::StatusOr<int64_t> output = reader.Integer(object, "output_length", 1);
  if (!output.ok()) return output.status();
  entry.output_length = *output;
  absl::StatusOr<const json*> hash_ids = reader.Field(object, "hash_ids");
  if (!hash_ids.ok()) return hash_ids.status();
  if (!(*hash_ids)->is_array()) {
    return reader.Expected("hash_ids", "an array of non-negative integers", **hash_ids);
  }
  entry.hash_ids.reserve((*hash_ids)->size());
  for (size_t i = 0; i < (*hash_ids)->size(); ++i) {
    const json& id = (**hash_ids)[i];
    int64_t value = 0;
    if (!AsInteger(id, &value) || value < 0) {
      return reader.Expected(absl::StrCat("hash_ids[", i, "]"), "a non-negative integer", id);
    }
    entry.hash_ids.push_back(value);
  }
  return entry;
}

}  // namespace

absl::StatusOr<std::vector<TraceEntry>> ParseMooncakeTrace(absl::string_view text,
                                                           absl::string_view source) {
  std::vector<TraceEntry> entries;
  int64_t line = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++line;
    const absl::string_view content = absl::StripAsciiWhitespace(raw);
    if (content.empty()) continue;
    absl::StatusOr<TraceEntry> entry = ParseLine(content, source, line);
    if (!entry.ok()) return entry.status();
    if (!entries.empty() && entry->timestamp_ms < entries.back().timestamp_ms) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line, ": timestamp: ", entry->timestamp_ms,
                       " is earlier than line ", entries.back().line, "'s ",
                       entries.back().timestamp_ms, " (a trace lists requests in arrival order)"));
    }
    entries.push_back(*std::move(entry));
  }
  if (entries.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": the trace holds no request"));
  }
  return entries;
}

absl::StatusOr<std::vector<TraceEntry>> ReadMooncakeTrace(const std::string& path) {
  absl::StatusOr<std::string> text = model::internal::ReadFileToString(path);
  if (!text.ok()) return text.status();
  return ParseMooncakeTrace(*text, path);
}

}  // namespace tessera::bench
