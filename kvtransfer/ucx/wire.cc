#include "kvtransfer/ucx/wire.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tessera::kvtransfer::ucx_wire {
namespace {

constexpr uint32_t kMagic = 0x43555854;  // "TXUC" little-endian
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxName = 4096;
constexpr uint32_t kMaxAddress = 1 << 20;
constexpr uint32_t kMaxRegions = 1 << 20;

class Writer {
 public:
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void Bytes(absl::string_view b) { out_.append(b.data(), b.size()); }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}
  bool U32(uint32_t* v) {
    if (in_.size() < 4) return false;
    *v = 0;
    for (int i = 0; i < 4; ++i)
      *v |= static_cast<uint32_t>(static_cast<uint8_t>(in_[i])) << (8 * i);
    in_.remove_prefix(4);
    return true;
  }
  bool U64(uint64_t* v) {
    if (in_.size() < 8) return false;
    *v = 0;
    for (int i = 0; i < 8; ++i)
      *v |= static_cast<uint64_t>(static_cast<uint8_t>(in_[i])) << (8 * i);
    in_.remove_prefix(8);
    return true;
  }
  bool Bytes(size_t n, std::string* out) {
    if (in_.size() < n) return false;
    out->assign(in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  bool empty() const { return in_.empty(); }

 private:
  absl::string_view in_;
};

uint64_t Fnv1a64(absl::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : bytes) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

absl::Status Malformed(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed UCX transport descriptor: ", what));
}

absl::Status BadHeader(absl::string_view what, size_t size) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed UCX ", what, " header (", size, " bytes)"));
}

}  // namespace

std::string EncodeDescriptor(const Descriptor& d) {
  Writer w;
  w.U32(kMagic);
  w.U32(kVersion);
  w.U32(static_cast<uint32_t>(d.name.size()));
  w.Bytes(d.name);
  w.U32(static_cast<uint32_t>(d.worker_address.size()));
  w.Bytes(d.worker_address);
  w.U32(static_cast<uint32_t>(d.regions.size()));
  for (const RegionInfo& r : d.regions) {
    w.U64(r.id);
    w.U64(r.length);
  }
  const uint64_t sum = Fnv1a64(w.out());
  w.U64(sum);
  return std::move(w.out());
}

absl::StatusOr<Descriptor> DecodeDescriptor(absl::string_view bytes) {
  if (bytes.size() < 8 + 4 * 5) return Malformed("too short");
  const absl::string_view body = bytes.substr(0, bytes.size() - 8);
  Reader tail(bytes.substr(bytes.size() - 8));
  uint64_t sum = 0;
  tail.U64(&sum);
  Reader r(body);
  uint32_t magic = 0, version = 0, name_length = 0, address_length = 0, regions = 0;
  if (!r.U32(&magic) || magic != kMagic) return Malformed("bad magic (not a UCX descriptor)");
  if (!r.U32(&version) || version != kVersion) return Malformed("unsupported version");
  if (sum != Fnv1a64(body)) return Malformed("checksum mismatch");
  Descriptor d;
  if (!r.U32(&name_length) || name_length > kMaxName || !r.Bytes(name_length, &d.name)) {
    return Malformed("bad name");
  }
  if (!r.U32(&address_length) || address_length == 0 || address_length > kMaxAddress ||
      !r.Bytes(address_length, &d.worker_address)) {
    return Malformed("bad worker address");
  }
  if (!r.U32(&regions) || regions > kMaxRegions) return Malformed("bad region count");
  d.regions.reserve(regions);
  for (uint32_t i = 0; i < regions; ++i) {
    RegionInfo info;
    if (!r.U64(&info.id) || !r.U64(&info.length)) return Malformed("truncated regions");
    if (info.id == 0 || info.length == 0) return Malformed("zero region id or length");
    d.regions.push_back(info);
  }
  if (!r.empty()) return Malformed("trailing bytes");
  return d;
}

std::string EncodeHello(const HelloHeader& h) {
  Writer w;
  w.U64(h.peer_id);
  w.U32(h.name_length);
  w.U32(h.address_length);
  return std::move(w.out());
}
absl::StatusOr<HelloHeader> DecodeHello(absl::string_view bytes) {
  Reader r(bytes);
  HelloHeader h;
  if (!r.U64(&h.peer_id) || !r.U32(&h.name_length) || !r.U32(&h.address_length) || !r.empty()) {
    return BadHeader("hello", bytes.size());
  }
  return h;
}

std::string EncodeHelloAck(const HelloAckHeader& h) {
  Writer w;
  w.U64(h.peer_id);
  w.U64(h.inbound_id);
  return std::move(w.out());
}
absl::StatusOr<HelloAckHeader> DecodeHelloAck(absl::string_view bytes) {
  Reader r(bytes);
  HelloAckHeader h;
  if (!r.U64(&h.peer_id) || !r.U64(&h.inbound_id) || !r.empty()) {
    return BadHeader("hello-ack", bytes.size());
  }
  return h;
}

std::string EncodeData(const DataHeader& h) {
  Writer w;
  for (uint64_t v :
       {h.inbound_id, h.transfer_id, h.segment_index, h.region, h.offset, h.length, h.tag}) {
    w.U64(v);
  }
  return std::move(w.out());
}
absl::StatusOr<DataHeader> DecodeData(absl::string_view bytes) {
  Reader r(bytes);
  DataHeader h;
  if (!r.U64(&h.inbound_id) || !r.U64(&h.transfer_id) || !r.U64(&h.segment_index) ||
      !r.U64(&h.region) || !r.U64(&h.offset) || !r.U64(&h.length) || !r.U64(&h.tag) || !r.empty()) {
    return BadHeader("data", bytes.size());
  }
  return h;
}

std::string EncodeAck(const AckHeader& h) {
  Writer w;
  w.U64(h.transfer_id);
  w.U64(h.segment_index);
  w.U32(static_cast<uint32_t>(h.code));
  return std::move(w.out());
}
absl::StatusOr<AckHeader> DecodeAck(absl::string_view bytes) {
  Reader r(bytes);
  AckHeader h;
  uint32_t code = 0;
  if (!r.U64(&h.transfer_id) || !r.U64(&h.segment_index) || !r.U32(&code) || !r.empty()) {
    return BadHeader("ack", bytes.size());
  }
  h.code = static_cast<int32_t>(code);
  return h;
}

std::string EncodeBye(const ByeHeader& h) {
  Writer w;
  w.U64(h.id);
  w.U32(h.to_receiver);
  return std::move(w.out());
}
absl::StatusOr<ByeHeader> DecodeBye(absl::string_view bytes) {
  Reader r(bytes);
  ByeHeader h;
  if (!r.U64(&h.id) || !r.U32(&h.to_receiver) || !r.empty()) {
    return BadHeader("bye", bytes.size());
  }
  return h;
}

}  // namespace tessera::kvtransfer::ucx_wire
