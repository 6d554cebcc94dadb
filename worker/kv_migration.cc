#include "worker/kv_migration.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace tessera::worker {

uint64_t KvRankLayout::BlockBytes() const {
  return static_cast<uint64_t>(num_heads()) * block_size * head_dim * DataTypeSize(dtype);
}

absl::Status KvRankLayout::Validate() const {
  auto error = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("KV layout: ", parts...));
  };
  if (layer_begin < 0 || layer_end <= layer_begin) {
    return error("empty or negative layer range [", layer_begin, ", ", layer_end, ")");
  }
  if (head_begin < 0 || head_end <= head_begin) {
    return error("empty or negative head range [", head_begin, ", ", head_end, ")");
  }
  if (block_size <= 0 || head_dim <= 0 || num_blocks <= 0) {
    return error("block_size (", block_size, "), head_dim (", head_dim, ") and num_blocks (",
                 num_blocks, ") must be positive");
  }
  const auto layers = static_cast<size_t>(layer_end - layer_begin);
  if (key_regions.size() != layers || value_regions.size() != layers) {
    return error(key_regions.size(), " key and ", value_regions.size(), " value regions for ",
                 layers, " layers");
  }
  return absl::OkStatus();
}

uint64_t KvChecksum(const void* data, uint64_t length) { return XXH3_64bits(data, length); }

absl::StatusOr<std::vector<kvtransfer::Segment>> PlanKvSegments(
    const KvRankLayout& src, absl::Span<const int32_t> src_blocks, const KvRankLayout& dst,
    absl::Span<const int32_t> dst_blocks, uint64_t tag) {
  if (absl::Status s = src.Validate(); !s.ok()) return s;
  if (absl::Status s = dst.Validate(); !s.ok()) return s;
  if (src.block_size != dst.block_size || src.head_dim != dst.head_dim || src.dtype != dst.dtype) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV layouts cannot exchange blocks: block_size ", src.block_size, " vs ", dst.block_size,
        ", head_dim ", src.head_dim, " vs ", dst.head_dim, ", dtype ", DataTypeName(src.dtype),
        " vs ", DataTypeName(dst.dtype), " (both sides must use the same)"));
  }
  if (src_blocks.size() != dst_blocks.size()) {
    return absl::InvalidArgumentError(absl::StrCat("KV migration of ", src_blocks.size(),
                                                   " source blocks into ", dst_blocks.size()));
  }
  for (size_t i = 0; i < src_blocks.size(); ++i) {
    if (src_blocks[i] < 0 || src_blocks[i] >= src.num_blocks || dst_blocks[i] < 0 ||
        dst_blocks[i] >= dst.num_blocks) {
      return absl::InvalidArgumentError(absl::StrCat("KV migration block ", src_blocks[i], " → ",
                                                     dst_blocks[i], " outside [0, ", src.num_blocks,
                                                     ") → [0, ", dst.num_blocks, ")"));
    }
  }
  std::vector<kvtransfer::Segment> segments;
  const int32_t layer_begin = std::max(src.layer_begin, dst.layer_begin);
  const int32_t layer_end = std::min(src.layer_end, dst.layer_end);
  const int32_t head_begin = std::max(src.head_begin, dst.head_begin);
  const int32_t head_end = std::min(src.head_end, dst.head_end);
  if (layer_begin >= layer_end || head_begin >= head_end) return segments;
  const uint64_t head_bytes =
      static_cast<uint64_t>(src.block_size) * src.head_dim * DataTypeSize(src.dtype);
  const uint64_t length = head_bytes * static_cast<uint64_t>(head_end - head_begin);
  const uint64_t src_head_offset = head_bytes * static_cast<uint64_t>(head_begin - src.head_begin);
  const uint64_t dst_head_offset = head_bytes * static_cast<uint64_t>(head_begin - dst.head_begin);
  const uint64_t src_block_bytes = src.BlockBytes();
  const uint64_t dst_block_bytes = dst.BlockBytes();
  for (int32_t layer = layer_begin; layer < layer_end; ++layer) {
    for (int kv = 0; kv < 2; ++kv) {
      const auto& src_regions = kv == 0 ? src.key_regions : src.value_regions;
      const auto& dst_regions = kv == 0 ? dst.key_regions : dst.value_regions;
      const kvtransfer::RegionId src_region = src_regions[layer - src.layer_begin];
      const kvtransfer::RegionId dst_region = dst_regions[layer - dst.layer_begin];
      for (size_t i = 0; i < src_blocks.size(); ++i) {
        kvtransfer::Segment s;
        s.local_region = src_region;
        s.local_offset = static_cast<uint64_t>(src_blocks[i]) * src_block_bytes + src_head_offset;
        s.remote_region = dst_region;
        s.remote_offset = static_cast<uint64_t>(dst_blocks[i]) * dst_block_bytes + dst_head_offset;
        s.length = length;
        s.tag = tag;
        if (!segments.empty()) {
          kvtransfer::Segment& last = segments.back();
          // Whole blocks of consecutive ids on both sides are contiguous: merge.
          if (last.local_region == s.local_region && last.remote_region == s.remote_region &&
              last.local_offset + last.length == s.local_offset &&
              last.remote_offset + last.length == s.remote_offset) {
            last.length += s.length;
            continue;
          }
        }
        segments.push_back(s);
      }
    }
  }
  return segments;
}

}  // namespace tessera::worker
