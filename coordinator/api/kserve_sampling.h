// The `sampling_parameters` of Triton's vLLM backend: a JSON object with vLLM's SamplingParams
// names, applied to a coordinator::GenerateRequest. Internal to the KServe API
// (coordinator/api/kserve_*); stateless functions, safe from any thread.
//
// Keys (vLLM's meanings, see model/sampling.h): temperature, top_p, min_p, repetition_penalty,
// presence_penalty, frequency_penalty (numbers); top_k, max_tokens, min_tokens, seed, logprobs
// (integers); stop (a string or a list of strings); stop_token_ids (a list of integers);
// ignore_eos, skip_special_tokens, include_stop_str_in_output (booleans); n (only 1); logit_bias
// (an object of token id: bias, OpenAI's).
// Values may be JSON values of those types or strings that spell them ("0.1", "16", "true"), as
// Triton's documentation writes them; integers may be written as integral numbers (16.0). A null
// value leaves the default, as the vLLM backend drops None values. Ranges are not checked here:
// Frontend::Generate runs model::ValidateSamplingParams.
//
// Errors are kInvalidArgument and name the field: "sampling_parameters: unknown key 'foo'
// (supported: ...)", "sampling_parameters: top_k: expected an integer, got string \"x\"",
// "sampling_parameters: invalid JSON: ... (byte N)".
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "coordinator/frontend.h"

namespace tessera::coordinator::kserve {

// Applies the JSON object in `json_text` to `request` (its sampling, skip_special_tokens and
// include_stop_str_in_output). `source` starts every error message ("sampling_parameters", or
// "parameters" for request parameters). On error `request` may be partly updated.
absl::Status ApplySamplingParameters(absl::string_view json_text, absl::string_view source,
                                     GenerateRequest* request);

}  // namespace tessera::coordinator::kserve
