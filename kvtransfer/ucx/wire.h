// Wire formats of the UCX transport: the descriptor a receiver hands out (LocalDescriptor) and the
// fixed headers of its active messages. Pure byte encoding (little-endian, explicit widths), no
// UCX headers, so it is unit-tested on its own. Decoders validate everything: a malformed,
// truncated or corrupted input is kInvalidArgument, never a crash.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kvtransfer/transport.h"

namespace tessera::kvtransfer::ucx_wire {

struct RegionInfo {
  RegionId id = 0;
  uint64_t length = 0;
};

// What a peer needs to connect and to validate its segments before sending.
struct Descriptor {
  std::string name;            // the receiver's TransportOptions::name
  std::string worker_address;  // ucp_worker_get_address bytes (opaque)
  std::vector<RegionInfo> regions;
};

// Layout: magic "TXUC", version, name, address, regions, then an FNV-1a-64 checksum of everything
// before it (so accidental corruption is caught before the address reaches UCX).
std::string EncodeDescriptor(const Descriptor& descriptor);
absl::StatusOr<Descriptor> DecodeDescriptor(absl::string_view bytes);

// Active message ids registered on every worker.
enum AmId : unsigned {
  kAmHello = 1,     // sender -> receiver: open a connection (payload: name + worker address)
  kAmHelloAck = 2,  // receiver -> sender (over the receiver's back endpoint)
  kAmData = 3,      // sender -> receiver: one segment (payload: its bytes)
  kAmAck = 4,       // receiver -> sender: one segment's outcome (payload: error message)
  kAmBye = 5,       // either way: the connection is closed by its sender
};

struct HelloHeader {
  uint64_t peer_id = 0;  // the sender's PeerId; echoed in HelloAck and Bye
  uint32_t name_length = 0;
  uint32_t address_length = 0;
};
struct HelloAckHeader {
  uint64_t peer_id = 0;     // as in Hello
  uint64_t inbound_id = 0;  // the receiver's id for this connection; carried by every Data
};
struct DataHeader {
  uint64_t inbound_id = 0;
  uint64_t transfer_id = 0;
  uint64_t segment_index = 0;
  uint64_t region = 0;  // the receiver's region
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t tag = 0;
};
struct AckHeader {
  uint64_t transfer_id = 0;
  uint64_t segment_index = 0;
  int32_t code = 0;  // absl::StatusCode; the payload is the message when not OK
};
struct ByeHeader {
  uint64_t id = 0;  // inbound_id when sent to the receiver, peer_id when sent to the sender
  uint32_t to_receiver = 0;  // 1: sender -> receiver; 0: receiver -> sender
};

// Fixed-size encodings; Decode* is kInvalidArgument when the size is wrong.
std::string EncodeHello(const HelloHeader& h);
absl::StatusOr<HelloHeader> DecodeHello(absl::string_view bytes);
std::string EncodeHelloAck(const HelloAckHeader& h);
absl::StatusOr<HelloAckHeader> DecodeHelloAck(absl::string_view bytes);
std::string EncodeData(const DataHeader& h);
absl::StatusOr<DataHeader> DecodeData(absl::string_view bytes);
std::string EncodeAck(const AckHeader& h);
absl::StatusOr<AckHeader> DecodeAck(absl::string_view bytes);
std::string EncodeBye(const ByeHeader& h);
absl::StatusOr<ByeHeader> DecodeBye(absl::string_view bytes);

}  // namespace tessera::kvtransfer::ucx_wire
