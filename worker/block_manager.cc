#include "worker/block_manager.h"

#include <algorithm>

#include "absl/container/inlined_vector.h"

#include "absl/strings/str_cat.h"
#include "common/check.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace tessera::worker {
namespace {

void PutLittleEndian(uint64_t value, char* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
}

}  // namespace

uint64_t BlockHash(uint64_t parent, uint64_t extra, absl::Span<const int32_t> tokens) {
  absl::InlinedVector<char, 16 + 4 * 64> bytes(16 + 4 * tokens.size());
  PutLittleEndian(parent, bytes.data());
  PutLittleEndian(extra, bytes.data() + 8);
  char* out = bytes.data() + 16;
  for (int32_t token : tokens) {
    const auto u = static_cast<uint32_t>(token);
    for (int i = 0; i < 4; ++i) *out++ = static_cast<char>((u >> (8 * i)) & 0xff);
  }
  return XXH3_64bits(bytes.data(), bytes.size());
}

uint64_t CacheSaltKey(absl::string_view cache_salt) {
  return cache_salt.empty() ? 0 : XXH3_64bits(cache_salt.data(), cache_salt.size());
}

BlockManager::BlockManager(int32_t num_blocks, bool enable_prefix_caching)
    : enable_prefix_caching_(enable_prefix_caching),
      allocator_(num_blocks),
      hash_(static_cast<size_t>(std::max(num_blocks, 0)), 0),
      registered_(static_cast<size_t>(std::max(num_blocks, 0)), false),
      lru_pos_(static_cast<size_t>(std::max(num_blocks, 0)), lru_.end()) {}

int32_t BlockManager::LookUp(absl::Span<const uint64_t> hashes) const {
  if (!enable_prefix_caching_) return 0;
  int32_t n = 0;
  while (n < static_cast<int32_t>(hashes.size()) && cached_.contains(hashes[n])) ++n;
  return n;
}

int32_t BlockManager::CountEvictable(absl::Span<const uint64_t> hashes) const {
  int32_t n = 0;
  for (uint64_t h : hashes) {
    const auto it = cached_.find(h);
    TESSERA_CHECK(it != cached_.end()) << "CountEvictable of an uncached hash";
    n += lru_pos_[it->second] != lru_.end() ? 1 : 0;
  }
  return n;
}

std::vector<int32_t> BlockManager::AcquireCached(absl::Span<const uint64_t> hashes) {
  std::vector<int32_t> blocks;
  blocks.reserve(hashes.size());
  for (uint64_t h : hashes) {
    const auto it = cached_.find(h);
    TESSERA_CHECK(it != cached_.end()) << "AcquireCached of an uncached hash";
    const int32_t block = it->second;
    if (lru_pos_[block] != lru_.end()) {
      lru_.erase(lru_pos_[block]);
      lru_pos_[block] = lru_.end();
    }
    TESSERA_CHECK_OK(allocator_.AddRef(block));
    blocks.push_back(block);
  }
  return blocks;
}

void BlockManager::Evict() {
  TESSERA_CHECK(!lru_.empty()) << "Evict with nothing cached";
  const int32_t block = lru_.front();
  lru_.pop_front();
  lru_pos_[block] = lru_.end();
  cached_.erase(hash_[block]);
  registered_[block] = false;
  TESSERA_CHECK_OK(allocator_.Release(block));  // the cache's reference: the block is free
  ++evictions_;
}

absl::StatusOr<std::vector<int32_t>> BlockManager::Allocate(int32_t count) {
  if (count > num_available()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache: ", count, " blocks needed, ",
                                                     num_free(), " free and ", num_cached(),
                                                     " evictable of ", num_blocks()));
  }
  while (num_free() < count) Evict();
  return allocator_.Allocate(count);
}

void BlockManager::Register(int32_t block, uint64_t hash) {
  if (!enable_prefix_caching_ || registered_[block] || cached_.contains(hash)) return;
  TESSERA_CHECK_OK(allocator_.AddRef(block));
  cached_.emplace(hash, block);
  hash_[block] = hash;
  registered_[block] = true;
}

absl::Status BlockManager::Release(absl::Span<const int32_t> blocks) {
  absl::Status first;
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    const int32_t block = *it;
    if (references(block) <= 0) {
      first.Update(absl::FailedPreconditionError(
          absl::StrCat("KV block ", block, " is not held by any sequence (Release)")));
      continue;
    }
    TESSERA_CHECK_OK(allocator_.Release(block));
    if (registered_[block] && allocator_.refcount(block) == 1) {
      lru_pos_[block] = lru_.insert(lru_.end(), block);
    }
  }
  return first;
}

int32_t BlockManager::references(int32_t block) const {
  if (block < 0 || block >= num_blocks()) return 0;
  return allocator_.refcount(block) - (registered_[block] ? 1 : 0);
}

absl::Status BlockManager::CheckInvariants() const {
  int32_t free = 0, cached = 0, in_use = 0;
  for (int32_t b = 0; b < num_blocks(); ++b) {
    const int32_t refs = allocator_.refcount(b);
    const bool in_lru = lru_pos_[b] != lru_.end();
    if (refs == 0) {
      if (registered_[b] || in_lru) {
        return absl::InternalError(absl::StrCat("free KV block ", b, " is registered or listed"));
      }
      ++free;
    } else if (registered_[b] && refs == 1) {
      if (!in_lru) return absl::InternalError(absl::StrCat("cached KV block ", b, " not in LRU"));
      ++cached;
    } else {
      if (in_lru) return absl::InternalError(absl::StrCat("KV block ", b, " in use and in LRU"));
      ++in_use;
    }
    if (registered_[b]) {
      const auto it = cached_.find(hash_[b]);
      if (it == cached_.end() || it->second != b) {
        return absl::InternalError(absl::StrCat("KV block ", b, " registered but not findable"));
      }
    }
  }
  if (free != num_free() || cached != num_cached() || in_use != num_in_use() ||
      free + cached + in_use != num_blocks() ||
      static_cast<size_t>(std::count(registered_.begin(), registered_.end(), true)) !=
          cached_.size()) {
    return absl::InternalError(absl::StrCat("KV accounting: free ", free, "/", num_free(),
                                            ", cached ", cached, "/", num_cached(), ", in use ",
                                            in_use, "/", num_in_use(), ", total ", num_blocks()));
  }
  return absl::OkStatus();
}

}  // namespace tessera::worker
