#include "coordinator/api/kserve_sampling.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/optional.h"
#include "model/json_util.h"
#include "model/structured_output.h"
#include "nlohmann/json.hpp"

namespace tessera::coordinator::kserve {
namespace {

using json = nlohmann::json;

using model::internal::DescribeJson;

class Reader {
 public:
  explicit Reader(absl::string_view source) : source_(source) {}
  absl::string_view source() const { return source_; }

  absl::Status Error(absl::string_view key, absl::string_view expected, const json& value) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": ", key, ": expected ", expected, ", got ", DescribeJson(value)));
  }

  absl::StatusOr<double> Number(absl::string_view key, const json& value) const {
    if (value.is_number()) return value.get<double>();
    double out = 0;
    if (value.is_string() &&
        absl::SimpleAtod(absl::StripAsciiWhitespace(value.get_ref<const std::string&>()), &out) &&
        std::isfinite(out)) {
      return out;
    }
    return Error(key, "a number", value);
  }

  absl::StatusOr<int64_t> Integer(absl::string_view key, const json& value, int64_t min,
                                  int64_t max) const {
    int64_t out = 0;
    bool ok = false;
    if (value.is_number_integer()) {
      if (value.is_number_unsigned()) {
        const uint64_t u = value.get<uint64_t>();
        ok = u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
        out = static_cast<int64_t>(u);
      } else {
        out = value.get<int64_t>();
        ok = true;
      }
    } else if (value.is_number_float()) {
      const double d = value.get<double>();
      ok = std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15;
      out = static_cast<int64_t>(d);
    } else if (value.is_string()) {
      ok = absl::SimpleAtoi(absl::StripAsciiWhitespace(value.get_ref<const std::string&>()), &out);
    }
    if (!ok) return Error(key, "an integer", value);
    if (out < min || out > max) {
      return absl::InvalidArgumentError(
          absl::StrCat(source_, ": ", key, ": ", out, " is outside [", min, ", ", max, "]"));
    }
    return out;
  }

  absl::StatusOr<bool> Bool(absl::string_view key, const json& value) const {
    if (value.is_boolean()) return value.get<bool>();
    if (value.is_number_integer()) {
      const int64_t v = value.get<int64_t>();
      if (v == 0 || v == 1) return v == 1;
    }
    if (value.is_string()) {
      const std::string s = absl::AsciiStrToLower(value.get_ref<const std::string&>());
      if (s == "true" || s == "1") return true;
      if (s == "false" || s == "0") return false;
    }
    return Error(key, "a boolean", value);
  }

  absl::StatusOr<std::vector<std::string>> Strings(absl::string_view key, const json& value) const {
    if (value.is_string()) return std::vector<std::string>{value.get<std::string>()};
    if (!value.is_array()) return Error(key, "a string or a list of strings", value);
    std::vector<std::string> out;
    for (const json& item : value) {
      if (!item.is_string()) return Error(key, "a string or a list of strings", value);
      out.push_back(item.get<std::string>());
    }
    return out;
  }

  absl::StatusOr<std::vector<int32_t>> Int32s(absl::string_view key, const json& value) const {
    if (!value.is_array()) return Error(key, "a list of integers", value);
    std::vector<int32_t> out;
    for (const json& item : value) {
      absl::StatusOr<int64_t> id = Integer(key, item, std::numeric_limits<int32_t>::min(),
                                           std::numeric_limits<int32_t>::max());
      if (!id.ok()) return id.status();
      out.push_back(static_cast<int32_t>(*id));
    }
    return out;
  }

 private:
  absl::string_view source_;
};

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int64_t kInt32Min = std::numeric_limits<int32_t>::min();

constexpr const char* kSupportedKeys[] = {"temperature",
                                          "top_p",
                                          "top_k",
                                          "min_p",
                                          "max_tokens",
                                          "min_tokens",
                                          "seed",
                                          "stop",
                                          "stop_token_ids",
                                          "ignore_eos",
                                          "repetition_penalty",
                                          "presence_penalty",
                                          "frequency_penalty",
                                          "logprobs",
                                          "skip_special_tokens",
                                          "include_stop_str_in_output",
                                          "logit_bias",
                                          "structured_outputs",
                                          "guided_decoding",
                                          "n"};

// Applies one key; kNotFound for a key this API does not know.
absl::Status ApplyOne(const Reader& r, const std::string& key, const json& value,
                      GenerateRequest* request) {
  model::SamplingParams& s = request->sampling;
  auto set_float = [&](float* field) -> absl::Status {
    absl::StatusOr<double> v = r.Number(key, value);
    if (!v.ok()) return v.status();
    *field = static_cast<float>(*v);
    return absl::OkStatus();
  };
  auto set_int32 = [&](int32_t* field) -> absl::Status {
    absl::StatusOr<int64_t> v = r.Integer(key, value, kInt32Min, kInt32Max);
    if (!v.ok()) return v.status();
    *field = static_cast<int32_t>(*v);
    return absl::OkStatus();
  };
  auto set_bool = [&](bool* field) -> absl::Status {
    absl::StatusOr<bool> v = r.Bool(key, value);
    if (!v.ok()) return v.status();
    *field = *v;
    return absl::OkStatus();
  };
  if (key == "temperature") return set_float(&s.temperature);
  if (key == "top_p") return set_float(&s.top_p);
  if (key == "min_p") return set_float(&s.min_p);
  if (key == "repetition_penalty") return set_float(&s.repetition_penalty);
  if (key == "presence_penalty") return set_float(&s.presence_penalty);
  if (key == "frequency_penalty") return set_float(&s.frequency_penalty);
  if (key == "top_k") return set_int32(&s.top_k);
  if (key == "max_tokens") return set_int32(&s.max_tokens);
  if (key == "min_tokens") return set_int32(&s.min_tokens);
  if (key == "logprobs") return set_int32(&s.logprobs);
  if (key == "ignore_eos") return set_bool(&s.ignore_eos);
  if (key == "skip_special_tokens") return set_bool(&request->skip_special_tokens);
  if (key == "include_stop_str_in_output") return set_bool(&request->include_stop_str_in_output);
  if (key == "seed") {
    absl::StatusOr<int64_t> v = r.Integer(key, value, std::numeric_limits<int64_t>::min(),
                                          std::numeric_limits<int64_t>::max());
    if (!v.ok()) return v.status();
    s.seed = *v;
    return absl::OkStatus();
  }
  if (key == "stop") {
    absl::StatusOr<std::vector<std::string>> v = r.Strings(key, value);
    if (!v.ok()) return v.status();
    s.stop = std::move(*v);
    return absl::OkStatus();
  }
  if (key == "stop_token_ids") {
    absl::StatusOr<std::vector<int32_t>> v = r.Int32s(key, value);
    if (!v.ok()) return v.status();
    s.stop_token_ids = std::move(*v);
    return absl::OkStatus();
  }
  if (key == "logit_bias") {
    if (!value.is_object()) return r.Error(key, "an object of token id: bias", value);
    for (auto it = value.begin(); it != value.end(); ++it) {
      absl::StatusOr<double> bias = r.Number("logit_bias", it.value());
      if (!bias.ok()) return bias.status();
      absl::StatusOr<model::LogitBias> entry = model::LogitBiasEntry(it.key(), *bias);
      if (!entry.ok()) return r.Error(key, "token ids as keys", value);
      s.logit_bias.push_back(*entry);
    }
    return absl::OkStatus();
  }
  if (key == "structured_outputs" || key == "guided_decoding") {  // vLLM's, old and new names
    if (s.structured_output.kind != model::StructuredOutput::Kind::kNone) {
      return absl::InvalidArgumentError(absl::StrCat(
          r.source(), ": structured_outputs and guided_decoding both ask for a structured output"));
    }
    absl::StatusOr<model::StructuredOutput> parsed =
        model::StructuredOutputFromVllmParams(value.dump());
    if (parsed.ok() && parsed->kind != model::StructuredOutput::Kind::kNone) {
      absl::StatusOr<std::shared_ptr<const model::Grammar>> grammar =
          model::Grammar::Compile(*parsed);
      if (!grammar.ok()) parsed = grammar.status();
    }
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(r.source(), ": ", key, ": ", parsed.status().message()));
    }
    s.structured_output = *std::move(parsed);
    return absl::OkStatus();
  }
  if (key == "n") {  // one sequence per request; accepted so that clients spelling n=1 work
    absl::StatusOr<int64_t> v = r.Integer(key, value, 1, 1);
    return v.ok() ? absl::OkStatus() : v.status();
  }
  return absl::NotFoundError(key);
}

}  // namespace

absl::Status ApplySamplingParameters(absl::string_view json_text, absl::string_view source,
                                     GenerateRequest* request) {
  absl::StatusOr<json> parsed = model::internal::ParseJson(json_text, source);
  if (!parsed.ok()) return parsed.status();
  json doc = *std::move(parsed);
  if (!doc.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": expected a JSON object, got ", DescribeJson(doc)));
  }
  const Reader reader(source);
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    if (it.value().is_null()) continue;  // the vLLM backend drops None values
    absl::Status status = ApplyOne(reader, it.key(), it.value(), request);
    if (absl::IsNotFound(status)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": unknown key '", it.key(),
                       "' (supported: ", absl::StrJoin(kSupportedKeys, ", "), ")"));
    }
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace tessera::coordinator::kserve
