// KV-cache migration between replicas (disaggregated prefill → decode): the plain data the
// control plane carries (a rank's KV layout as peers see it, a decode replica's reservation, the
// checksums of what was sent) and the pure function that turns a block mapping into a
// kvtransfer gather/scatter list.
//
// Geometry. Every rank stores, per layer it holds, a key and a value tensor of
// [num_blocks][kv_heads][block_size][head_dim] (worker/kv_cache.h). A block's slice for a
// contiguous range of heads is therefore contiguous, so a prefill rank holding layers [a, b) and
// heads [h, k) and a decode rank holding layers [c, d) and heads [g, j) exchange, per shared layer,
// K and V and block, one segment covering the shared heads. That is how P and D may differ in
// TP (head ranges) and PP (layer ranges). Block size, head_dim and dtype must match: a mismatch is
// refused with kInvalidArgument (re-blocking would need a copy kernel per layout pair).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/dtype.h"
#include "kvtransfer/transport.h"

namespace tessera::worker {

// One rank's KV cache as a peer sees it.
struct KvRankLayout {
  int32_t layer_begin = 0;  // global layers [layer_begin, layer_end) held by this rank
  int32_t layer_end = 0;
  int32_t head_begin = 0;  // global KV heads [head_begin, head_end) held by this rank
  int32_t head_end = 0;
  int32_t block_size = 0;
  int32_t head_dim = 0;
  int32_t num_blocks = 0;
  DataType dtype = DataType::kF32;
  // Per held layer (index layer - layer_begin): the transport regions of its K and V tensors.
  std::vector<kvtransfer::RegionId> key_regions;
  std::vector<kvtransfer::RegionId> value_regions;
  std::string transport_kind;  // Transport::kind() of the rank's transport
  std::string descriptor;      // Transport::LocalDescriptor(), for Connect

  int32_t num_heads() const { return head_end - head_begin; }
  // Bytes of one block of one layer's K (or V) tensor on this rank.
  uint64_t BlockBytes() const;
  // kInvalidArgument naming what is inconsistent (ranges, sizes, region lists).
  absl::Status Validate() const;
};

// XXH3-64 of one destination range, computed by the sender over the bytes it sent and verified by
// the receiver over the bytes that landed.
struct KvSegmentChecksum {
  int32_t rank = 0;                 // the receiving rank: its index in KvDestination::ranks
  kvtransfer::RegionId region = 0;  // that rank's region
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t checksum = 0;
};

uint64_t KvChecksum(const void* data, uint64_t length);

// What the decode replica reserved for one request: `block_ids` hold the prompt's KV from token
// num_cached_tokens on (the leading blocks D already held in its prefix cache are not sent).
// `token` authorises writes into them (the Segment tag) and names the reservation.
struct KvDestination {
  uint64_t token = 0;
  int32_t num_cached_tokens = 0;   // a multiple of the block size
  std::vector<int32_t> block_ids;  // D's blocks for prompt tokens [num_cached_tokens, prompt end)
  std::vector<KvRankLayout> ranks;
};

// The segments that copy, from a source rank, blocks `src_blocks` into the destination rank's
// `dst_blocks` (same length, block i → block i), for every layer and head both ranks hold, K and
// V, whole blocks. Segments adjacent in both source and destination memory are merged.
// `src_regions_base` maps the source's own regions (key_regions/value_regions of `src`). Empty
// when the ranks share no layer or head. kInvalidArgument when the layouts cannot exchange
// (block size, head_dim or dtype differ) or a block id is out of range.
absl::StatusOr<std::vector<kvtransfer::Segment>> PlanKvSegments(
    const KvRankLayout& src, absl::Span<const int32_t> src_blocks, const KvRankLayout& dst,
    absl::Span<const int32_t> dst_blocks, uint64_t tag);

}  // namespace tessera::worker
