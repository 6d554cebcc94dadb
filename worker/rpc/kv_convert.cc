#include "worker/rpc/kv_convert.h"

#include "absl/strings/str_cat.h"
#include "common/dtype.h"

namespace tessera::worker::rpc {
namespace {

namespace v1 = ::tessera::v1;

// Bounds that keep a malicious or corrupt message from asking for absurd allocations.
constexpr int kMaxRanks = 4096;
constexpr int kMaxBlocks = 1 << 24;

}  // namespace

v1::KvDestination ToProto(const KvDestination& d) {
  v1::KvDestination out;
  out.set_token(d.token);
  out.set_num_cached_tokens(d.num_cached_tokens);
  out.mutable_block_ids()->Assign(d.block_ids.begin(), d.block_ids.end());
  for (const KvRankLayout& l : d.ranks) {
    v1::KvRankLayout* r = out.add_ranks();
    r->set_layer_begin(l.layer_begin);
    r->set_layer_end(l.layer_end);
    r->set_head_begin(l.head_begin);
    r->set_head_end(l.head_end);
    r->set_block_size(l.block_size);
    r->set_head_dim(l.head_dim);
    r->set_num_blocks(l.num_blocks);
    r->set_dtype(std::string(DataTypeToSafetensors(l.dtype)));
    r->mutable_key_regions()->Assign(l.key_regions.begin(), l.key_regions.end());
    r->mutable_value_regions()->Assign(l.value_regions.begin(), l.value_regions.end());
    r->set_transport_kind(l.transport_kind);
    r->set_transport_descriptor(l.descriptor);
  }
  return out;
}

absl::StatusOr<KvDestination> KvDestinationFromBytes(absl::string_view bytes) {
  v1::KvDestination in;
  if (!in.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError("kv_destination: not a KvDestination message");
  }
  if (in.ranks_size() == 0 || in.ranks_size() > kMaxRanks || in.block_ids_size() > kMaxBlocks) {
    return absl::InvalidArgumentError(absl::StrCat("kv_destination: ", in.ranks_size(),
                                                   " ranks and ", in.block_ids_size(), " blocks"));
  }
  KvDestination d;
  d.token = in.token();
  d.num_cached_tokens = in.num_cached_tokens();
  d.block_ids.assign(in.block_ids().begin(), in.block_ids().end());
  for (const v1::KvRankLayout& r : in.ranks()) {
    KvRankLayout l;
    l.layer_begin = r.layer_begin();
    l.layer_end = r.layer_end();
    l.head_begin = r.head_begin();
    l.head_end = r.head_end();
    l.block_size = r.block_size();
    l.head_dim = r.head_dim();
    l.num_blocks = r.num_blocks();
    absl::StatusOr<DataType> dtype = DataTypeFromSafetensors(r.dtype());
    if (!dtype.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("kv_destination: dtype: ", dtype.status().message()));
    }
    l.dtype = *dtype;
    l.key_regions.assign(r.key_regions().begin(), r.key_regions().end());
    l.value_regions.assign(r.value_regions().begin(), r.value_regions().end());
    l.transport_kind = r.transport_kind();
    l.descriptor = r.transport_descriptor();
    if (absl::Status s = l.Validate(); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("kv_destination: ", s.message()));
    }
    d.ranks.push_back(std::move(l));
  }
  return d;
}

std::string ChecksumsToBytes(const std::vector<KvSegmentChecksum>& checksums) {
  v1::KvChecksums out;
  for (const KvSegmentChecksum& c : checksums) {
    v1::KvSegmentChecksum* s = out.add_segments();
    s->set_region(c.region);
    s->set_offset(c.offset);
    s->set_length(c.length);
    s->set_checksum(c.checksum);
    s->set_rank(c.rank);
  }
  return out.SerializeAsString();
}

absl::StatusOr<std::vector<KvSegmentChecksum>> ChecksumsFromBytes(absl::string_view bytes) {
  v1::KvChecksums in;
  if (!in.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError("kv_import.checksums: not a KvChecksums message");
  }
  std::vector<KvSegmentChecksum> out;
  out.reserve(static_cast<size_t>(in.segments_size()));
  for (const v1::KvSegmentChecksum& s : in.segments()) {
    if (s.rank() < 0 || s.rank() >= kMaxRanks) {
      return absl::InvalidArgumentError(
          absl::StrCat("kv_import.checksums: rank ", s.rank(), " out of range"));
    }
    out.push_back({s.rank(), s.region(), s.offset(), s.length(), s.checksum()});
  }
  return out;
}

}  // namespace tessera::worker::rpc
