// Reader of the Mooncake trace format (kvcache-ai/Mooncake, FAST'25 traces): JSON Lines, one
// request per line:
//   {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48]}
// timestamp is in milliseconds (non-decreasing down the file); hash_ids name the prompt's blocks
// of 512 tokens (by default) in order, and equal ids mean equal blocks — a shared prefix. Other
// fields are ignored; blank lines are skipped. Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera::bench {

struct TraceEntry {
  int64_t line = 0;  // 1-based line number in the file
  double timestamp_ms = 0;
  int64_t input_length = 0;
  int64_t output_length = 0;
  std::vector<int64_t> hash_ids;
};

// Every line is checked; the first bad one is reported as kInvalidArgument
// "<source>:<line>: <field>: expected ..., got ..." (or "not a JSON object: ..."). An input
// without any request is kInvalidArgument too.
absl::StatusOr<std::vector<TraceEntry>> ParseMooncakeTrace(absl::string_view text,
                                                           absl::string_view source);

// Reads and parses `path`; kNotFound when it cannot be opened.
absl::StatusOr<std::vector<TraceEntry>> ReadMooncakeTrace(const std::string& path);

}  // namespace tessera::bench
