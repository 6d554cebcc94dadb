// The paged KV cache of one worker rank: for every layer it holds, a key and a value tensor of
// [num_blocks, kv_heads, block_size, head_dim] (block-major, then head-major, so the slice of a
// block for a range of heads is contiguous — the unit that KV transfer moves). Memory comes from
// the Backend and is owned here. Which blocks a sequence uses is decided by BlockAllocator and
// recorded in its block table; this class only stores.
//
// Thread-compatible.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "common/tensor.h"
#include "kernels/backend.h"

namespace tessera::worker {

struct KvCacheConfig {
  int32_t num_layers = 0;
  int32_t num_blocks = 0;
  int32_t block_size = 16;  // tokens per block
  int32_t kv_heads = 0;     // on this rank
  int32_t head_dim = 0;
  DataType dtype = DataType::kF32;

  // Bytes of one block across all layers, keys and values.
  size_t BytesPerBlock() const;
};

class KvCache {
 public:
  // Allocates (and zeroes) the cache on `backend`. kInvalidArgument for a non-positive size or a
  // dtype other than f32/f16/bf16; kResourceExhausted when the device has no room.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const KvCacheConfig& config,
                                                         kernels::Backend& backend);

  const KvCacheConfig& config() const { return config_; }
  // The backend whose memory holds the cache (KV migration copies through it).
  kernels::Backend& backend() const { return backend_; }
  MutableTensorView key(int layer) const;
  MutableTensorView value(int layer) const;

 private:
  KvCache(const KvCacheConfig& config, kernels::Backend& backend)
      : config_(config), backend_(backend) {}
  KvCacheConfig config_;
  kernels::Backend& backend_;
  std::vector<kernels::DeviceBuffer> keys_;
  std::vector<kernels::DeviceBuffer> values_;
};

}  // namespace tessera::worker
