// GrpcTransport: kvtransfer::Transport over gRPC streaming (tessera.v1.KvTransfer, see
// proto/tessera/v1/kvtransfer.proto); always available, works across hosts, no RDMA.
//
// Each transport runs a gRPC server on GrpcTransportOptions::listen_address (port 0 picks a free
// port); its descriptor carries the reachable host:port and its regions with their lengths.
// Connect opens a channel and waits (connect_timeout) until it is connected. Each Submit opens one
// bidirectional stream on the peer's channel; the sender coalesces the segments into messages of
// up to max_message_bytes (a longer segment is split into consecutive pieces) and the receiver
// validates every segment against its regions, asks its WriteListener to Admit it (once per
// segment), copies it, reports it Written, and acknowledges cumulatively. The Transfer is OK when
// the receiver ended the stream OK, i.e. after every byte landed.
//
// Errors on the sender: those of the Transport contract; the receiver's refusal arrives with the
// listener's code; a peer that went away, or that neither acknowledges nor accepts data for
// peer_timeout, fails the transfer with kUnavailable.
//
// Threads: every method may be called from any thread. Only gRPC's synchronous API is used (its
// callback API is not: gRPC 1.51 shares one callback completion queue among all callback servers
// and channels and races when they come and go). Each incoming stream runs on a thread of the
// server's pool; each outgoing transfer runs on a thread of the transport's WorkerPool (which
// writes; for a long transfer a second pool thread reads the acknowledgements). The pool reuses
// idle threads and starts one when none is idle, so transfers never queue behind each other. A
// Transfer handle's destructor cancels and waits until its transfer is done. One watchdog thread
// per transport enforces peer_timeout by cancelling the call, which ends every blocking stream
// operation at once. The destructor stops the server (cancelling incoming streams), cancels
// outgoing transfers, waits for them and joins the pool's threads, all bounded.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kvtransfer/transport.h"

namespace tessera::kvtransfer {

struct GrpcTransportOptions {
  // Where the server listens; "127.0.0.1:0" picks a free loopback port (read back with port()).
  std::string listen_address = "127.0.0.1:0";
  // The host that peers dial (written into the descriptor). Empty: the host of listen_address,
  // with a wildcard host (0.0.0.0, [::]) replaced by 127.0.0.1 — set it for multi-host use.
  std::string advertise_host;
  // Largest message payload: segments are coalesced (and long ones split) into messages of at
  // most this many data bytes. gRPC's max message sizes are set to this plus framing slack.
  size_t max_message_bytes = size_t{4} << 20;
};

class GrpcTransport final : public Transport {
 public:
  // kUnavailable when the address cannot be bound; kInvalidArgument for max_message_bytes 0.
  static absl::StatusOr<std::unique_ptr<GrpcTransport>> Create(
      const TransportOptions& options, const GrpcTransportOptions& grpc_options = {});
  ~GrpcTransport() override;

  GrpcTransport(const GrpcTransport&) = delete;
  GrpcTransport& operator=(const GrpcTransport&) = delete;

  // The bound port of this transport's server.
  int port() const;

  absl::string_view kind() const override { return "grpc"; }
  absl::StatusOr<RegionId> RegisterMemory(void* base, size_t length) override;
  absl::Status DeregisterMemory(RegionId region) override;
  absl::StatusOr<std::string> LocalDescriptor() override;
  absl::StatusOr<PeerId> Connect(absl::string_view descriptor) override;
  absl::Status Disconnect(PeerId peer) override;
  absl::StatusOr<std::unique_ptr<Transfer>> Submit(PeerId peer,
                                                   absl::Span<const Segment> segments) override;
  void SetWriteListener(WriteListener* listener) override;

 private:
  class Impl;
  explicit GrpcTransport(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::kvtransfer
