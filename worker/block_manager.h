// The KV blocks of one replica with automatic prefix caching. A full block is identified by a
// hash chain: BlockHash(parent's hash, the block's token ids, an extra key for anything else that
// changes its content — cache salt, adapter). A request reuses the blocks of its longest cached
// prefix (shared, refcounted); a block whose last reference is released keeps its content and
// stays findable until it is evicted, least recently released first, when a fresh block is needed.
//
// Every block is in exactly one state:
//   free    — no content, on BlockAllocator's free list;
//   cached  — content registered under its hash, no sequence holds it (evictable, LRU);
//   in use  — held by at least one sequence.
// num_free() + num_cached() + num_in_use() == num_blocks(), always (CheckInvariants()).
//
// Wraps BlockAllocator: a registered block carries one extra allocator reference, the cache's.
// Thread-compatible: owned by the scheduler, on the engine's control thread.
#pragma once

#include <cstdint>
#include <list>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "worker/block_allocator.h"

namespace tessera::worker {

// XXH3-64 of (parent, extra, tokens) as little-endian bytes: 8 + 8 + 4 * tokens.size(). The first
// block of a sequence has parent kRootBlockHash. 64 bits: a collision among n cached blocks has
// probability about n^2 / 2^65, negligible for any cache size tessera meets.
inline constexpr uint64_t kRootBlockHash = 0x7465737365726121ull;  // "tessera!"
uint64_t BlockHash(uint64_t parent, uint64_t extra, absl::Span<const int32_t> tokens);
// The extra key of a request: 0 for an empty salt, else XXH3-64 of the salt.
uint64_t CacheSaltKey(absl::string_view cache_salt);

class BlockManager {
 public:
  // With `enable_prefix_caching` false, Register is a no-op and LookUp never finds anything.
  BlockManager(int32_t num_blocks, bool enable_prefix_caching);

  int32_t num_blocks() const { return allocator_.num_blocks(); }
  int32_t num_free() const { return allocator_.num_free(); }
  int32_t num_cached() const { return static_cast<int32_t>(lru_.size()); }
  int32_t num_in_use() const { return num_blocks() - num_free() - num_cached(); }
  // Blocks a request can get now: free ones and evictable cached ones.
  int32_t num_available() const { return num_free() + num_cached(); }
  bool prefix_caching() const { return enable_prefix_caching_; }
  int64_t evictions() const { return evictions_; }

  // How many leading hashes of `hashes` have a cached block (in use or not).
  int32_t LookUp(absl::Span<const uint64_t> hashes) const;
  // Of the first `n` hashes (all cached), how many blocks are unreferenced: acquiring them takes
  // them out of num_available().
  int32_t CountEvictable(absl::Span<const uint64_t> hashes) const;
  // Takes a reference on the cached block of each hash (all must be cached: a bug otherwise) and
  // returns their ids in order.
  std::vector<int32_t> AcquireCached(absl::Span<const uint64_t> hashes);
  // `count` fresh blocks (no content, one reference each), evicting least recently released
  // cached blocks when the free list runs short. kResourceExhausted (nothing taken) when fewer
  // than `count` are available.
  absl::StatusOr<std::vector<int32_t>> Allocate(int32_t count);
  // Records that `block` (in use, now full) holds the content of `hash`. No-op when caching is
  // off, the block is already registered, or another block already holds that hash.
  void Register(int32_t block, uint64_t hash);
  // Drops one reference from each block, last block first, so that a sequence's tail blocks are
  // evicted before its head (heads are the likelier shared prefixes). A registered block whose
  // last reference goes becomes cached; an unregistered one becomes free. kFailedPrecondition
  // for a block that is not in use (the others are still released).
  absl::Status Release(absl::Span<const int32_t> blocks);
  // Sequences holding `block`.
  int32_t references(int32_t block) const;

  // The state invariants, recomputed from scratch (for tests). kInternal naming the first broken.
  absl::Status CheckInvariants() const;

 private:
  void Evict();  // the least recently released cached block becomes free

  const bool enable_prefix_caching_;
  BlockAllocator allocator_;
  absl::flat_hash_map<uint64_t, int32_t> cached_;  // hash -> block (in use or evictable)
  std::vector<uint64_t> hash_;                     // per block, valid when registered_
  std::vector<bool> registered_;
  std::list<int32_t> lru_;  // evictable blocks, least recently released first
  std::vector<std::list<int32_t>::iterator> lru_pos_;
  int64_t evictions_ = 0;
};

}  // namespace tessera::worker
