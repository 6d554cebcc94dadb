// Hands out the KV-cache blocks of one replica rank. Blocks are reference counted so that
// sequences sharing a prefix can share blocks; a block returns to the free list when its last
// reference is released. Accounting invariant: num_free() + (blocks with refcount > 0) ==
// num_blocks(), always.
//
// Thread-compatible: owned by the engine's control thread; no internal locking.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera::worker {

class BlockAllocator {
 public:
  explicit BlockAllocator(int32_t num_blocks);

  int32_t num_blocks() const { return static_cast<int32_t>(refcounts_.size()); }
  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }

  // `count` blocks with refcount 1, or kResourceExhausted (and nothing allocated) when fewer than
  // `count` are free. Lowest block ids first, so a fresh allocator is deterministic.
  absl::StatusOr<std::vector<int32_t>> Allocate(int32_t count);
  // Adds a reference to an allocated block (a shared prefix). kFailedPrecondition if the block is
  // free or out of range.
  absl::Status AddRef(int32_t block);
  // Drops one reference; the block is free again when none remain. kFailedPrecondition if the
  // block is already free or out of range (a double free is reported, never corrupts the list).
  absl::Status Release(int32_t block);
  // Releases every block of `blocks`; returns the first error but releases all it can.
  absl::Status ReleaseAll(const std::vector<int32_t>& blocks);
  int32_t refcount(int32_t block) const;

 private:
  std::vector<int32_t> refcounts_;
  std::vector<int32_t> free_;  // a stack; the lowest ids on top when fresh
};

}  // namespace tessera::worker
