// The text-generation schema of the KServe v2 API, after Triton's vLLM backend
// (triton-inference-server/vllm_backend, src/model.py): which tensors the served model declares,
// how a ModelInferRequest becomes a GenerateRequest, and how GenerateEvents become
// ModelInferResponses. Internal to the KServe API (coordinator/api/kserve_*): plain functions and
// one builder object per request; no shared state.
//
// Inputs (max_batch_size 0, so shapes carry no batch dimension):
//   text_input                 BYTES [1]   the prompt (required unless input_ids is given)
//   input_ids                  INT32 [-1]  optional; tessera's extension for callers that
//                                          tokenize themselves (INT64 accepted too); excludes
//                                          text_input
//   stream                     BOOL  [1]   optional; one response per generated token
//   sampling_parameters        BYTES [1]   optional; JSON (kserve_sampling.h). Without it, the
//                                          request's own parameters (other than Triton's reserved
//                                          ones) are read as sampling parameters, as the vLLM
//                                          backend does
//   exclude_input_in_output    BOOL  [1]   optional; default: false for text_input without
//                                          stream, true otherwise (vLLM backend); false with
//                                          stream is an error, as there
//   return_finish_reason, return_cumulative_logprob, return_logprobs, return_num_input_tokens,
//   return_num_output_tokens   BOOL  [1]   optional; add the matching output
//   return_output_ids          BOOL  [1]   optional; tessera's: add output_ids
// Outputs:
//   text_output        BYTES [-1]  the text (a delta per streamed response)
//   finish_reason      BYTES [-1]  "stop" | "length" | "abort"; "None" before the last response
//                                  (the vLLM backend sends Python's str(None))
//   cumulative_logprob FP32  [-1]  sum of the sampled tokens' logprobs so far
//   logprobs           BYTES [-1]  JSON, per token {"<id>": {"logprob", "rank", "decoded_token"}};
//                                  "null" when sampling_parameters.logprobs was not set
//   num_input_tokens   UINT32 [1]  prompt tokens
//   num_output_tokens  UINT32 [-1] tokens in this response (streaming) or in all
//   output_ids         INT32 [-1]  the generated token ids (tessera's)
// A request that names outputs gets exactly those; otherwise text_output plus the return_* ones.
// Every output travels in raw_output_contents (as Triton's server sends it).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "coordinator/frontend.h"
#include "inference/grpc_service.pb.h"

namespace tessera::coordinator::kserve {

inline constexpr absl::string_view kModelVersion = "1";
inline constexpr absl::string_view kBackend = "vllm";
// Response parameter marking the last response of a request on ModelStreamInfer.
inline constexpr absl::string_view kFinalResponseParam = "triton_final_response";

struct TensorSpec {
  std::string name;
  inference::DataType data_type;
  std::string datatype;  // the protocol's name: "BYTES", "BOOL", ...
  std::vector<int64_t> dims;
  bool optional = false;
};
const std::vector<TensorSpec>& InputSpecs();
const std::vector<TensorSpec>& OutputSpecs();

// OK when `name`/`version` name the served model (version "" or "1"); otherwise Triton's
// kInvalidArgument "Request for unknown model: 'NAME' is not found" (or "... version V is not
// found").
absl::Status CheckModel(const ModelInfo& model, absl::string_view name, absl::string_view version);

void FillModelMetadata(const ModelInfo& model, inference::ModelMetadataResponse* response);
void FillModelConfig(const ModelInfo& model, inference::ModelConfig* config);

// Which outputs a request gets.
struct OutputSelection {
  bool text_output = true;
  bool finish_reason = false;
  bool cumulative_logprob = false;
  bool logprobs = false;
  bool num_input_tokens = false;
  bool num_output_tokens = false;
  bool output_ids = false;
};

// A validated ModelInferRequest.
struct ParsedRequest {
  std::string id;
  GenerateRequest generate;  // deadline left infinite: the caller sets it
  bool stream = false;
  bool prepend_input = false;      // text_output starts with the prompt (non-streamed text only)
  int32_t requested_logprobs = 0;  // sampling.logprobs as the client asked for it
  OutputSelection outputs;
  std::optional<absl::Duration> timeout;  // the request's "timeout" parameter (microseconds)
};

// Validates `request` against the schema, with Triton's messages where Triton has one (unknown
// model, "unexpected inference input 'X' for model 'M'", missing required inputs, data types,
// shapes). kInvalidArgument naming the field.
absl::StatusOr<ParsedRequest> ParseInferRequest(const inference::ModelInferRequest& request,
                                                const ModelInfo& model);

// Builds the responses of one request. Streaming: Delta() per event. Whole: Add() every event,
// then Whole(). `request` and `frontend` (which detokenizes the prompt of input_ids requests and
// logprobs tokens) must outlive the builder. One thread at a time.
class ResponseBuilder {
 public:
  ResponseBuilder(const ParsedRequest& request, const Frontend& frontend);

  void Delta(const GenerateEvent& event, inference::ModelInferResponse* response);
  void Add(const GenerateEvent& event);
  void Whole(inference::ModelInferResponse* response);

 private:
  struct Piece {
    std::string text;
    std::vector<int32_t> token_ids;
    std::vector<float> logprobs;
    std::vector<std::vector<model::TokenLogprob>> top_logprobs;
  };
  void Fill(const Piece& piece, absl::string_view finish_reason,
            inference::ModelInferResponse* response);
  std::string LogprobsJson(const Piece& piece) const;

  const ParsedRequest& request_;
  const Frontend& frontend_;
  int32_t prompt_tokens_ = 0;
  double cumulative_logprob_ = 0;
  Piece whole_;
  std::optional<model::FinishReason> finish_reason_;
};

// Sets the model name, version and request id every response carries.
void FillResponseHeader(const ModelInfo& model, absl::string_view id,
                        inference::ModelInferResponse* response);

}  // namespace tessera::coordinator::kserve
