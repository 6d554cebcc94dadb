#include "worker/block_allocator.h"

#include "absl/strings/str_cat.h"

namespace tessera::worker {

BlockAllocator::BlockAllocator(int32_t num_blocks) : refcounts_(num_blocks > 0 ? num_blocks : 0) {
  free_.reserve(refcounts_.size());
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

absl::StatusOr<std::vector<int32_t>> BlockAllocator::Allocate(int32_t count) {
  if (count < 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot allocate ", count, " KV blocks"));
  }
  if (count > num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache: ", count, " blocks needed, ",
                                                     num_free(), " of ", num_blocks(), " free"));
  }
  std::vector<int32_t> blocks(count);
  for (int32_t i = 0; i < count; ++i) {
    blocks[i] = free_.back();
    free_.pop_back();
    refcounts_[blocks[i]] = 1;
  }
  return blocks;
}

absl::Status BlockAllocator::AddRef(int32_t block) {
  if (block < 0 || block >= num_blocks() || refcounts_[block] == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("KV block ", block, " is not allocated (AddRef)"));
  }
  ++refcounts_[block];
  return absl::OkStatus();
}

absl::Status BlockAllocator::Release(int32_t block) {
  if (block < 0 || block >= num_blocks() || refcounts_[block] == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("KV block ", block, " is not allocated (Release)"));
  }
  if (--refcounts_[block] == 0) free_.push_back(block);
  return absl::OkStatus();
}

absl::Status BlockAllocator::ReleaseAll(const std::vector<int32_t>& blocks) {
  absl::Status first;
  for (int32_t b : blocks) first.Update(Release(b));
  return first;
}

int32_t BlockAllocator::refcount(int32_t block) const {
  return block >= 0 && block < num_blocks() ? refcounts_[block] : 0;
}

}  // namespace tessera::worker
