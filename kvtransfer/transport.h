// kvtransfer::Transport moves bytes from registered memory of this process into registered memory
// of a peer process: the data plane of KV-cache migration (prefill replica P → decode replica D).
// Control messages (who sends which blocks where) never go through a Transport; they go over the
// replicas' gRPC services. Implementations: kvtransfer/inproc (tests; peers in one process),
// kvtransfer/grpc (streaming; always available), kvtransfer/ucx (UCX active messages: zero-copy
// RDMA or cuda_ipc on real fabrics, tcp/shared memory on loopback).
//
// Model. Each side registers the memory it reads from or writes into (RegisterMemory); the
// receiving side's LocalDescriptor() is an opaque blob (its address and its regions) that the
// sending side passes to Connect. A transfer is a gather/scatter list of Segments, each a copy of
// `length` bytes from (local region, offset) to (remote region, offset). Submit starts it and
// returns a Transfer to Poll, Wait or Cancel.
//
// Receiver-validated writes. Every segment carries a 64-bit `tag` (the KV layer puts the
// transfer's token there). Before a segment's bytes land, the receiving transport asks its
// WriteListener (SetWriteListener) to Admit the write; a refused write never touches the region
// and fails the sender's transfer with the listener's status (kPermissionDenied, typically).
// After the bytes land, the listener hears Written. So a late write from an aborted transfer into
// a block that was released and reused is refused by the receiver instead of corrupting it — the
// guarantee the KV layer's per-transfer tokens and block generations rest on. Without a listener
// every in-bounds write is admitted.
//
// Completion. A Transfer is kOk only when every segment has landed in the peer's memory and the
// peer's listener has been told (Written returned). An error leaves the remote bytes of the
// failed segments undefined (the receiver must not use them: the KV layer verifies checksums
// before it commits); segments of one transfer may land in any order.
//
// Errors (on the sender): kInvalidArgument for a segment outside a registered region (local, or
// remote as the descriptor describes it), an unknown peer or region; kUnavailable when the peer
// is unreachable or the connection dropped (retryable); kPermissionDenied (or what the listener
// returned) for a refused write; kDataLoss for bytes that arrived damaged where the transport can
// tell; kCancelled after Cancel; kDeadlineExceeded from Wait when the transfer is still running.
//
// Ownership and lifetime. Registered memory must stay valid until DeregisterMemory or the
// transport's destruction. A Transfer must not outlive its Transport; destroying a Transfer
// cancels it and returns only when the transport no longer reads its local memory (bounded:
// implementations give up on a peer after their own timeouts). DeregisterMemory of a region that
// a running transfer uses is kFailedPrecondition.
//
// Threads. Every method of Transport and Transfer may be called from any thread. The listener is
// called on a transport thread; it must not block for long nor call back into the transport.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace tessera::kvtransfer {

// Ids are assigned by the transport that owns them, unique for its lifetime, never 0.
using RegionId = uint64_t;  // a region registered on this transport (local) or on the peer (remote)
using PeerId = uint64_t;    // a connection made by Connect

struct Segment {
  RegionId local_region = 0;
  uint64_t local_offset = 0;
  RegionId remote_region = 0;  // as the peer's descriptor names it
  uint64_t remote_offset = 0;
  uint64_t length = 0;  // > 0
  uint64_t tag = 0;     // handed to the receiver's WriteListener
};

// What the receiver is told about one incoming segment. `peer_name` is the sender's
// TransportOptions::name (for logs and checks; not authenticated by the transport).
struct WriteInfo {
  RegionId region = 0;  // the receiver's own region id
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t tag = 0;
  std::string peer_name;
};

class WriteListener {
 public:
  virtual ~WriteListener() = default;
  // OK lets the bytes land; any other status refuses them and is reported to the sender.
  virtual absl::Status Admit(const WriteInfo& write) = 0;
  // The admitted bytes are in place.
  virtual void Written(const WriteInfo& write) = 0;
  // The admitted bytes will not all land (the sender cancelled or vanished mid-segment, the
  // fabric failed): the transport no longer touches the destination, whose bytes are undefined.
  // Every OK Admit is followed by exactly one Written or NotWritten, so that a receiver counting
  // writes in flight can tell when its memory is quiet.
  virtual void NotWritten(const WriteInfo& write, const absl::Status& why) = 0;
};

class Transfer {
 public:
  // Cancels if still running, and waits (bounded) until local memory is no longer read.
  virtual ~Transfer() = default;
  // Non-blocking poll: whether the transfer has finished (successfully or not).
  virtual bool Done() = 0;
  // The final status once Done(); kDeadlineExceeded (the transfer goes on) when `timeout` passes
  // first. Returns the same final status on every call after it is done.
  virtual absl::Status Wait(absl::Duration timeout) = 0;
  // Asks the transfer to stop; segments not yet sent are dropped. Its final status becomes
  // kCancelled unless it had already finished. Idempotent.
  virtual void Cancel() = 0;
  // Bytes of this transfer that have landed (for progress and metrics).
  virtual uint64_t bytes_done() const = 0;
};

struct TransportOptions {
  std::string name;  // this side's name, shown to peers' listeners and in errors
  // The most a Connect waits for the peer, and the most a silent peer is waited on before a
  // transfer to it fails with kUnavailable.
  absl::Duration connect_timeout = absl::Seconds(10);
  absl::Duration peer_timeout = absl::Seconds(30);
};

class Transport {
 public:
  // Cancels running transfers and closes connections; bounded.
  virtual ~Transport() = default;

  // "inproc", "grpc" or "ucx".
  virtual absl::string_view kind() const = 0;

  // Makes [base, base + length) available as a source of local segments and as a destination of
  // peers' writes. kInvalidArgument for a null base or zero length; kResourceExhausted when the
  // fabric cannot pin more memory. Regions registered after a peer connected are not known to
  // that peer until it connects again with a fresh descriptor.
  virtual absl::StatusOr<RegionId> RegisterMemory(void* base, size_t length) = 0;
  // kNotFound for an unknown id; kFailedPrecondition while a transfer uses it.
  virtual absl::Status DeregisterMemory(RegionId region) = 0;

  // This side's address and regions, for peers' Connect. Opaque; stable until regions change.
  virtual absl::StatusOr<std::string> LocalDescriptor() = 0;

  // Connects to the peer that `descriptor` describes (waiting up to connect_timeout). Connecting
  // again to the same descriptor returns a new PeerId (the old one stays valid).
  // kInvalidArgument for a malformed descriptor, kUnavailable when the peer cannot be reached.
  virtual absl::StatusOr<PeerId> Connect(absl::string_view descriptor) = 0;
  // Fails the peer's running transfers with kCancelled and forgets it. kNotFound when unknown.
  virtual absl::Status Disconnect(PeerId peer) = 0;

  // Starts copying `segments` to `peer`. Validation errors (see the file comment) are returned
  // here, before any byte moves; everything later is reported by the Transfer.
  virtual absl::StatusOr<std::unique_ptr<Transfer>> Submit(PeerId peer,
                                                           absl::Span<const Segment> segments) = 0;

  // Installs the listener for incoming writes (nullptr: admit everything). Not owned; must
  // outlive the transport or be replaced first.
  virtual void SetWriteListener(WriteListener* listener) = 0;
};

}  // namespace tessera::kvtransfer
