// What a run sends: prompts as token ids plus the number of tokens to generate, built from a
// WorkloadSpec (bench_config.h) with a seed, deterministically. Token ids are drawn from
// [0, vocab). Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/bench_config.h"
#include "bench/mooncake_trace.h"

namespace tessera::bench {

struct RequestSpec {
  std::vector<int32_t> prompt;  // token ids
  int64_t output_len = 0;       // max_tokens (exact with ignore_eos)
};

// `count` requests of a synthetic dataset (random, fixed, chat, prefix):
//   random  input and output lengths uniform in [round(L*(1-r)), round(L*(1+r))], at least 1
//   fixed   exactly input_len / output_len
//   chat    log-normal lengths with medians input_len / output_len (sigma 1.0 for prompts, 0.8
//           for outputs: the long right tail of conversation datasets), clipped to [1, 8 x median]
//   prefix  num_prefixes random prefixes of prefix_len tokens, shared round-robin, each followed
//           by a random suffix whose length is drawn as for `random`
// kInvalidArgument for kMooncake (use RequestsFromTrace) or vocab < 1.
absl::StatusOr<std::vector<RequestSpec>> GenerateRequests(const WorkloadSpec& spec, int64_t count,
                                                          int64_t vocab, uint64_t seed);

// One request per trace entry. Block b of a prompt holds `block_size` tokens that depend only on
// (hash_ids[b], position in block, salt), so equal hash ids give equal blocks — shared prefixes
// stay shared — and a different salt gives fresh blocks (a cold cache for each run of a sweep).
// The prompt is cut to input_length; tokens past the listed blocks are unique to the request.
std::vector<RequestSpec> RequestsFromTrace(const std::vector<TraceEntry>& trace, int64_t block_size,
                                           int64_t vocab, uint64_t salt);

// kInvalidArgument naming the first request whose prompt plus output exceeds `max_model_len`
// (<= 0: no limit known, always OK).
absl::Status CheckFitsContext(const std::vector<RequestSpec>& requests, int64_t max_model_len);

}  // namespace tessera::bench
