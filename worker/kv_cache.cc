#include "worker/kv_cache.h"

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status_macros.h"

namespace tessera::worker {

size_t KvCacheConfig::BytesPerBlock() const {
  return 2ull * static_cast<size_t>(num_layers) * static_cast<size_t>(kv_heads) *
         static_cast<size_t>(block_size) * static_cast<size_t>(head_dim) * DataTypeSize(dtype);
}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const KvCacheConfig& config,
                                                         kernels::Backend& backend) {
  if (config.num_layers <= 0 || config.num_blocks <= 0 || config.block_size <= 0 ||
      config.kv_heads <= 0 || config.head_dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: every size must be positive (layers=", config.num_layers,
                     ", blocks=", config.num_blocks, ", block_size=", config.block_size,
                     ", kv_heads=", config.kv_heads, ", head_dim=", config.head_dim, ")"));
  }
  if (!IsFloatingPoint(config.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache dtype must be f32, f16 or bf16, got ", DataTypeName(config.dtype)));
  }
  auto cache = std::unique_ptr<KvCache>(new KvCache(config, backend));
  const size_t layer_bytes =
      config.BytesPerBlock() / (2ull * config.num_layers) * static_cast<size_t>(config.num_blocks);
  auto stream = backend.CreateStream();
  if (!stream.ok()) return stream.status();
  for (int layer = 0; layer < config.num_layers; ++layer) {
    for (auto* buffers : {&cache->keys_, &cache->values_}) {
      TESSERA_ASSIGN_OR_RETURN(kernels::DeviceBuffer buffer, backend.Allocate(layer_bytes));
      TESSERA_RETURN_IF_ERROR(backend.Memset(buffer.data(), 0, layer_bytes, **stream));
      buffers->push_back(std::move(buffer));
    }
  }
  TESSERA_RETURN_IF_ERROR((*stream)->Synchronize());
  return cache;
}

MutableTensorView KvCache::key(int layer) const {
  TESSERA_CHECK(layer >= 0 && layer < config_.num_layers) << "layer " << layer;
  return keys_[layer].View(
      config_.dtype, {config_.num_blocks, config_.kv_heads, config_.block_size, config_.head_dim});
}

MutableTensorView KvCache::value(int layer) const {
  TESSERA_CHECK(layer >= 0 && layer < config_.num_layers) << "layer " << layer;
  return values_[layer].View(
      config_.dtype, {config_.num_blocks, config_.kv_heads, config_.block_size, config_.head_dim});
}

}  // namespace tessera::worker
