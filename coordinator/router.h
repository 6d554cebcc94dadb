// Picks the replica for a request: the one where it costs least, weighing the prompt blocks it
// would have to prefill (those not already in the replica's prefix cache, as the coordinator's
// PrefixIndex estimates it) against the replica's load (requests routed there and not finished,
// or queued as its last heartbeat says, whichever is larger). Ties rotate. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "coordinator/registry.h"

namespace tessera::coordinator {

struct RouterOptions {
  // How many prompt blocks of prefill one request of load is worth. Larger: spread requests
  // evenly; smaller: follow cached prefixes harder.
  double load_weight = 4.0;
};

struct RouteChoice {
  std::shared_ptr<ReplicaEntry> replica;  // null: no replica can take the request
  int cached_blocks = 0;                  // leading prompt blocks estimated to be cached there
  std::vector<uint64_t> chain;            // the prompt's block hash chain for that replica
};

// The hash chain over the full blocks of `prompt` (block_size tokens each), salted: hash i
// covers tokens [0, (i + 1) * block_size).
std::vector<uint64_t> PromptBlockChain(absl::Span<const int32_t> prompt, int32_t block_size,
                                       const std::string& salt);

class Router {
 public:
  explicit Router(const RouterOptions& options) : options_(options) {}

  // Among `live` replicas whose context holds `total_tokens` (prompt + max_tokens) and that are
  // not in `exclude`, the cheapest.
  RouteChoice Pick(const std::vector<std::shared_ptr<ReplicaEntry>>& live,
                   absl::Span<const int32_t> prompt, int64_t total_tokens,
                   const std::string& cache_salt,
                   const std::vector<const ReplicaEntry*>& exclude = {});

 private:
  const RouterOptions options_;
  // Where the rotation that breaks ties starts, one counter per role: prefill and decode picks
  // alternate, and one shared counter would start every decode pick on the same replica.
  std::atomic<uint64_t> turn_[3] = {0, 0, 0};  // mixed, prefill, decode
};

}  // namespace tessera::coordinator
