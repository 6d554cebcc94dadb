#include "coordinator/api/kserve_schema.h"

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "coordinator/api/kserve_sampling.h"
#include "nlohmann/json.hpp"

namespace tessera::coordinator::kserve {
namespace {

using inference::ModelInferRequest;
using inference::ModelInferResponse;
using InputTensor = inference::ModelInferRequest::InferInputTensor;

constexpr absl::string_view kTextInput = "text_input";
constexpr absl::string_view kInputIds = "input_ids";

// Request parameters Triton's frontends reserve for themselves; never sampling parameters.
bool IsReservedParameter(absl::string_view name) {
  return name == "sequence_id" || name == "sequence_start" || name == "sequence_end" ||
         name == "priority" || name == "timeout" || name == "binary_data_output" ||
         name == "triton_enable_empty_final_response" || name == "headers";
}

TensorSpec Spec(absl::string_view name, inference::DataType type, std::vector<int64_t> dims,
                bool optional) {
  TensorSpec spec;
  spec.name = std::string(name);
  spec.data_type = type;
  switch (type) {
    case inference::TYPE_STRING:
      spec.datatype = "BYTES";
      break;
    case inference::TYPE_BOOL:
      spec.datatype = "BOOL";
      break;
    case inference::TYPE_INT32:
      spec.datatype = "INT32";
      break;
    case inference::TYPE_UINT32:
      spec.datatype = "UINT32";
      break;
    case inference::TYPE_FP32:
      spec.datatype = "FP32";
      break;
    default:
      spec.datatype = "INVALID";
      break;
  }
  spec.dims = std::move(dims);
  spec.optional = optional;
  return spec;
}

const TensorSpec* FindSpec(const std::vector<TensorSpec>& specs, absl::string_view name) {
  for (const TensorSpec& spec : specs) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

// One input of a request: its tensor and, when the request uses raw_input_contents, its bytes.
struct Input {
  const InputTensor* tensor = nullptr;
  const std::string* raw = nullptr;
};

// Little-endian readers and writers (the protocol's byte order, whatever the host's).
uint64_t ReadLittleEndian(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
void AppendLittleEndian(uint64_t v, int bytes, std::string* out) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

class RequestReader {
 public:
  RequestReader(const ModelInferRequest& request, const ModelInfo& model)
      : request_(request), model_(model) {
    if (!request.id().empty()) log_ = absl::StrCat("[request id: ", request.id(), "] ");
  }

  absl::Status Invalid(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(log_, message));
  }

  // Indexes the inputs by name and checks each against its spec.
  absl::Status Collect() {
    const int raw_count = request_.raw_input_contents_size();
    if (raw_count > 0 && raw_count != request_.inputs_size()) {
      return Invalid(absl::StrCat("expected ", request_.inputs_size(),
                                  " raw_input_contents (one per input) but got ", raw_count,
                                  " for model '", model_.name, "'"));
    }
    for (int i = 0; i < request_.inputs_size(); ++i) {
      const InputTensor& tensor = request_.inputs(i);
      const TensorSpec* spec = FindSpec(InputSpecs(), tensor.name());
      if (spec == nullptr) {
        return Invalid(absl::StrCat("unexpected inference input '", tensor.name(), "' for model '",
                                    model_.name, "'"));
      }
      if (inputs_.contains(tensor.name())) {
        return Invalid(absl::StrCat("input '", tensor.name(), "' is given more than once"));
      }
      const bool int64_ids = tensor.name() == kInputIds && tensor.datatype() == "INT64";
      if (tensor.datatype() != spec->datatype && !int64_ids) {
        return Invalid(absl::StrCat("inference input '", tensor.name(), "' data-type is '",
                                    tensor.datatype(), "', but model '", model_.name, "' expects '",
                                    spec->datatype, "'"));
      }
      bool shape_ok = tensor.shape_size() == static_cast<int>(spec->dims.size());
      for (int d = 0; shape_ok && d < tensor.shape_size(); ++d) {
        shape_ok =
            tensor.shape(d) >= 0 && (spec->dims[d] == -1 || spec->dims[d] == tensor.shape(d));
      }
      if (!shape_ok) {
        return Invalid(absl::StrCat("unexpected shape for input '", tensor.name(), "' for model '",
                                    model_.name, "'. Expected ", ShapeString(spec->dims), ", got ",
                                    ShapeString(tensor.shape())));
      }
      Input input;
      input.tensor = &tensor;
      if (raw_count > 0) {
        if (tensor.has_contents()) {
          return Invalid(absl::StrCat(
              "contents field must not be specified when using raw_input_contents for '",
              tensor.name(), "' for model '", model_.name, "'"));
        }
        input.raw = &request_.raw_input_contents(i);
      }
      inputs_[tensor.name()] = input;
    }
    return CheckRequired();
  }

  const Input* Find(absl::string_view name) const {
    auto it = inputs_.find(name);
    return it == inputs_.end() ? nullptr : &it->second;
  }

  int64_t ElementCount(const Input& input) const {
    int64_t count = 1;
    for (int64_t d : input.tensor->shape()) count *= d;
    return count;
  }

  absl::Status CountMismatch(const Input& input, int64_t got) const {
    return Invalid(absl::StrCat("input '", input.tensor->name(), "' of shape ",
                                ShapeString(input.tensor->shape()), " expects ",
                                ElementCount(input), " elements but got ", got));
  }

  absl::StatusOr<std::vector<std::string>> Bytes(const Input& input) const {
    std::vector<std::string> out;
    if (input.raw == nullptr) {
      out.assign(input.tensor->contents().bytes_contents().begin(),
                 input.tensor->contents().bytes_contents().end());
    } else {
      const std::string& raw = *input.raw;
      size_t pos = 0;
      while (pos < raw.size()) {
        if (raw.size() - pos < 4) {
          return Invalid(absl::StrCat("input '", input.tensor->name(),
                                      "': raw BYTES element truncated at byte ", pos));
        }
        const uint64_t len = ReadLittleEndian(raw.data() + pos, 4);
        pos += 4;
        if (raw.size() - pos < len) {
          return Invalid(absl::StrCat("input '", input.tensor->name(), "': raw BYTES element of ",
                                      len, " bytes exceeds the ", raw.size() - pos, " left"));
        }
        out.emplace_back(raw.data() + pos, len);
        pos += len;
      }
    }
    if (static_cast<int64_t>(out.size()) != ElementCount(input)) {
      return CountMismatch(input, static_cast<int64_t>(out.size()));
    }
    return out;
  }

  absl::StatusOr<bool> Bool(const Input& input) const {
    std::vector<bool> values;
    if (input.raw == nullptr) {
      values.assign(input.tensor->contents().bool_contents().begin(),
                    input.tensor->contents().bool_contents().end());
    } else {
      for (char c : *input.raw) values.push_back(c != 0);
    }
    if (static_cast<int64_t>(values.size()) != ElementCount(input)) {
      return CountMismatch(input, static_cast<int64_t>(values.size()));
    }
    return values[0];
  }

  absl::StatusOr<std::vector<int32_t>> Ids(const Input& input) const {
    const bool is64 = input.tensor->datatype() == "INT64";
    std::vector<int64_t> values;
    if (input.raw == nullptr) {
      if (is64) {
        values.assign(input.tensor->contents().int64_contents().begin(),
                      input.tensor->contents().int64_contents().end());
      } else {
        values.assign(input.tensor->contents().int_contents().begin(),
                      input.tensor->contents().int_contents().end());
      }
    } else {
      const int width = is64 ? 8 : 4;
      const std::string& raw = *input.raw;
      if (raw.size() % width != 0) {
        return Invalid(absl::StrCat("input '", input.tensor->name(), "': raw ",
                                    input.tensor->datatype(), " contents of ", raw.size(),
                                    " bytes are not a whole number of elements"));
      }
      for (size_t pos = 0; pos < raw.size(); pos += width) {
        const uint64_t bits = ReadLittleEndian(raw.data() + pos, width);
        values.push_back(is64 ? static_cast<int64_t>(bits)
                              : static_cast<int64_t>(static_cast<int32_t>(bits)));
      }
    }
    if (static_cast<int64_t>(values.size()) != ElementCount(input)) {
      return CountMismatch(input, static_cast<int64_t>(values.size()));
    }
    std::vector<int32_t> ids;
    for (int64_t v : values) {
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
        return Invalid(absl::StrCat("input '", input.tensor->name(), "': token id ", v,
                                    " does not fit in 32 bits"));
      }
      ids.push_back(static_cast<int32_t>(v));
    }
    return ids;
  }

  // The value of an optional BOOL [1] input; `fallback` when it is absent.
  absl::StatusOr<bool> OptionalBool(absl::string_view name, bool fallback) const {
    const Input* input = Find(name);
    if (input == nullptr) return fallback;
    return Bool(*input);
  }

 private:
  // Triton's check and wording, with input_ids standing in for text_input.
  absl::Status CheckRequired() const {
    std::vector<std::string> missing;
    int required = 0;
    for (const TensorSpec& spec : InputSpecs()) {
      if (spec.optional) continue;
      ++required;
      if (inputs_.contains(spec.name)) continue;
      if (spec.name == kTextInput && inputs_.contains(kInputIds)) continue;
      missing.push_back(absl::StrCat("'", spec.name, "'"));
    }
    if (missing.empty()) return absl::OkStatus();
    std::vector<std::string> got;
    for (const InputTensor& tensor : request_.inputs())
      got.push_back(absl::StrCat("'", tensor.name(), "'"));
    const int total = static_cast<int>(InputSpecs().size());
    const std::string expected =
        required == total
            ? absl::StrCat("expected ", required, " inputs")
            : absl::StrCat("expected number of inputs between ", required, " and ", total);
    return Invalid(absl::StrCat(
        expected, " but got ", request_.inputs_size(), " inputs for model '", model_.name,
        "'. Got input(s) [", absl::StrJoin(got, ","), "], but missing required input(s) [",
        absl::StrJoin(missing, ","), "]. Please provide all required input(s)."));
  }

  const ModelInferRequest& request_;
  const ModelInfo& model_;
  std::string log_;
  absl::flat_hash_map<std::string, Input> inputs_;
};

// The request's own parameters (but Triton's reserved ones) as a JSON object text, or "" when
// there are none.
std::string ParametersAsJson(const ModelInferRequest& request) {
  nlohmann::json object = nlohmann::json::object();
  for (const auto& [name, param] : request.parameters()) {
    if (IsReservedParameter(name)) continue;
    switch (param.parameter_choice_case()) {
      case inference::InferParameter::kBoolParam:
        object[name] = param.bool_param();
        break;
      case inference::InferParameter::kInt64Param:
        object[name] = param.int64_param();
        break;
      case inference::InferParameter::kStringParam:
        object[name] = param.string_param();
        break;
      case inference::InferParameter::kDoubleParam:
        object[name] = param.double_param();
        break;
      case inference::InferParameter::kUint64Param:
        object[name] = param.uint64_param();
        break;
      default:
        object[name] = nullptr;
        break;
    }
  }
  if (object.empty()) return "";
  return object.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

absl::Status SelectOutputs(const ModelInferRequest& request, const RequestReader& reader,
                           const ModelInfo& model, ParsedRequest* parsed) {
  OutputSelection& out = parsed->outputs;
  if (request.outputs_size() == 0) {
    TESSERA_ASSIGN_OR_RETURN(out.finish_reason, reader.OptionalBool("return_finish_reason", false));
    TESSERA_ASSIGN_OR_RETURN(out.cumulative_logprob,
                             reader.OptionalBool("return_cumulative_logprob", false));
    TESSERA_ASSIGN_OR_RETURN(out.logprobs, reader.OptionalBool("return_logprobs", false));
    TESSERA_ASSIGN_OR_RETURN(out.num_input_tokens,
                             reader.OptionalBool("return_num_input_tokens", false));
    TESSERA_ASSIGN_OR_RETURN(out.num_output_tokens,
                             reader.OptionalBool("return_num_output_tokens", false));
    TESSERA_ASSIGN_OR_RETURN(out.output_ids, reader.OptionalBool("return_output_ids", false));
    return absl::OkStatus();
  }
  out = OutputSelection{};
  out.text_output = false;
  for (const auto& wanted : request.outputs()) {
    const std::string& name = wanted.name();
    bool* flag = name == "text_output"          ? &out.text_output
                 : name == "finish_reason"      ? &out.finish_reason
                 : name == "cumulative_logprob" ? &out.cumulative_logprob
                 : name == "logprobs"           ? &out.logprobs
                 : name == "num_input_tokens"   ? &out.num_input_tokens
                 : name == "num_output_tokens"  ? &out.num_output_tokens
                 : name == "output_ids"         ? &out.output_ids
                                                : nullptr;
    if (flag == nullptr) {
      return reader.Invalid(
          absl::StrCat("unexpected inference output '", name, "' for model '", model.name, "'"));
    }
    *flag = true;
  }
  return absl::OkStatus();
}

void AddOutput(ModelInferResponse* response, absl::string_view name, absl::string_view datatype,
               int64_t elements, std::string raw) {
  ModelInferResponse::InferOutputTensor* tensor = response->add_outputs();
  tensor->set_name(std::string(name));
  tensor->set_datatype(std::string(datatype));
  tensor->add_shape(elements);
  response->add_raw_output_contents(std::move(raw));
}

std::string RawBytesElement(absl::string_view value) {
  std::string raw;
  AppendLittleEndian(value.size(), 4, &raw);
  raw.append(value.data(), value.size());
  return raw;
}

}  // namespace

const std::vector<TensorSpec>& InputSpecs() {
  static const std::vector<TensorSpec>* const specs = new std::vector<TensorSpec>{
      Spec(kTextInput, inference::TYPE_STRING, {1}, false),
      Spec(kInputIds, inference::TYPE_INT32, {-1}, true),
      Spec("stream", inference::TYPE_BOOL, {1}, true),
      Spec("sampling_parameters", inference::TYPE_STRING, {1}, true),
      Spec("exclude_input_in_output", inference::TYPE_BOOL, {1}, true),
      Spec("return_finish_reason", inference::TYPE_BOOL, {1}, true),
      Spec("return_cumulative_logprob", inference::TYPE_BOOL, {1}, true),
      Spec("return_logprobs", inference::TYPE_BOOL, {1}, true),
      Spec("return_num_input_tokens", inference::TYPE_BOOL, {1}, true),
      Spec("return_num_output_tokens", inference::TYPE_BOOL, {1}, true),
      Spec("return_output_ids", inference::TYPE_BOOL, {1}, true),
  };
  return *specs;
}

const std::vector<TensorSpec>& OutputSpecs() {
  static const std::vector<TensorSpec>* const specs = new std::vector<TensorSpec>{
      Spec("text_output", inference::TYPE_STRING, {-1}, false),
      Spec("finish_reason", inference::TYPE_STRING, {-1}, false),
      Spec("cumulative_logprob", inference::TYPE_FP32, {-1}, false),
      Spec("logprobs", inference::TYPE_STRING, {-1}, false),
      Spec("num_input_tokens", inference::TYPE_UINT32, {1}, false),
      Spec("num_output_tokens", inference::TYPE_UINT32, {-1}, false),
      Spec("output_ids", inference::TYPE_INT32, {-1}, false),
  };
  return *specs;
}

absl::Status CheckModel(const ModelInfo& model, absl::string_view name, absl::string_view version) {
  if (name != model.name) {
    return absl::InvalidArgumentError(
        absl::StrCat("Request for unknown model: '", name, "' is not found"));
  }
  if (!version.empty() && version != kModelVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("Request for unknown model: '", name, "' version ", version, " is not found"));
  }
  return absl::OkStatus();
}

void FillModelMetadata(const ModelInfo& model, inference::ModelMetadataResponse* response) {
  response->set_name(model.name);
  response->add_versions(std::string(kModelVersion));
  response->set_platform(std::string(kBackend));
  for (const TensorSpec& spec : InputSpecs()) {
    auto* tensor = response->add_inputs();
    tensor->set_name(spec.name);
    tensor->set_datatype(spec.datatype);
    for (int64_t d : spec.dims) tensor->add_shape(d);
  }
  for (const TensorSpec& spec : OutputSpecs()) {
    auto* tensor = response->add_outputs();
    tensor->set_name(spec.name);
    tensor->set_datatype(spec.datatype);
    for (int64_t d : spec.dims) tensor->add_shape(d);
  }
}

void FillModelConfig(const ModelInfo& model, inference::ModelConfig* config) {
  config->set_name(model.name);
  config->set_backend(std::string(kBackend));
  config->set_max_batch_size(0);
  config->mutable_version_policy()->mutable_latest()->set_num_versions(1);
  for (const TensorSpec& spec : InputSpecs()) {
    inference::ModelInput* input = config->add_input();
    input->set_name(spec.name);
    input->set_data_type(spec.data_type);
    for (int64_t d : spec.dims) input->add_dims(d);
    input->set_optional(spec.optional);
  }
  for (const TensorSpec& spec : OutputSpecs()) {
    inference::ModelOutput* output = config->add_output();
    output->set_name(spec.name);
    output->set_data_type(spec.data_type);
    for (int64_t d : spec.dims) output->add_dims(d);
  }
  inference::ModelInstanceGroup* group = config->add_instance_group();
  group->set_name(model.name);
  group->set_kind(inference::ModelInstanceGroup::KIND_MODEL);
  group->set_count(1);
  config->mutable_model_transaction_policy()->set_decoupled(true);
  auto& parameters = *config->mutable_parameters();
  parameters["max_model_len"].set_string_value(absl::StrCat(model.max_model_len));
  parameters["vocab_size"].set_string_value(absl::StrCat(model.vocab_size));
  parameters["model_root"].set_string_value(model.root);
  parameters["server"].set_string_value("tessera");
}

absl::StatusOr<ParsedRequest> ParseInferRequest(const ModelInferRequest& request,
                                                const ModelInfo& model) {
  TESSERA_RETURN_IF_ERROR(CheckModel(model, request.model_name(), request.model_version()));
  RequestReader reader(request, model);
  TESSERA_RETURN_IF_ERROR(reader.Collect());

  ParsedRequest parsed;
  parsed.id = request.id();
  parsed.generate.request_id = request.id();
  const Input* text = reader.Find(kTextInput);
  const Input* ids = reader.Find(kInputIds);
  if (text != nullptr && ids != nullptr) {
    return reader.Invalid("text_input and input_ids are mutually exclusive: give one prompt");
  }
  if (text != nullptr) {
    TESSERA_ASSIGN_OR_RETURN(std::vector<std::string> prompt, reader.Bytes(*text));
    parsed.generate.prompt_text = std::move(prompt[0]);
  } else {
    TESSERA_ASSIGN_OR_RETURN(parsed.generate.prompt_token_ids, reader.Ids(*ids));
  }
  TESSERA_ASSIGN_OR_RETURN(parsed.stream, reader.OptionalBool("stream", false));
  // The vLLM backend's rule: the prompt leads the text unless excluded; by default it is excluded
  // when streaming (here also for token-id prompts, which have no text of their own).
  const bool default_exclude = parsed.stream || text == nullptr;
  TESSERA_ASSIGN_OR_RETURN(const bool exclude,
                           reader.OptionalBool("exclude_input_in_output", default_exclude));
  parsed.prepend_input = !exclude;
  if (parsed.prepend_input && parsed.stream) {
    return reader.Invalid("When streaming, `exclude_input_in_output` = False is not allowed.");
  }

  if (const Input* sampling = reader.Find("sampling_parameters"); sampling != nullptr) {
    TESSERA_ASSIGN_OR_RETURN(std::vector<std::string> json, reader.Bytes(*sampling));
    TESSERA_RETURN_IF_ERROR(
        ApplySamplingParameters(json[0], "sampling_parameters", &parsed.generate));
  } else if (std::string json = ParametersAsJson(request); !json.empty()) {
    TESSERA_RETURN_IF_ERROR(ApplySamplingParameters(json, "parameters", &parsed.generate));
  }
  if (auto it = request.parameters().find("timeout"); it != request.parameters().end()) {
    if (it->second.parameter_choice_case() != inference::InferParameter::kInt64Param ||
        it->second.int64_param() < 0) {
      return reader.Invalid("parameters: timeout: expected a non-negative int64 (microseconds)");
    }
    if (it->second.int64_param() > 0) {
      parsed.timeout = absl::Microseconds(it->second.int64_param());
    }
  }

  TESSERA_RETURN_IF_ERROR(SelectOutputs(request, reader, model, &parsed));
  parsed.requested_logprobs = parsed.generate.sampling.logprobs;
  // cumulative_logprob needs the sampled tokens' logprobs, which come with logprobs >= 1.
  if (parsed.outputs.cumulative_logprob && parsed.generate.sampling.logprobs == 0) {
    parsed.generate.sampling.logprobs = 1;
  }
  return parsed;
}

ResponseBuilder::ResponseBuilder(const ParsedRequest& request, const Frontend& frontend)
    : request_(request), frontend_(frontend) {}

void ResponseBuilder::Delta(const GenerateEvent& event, ModelInferResponse* response) {
  prompt_tokens_ = event.prompt_tokens;
  for (float lp : event.logprobs) cumulative_logprob_ += lp;
  Piece piece{event.text, event.token_ids, event.logprobs, event.top_logprobs};
  const std::string finish = event.finished && event.finish_reason.has_value()
                                 ? std::string(model::FinishReasonName(*event.finish_reason))
                                 : "None";
  Fill(piece, finish, response);
}

void ResponseBuilder::Add(const GenerateEvent& event) {
  prompt_tokens_ = event.prompt_tokens;
  for (float lp : event.logprobs) cumulative_logprob_ += lp;
  whole_.text += event.text;
  whole_.token_ids.insert(whole_.token_ids.end(), event.token_ids.begin(), event.token_ids.end());
  whole_.logprobs.insert(whole_.logprobs.end(), event.logprobs.begin(), event.logprobs.end());
  whole_.top_logprobs.insert(whole_.top_logprobs.end(), event.top_logprobs.begin(),
                             event.top_logprobs.end());
  if (event.finished) finish_reason_ = event.finish_reason;
}

void ResponseBuilder::Whole(ModelInferResponse* response) {
  if (request_.prepend_input) {
    std::string prompt = request_.generate.prompt_text;
    if (request_.generate.prompt_token_ids.has_value()) {
      absl::StatusOr<std::string> text =
          frontend_.Detokenize(*request_.generate.prompt_token_ids, /*skip_special_tokens=*/false);
      prompt = text.ok() ? *std::move(text) : "";
    }
    whole_.text.insert(0, prompt);
  }
  const std::string finish =
      finish_reason_.has_value() ? std::string(model::FinishReasonName(*finish_reason_)) : "None";
  Fill(whole_, finish, response);
}

void ResponseBuilder::Fill(const Piece& piece, absl::string_view finish_reason,
                           ModelInferResponse* response) {
  const OutputSelection& want = request_.outputs;
  if (want.text_output) AddOutput(response, "text_output", "BYTES", 1, RawBytesElement(piece.text));
  if (want.finish_reason) {
    AddOutput(response, "finish_reason", "BYTES", 1, RawBytesElement(finish_reason));
  }
  if (want.cumulative_logprob) {
    const float value = static_cast<float>(cumulative_logprob_);
    uint32_t bits = 0;
    std::memcpy(&bits, &value, sizeof(bits));
    std::string raw;
    AppendLittleEndian(bits, 4, &raw);
    AddOutput(response, "cumulative_logprob", "FP32", 1, std::move(raw));
  }
  if (want.logprobs)
    AddOutput(response, "logprobs", "BYTES", 1, RawBytesElement(LogprobsJson(piece)));
  if (want.num_input_tokens) {
    std::string raw;
    AppendLittleEndian(static_cast<uint32_t>(prompt_tokens_), 4, &raw);
    AddOutput(response, "num_input_tokens", "UINT32", 1, std::move(raw));
  }
  if (want.num_output_tokens) {
    std::string raw;
    AppendLittleEndian(static_cast<uint32_t>(piece.token_ids.size()), 4, &raw);
    AddOutput(response, "num_output_tokens", "UINT32", 1, std::move(raw));
  }
  if (want.output_ids) {
    std::string raw;
    for (int32_t id : piece.token_ids) AppendLittleEndian(static_cast<uint32_t>(id), 4, &raw);
    AddOutput(response, "output_ids", "INT32", static_cast<int64_t>(piece.token_ids.size()),
              std::move(raw));
  }
}

// vLLM's shape: per token, {"<id>": {"logprob": x, "rank": r, "decoded_token": "..."}} for the
// top tokens and the sampled one. The sampled token's rank is its place among the top tokens, or
// one past them when it is not among them (the engine does not report it).
std::string ResponseBuilder::LogprobsJson(const Piece& piece) const {
  if (request_.requested_logprobs == 0) return "null";
  auto decoded = [&](int32_t id) {
    absl::StatusOr<std::string> text =
        frontend_.Detokenize(absl::MakeConstSpan(&id, 1), /*skip_special_tokens=*/false);
    return text.ok() ? *std::move(text) : std::string();
  };
  nlohmann::json tokens = nlohmann::json::array();
  for (size_t i = 0; i < piece.token_ids.size(); ++i) {
    nlohmann::json entry = nlohmann::json::object();
    std::vector<model::TokenLogprob> top;
    if (i < piece.top_logprobs.size()) top = piece.top_logprobs[i];
    if (static_cast<int32_t>(top.size()) > request_.requested_logprobs) {
      top.resize(request_.requested_logprobs);
    }
    for (size_t r = 0; r < top.size(); ++r) {
      entry[absl::StrCat(top[r].token_id)] = {{"logprob", top[r].logprob},
                                              {"rank", r + 1},
                                              {"decoded_token", decoded(top[r].token_id)}};
    }
    const std::string sampled = absl::StrCat(piece.token_ids[i]);
    if (!entry.contains(sampled) && i < piece.logprobs.size()) {
      entry[sampled] = {{"logprob", piece.logprobs[i]},
                        {"rank", top.size() + 1},
                        {"decoded_token", decoded(piece.token_ids[i])}};
    }
    tokens.push_back(std::move(entry));
  }
  return tokens.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

void FillResponseHeader(const ModelInfo& model, absl::string_view id,
                        ModelInferResponse* response) {
  response->set_model_name(model.name);
  response->set_model_version(std::string(kModelVersion));
  response->set_id(std::string(id));
}

}  // namespace tessera::coordinator::kserve
