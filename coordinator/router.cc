#include "coordinator/router.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <limits>

namespace tessera::coordinator {

std::vector<uint64_t> PromptBlockChain(absl::Span<const int32_t> prompt, int32_t block_size,
                                       const std::string& salt) {
  std::vector<uint64_t> chain;
  if (block_size <= 0) return chain;
  uint64_t h = XXH3_64bits(salt.data(), salt.size());
  for (size_t start = 0; start + block_size <= prompt.size(); start += block_size) {
    h = XXH3_64bits_withSeed(prompt.data() + start, sizeof(int32_t) * block_size, h);
    chain.push_back(h);
  }
  return chain;
}

RouteChoice Router::Pick(const std::vector<std::shared_ptr<ReplicaEntry>>& live,
                         absl::Span<const int32_t> prompt, int64_t total_tokens,
                         const std::string& cache_salt,
                         const std::vector<const ReplicaEntry*>& exclude) {
  RouteChoice best;
  double best_cost = std::numeric_limits<double>::infinity();
  const size_t n = live.size();
  if (n == 0) return best;
  const std::string& role = live[0]->info().role;
  const uint64_t start = turn_[role == "prefill" ? 1 : role == "decode" ? 2 : 0].fetch_add(1);
  int32_t chain_block_size = -1;
  std::vector<uint64_t> chain;
  for (size_t k = 0; k < n; ++k) {
    const std::shared_ptr<ReplicaEntry>& r = live[(start + k) % n];
    if (r->lost() || total_tokens > r->info().max_model_len) continue;
    if (std::find(exclude.begin(), exclude.end(), r.get()) != exclude.end()) continue;
    if (r->info().block_size != chain_block_size) {
      chain_block_size = r->info().block_size;
      chain = PromptBlockChain(prompt, chain_block_size, cache_salt);
    }
    const int cached = r->prefix_index().Match(chain);
    const double prompt_blocks =
        static_cast<double>(prompt.size()) / static_cast<double>(chain_block_size);
    const ReplicaLoad load = r->load();
    const double queued = static_cast<double>(
        std::max<int64_t>(r->in_flight(), load.num_requests_running + load.num_requests_waiting));
    const double cost = (prompt_blocks - cached) + options_.load_weight * queued;
    if (cost < best_cost) {
      best_cost = cost;
      best.replica = r;
      best.cached_blocks = cached;
      best.chain = chain;
    }
  }
  return best;
}

}  // namespace tessera::coordinator
