// kvtransfer::Transport over UCX active messages (ucp_am_send_nbx): the data plane for real
// fabrics (RDMA verbs, cuda_ipc) that also runs over tcp and shared memory on one host.
//
// Receiver-validated writes: every segment travels as one active message with a header
// {connection, transfer, segment, region, offset, length, tag}. The receiver checks the bounds and
// asks its WriteListener to Admit before any byte lands; a refused segment is dropped and answered
// with the listener's status. Admitted eager data is copied into place; rendezvous data is pulled
// by ucp_am_recv_data_nbx straight into the destination (zero copy where the fabric allows). After
// the bytes land the listener hears Written and the receiver acknowledges the segment; a Transfer
// is OK only when every segment is acknowledged. Plain RMA puts into exposed rkeys are not used on
// purpose: the receiver could not refuse them.
//
// Ownership and threads: one ucp_context and one ucp_worker per transport, owned by its single
// progress thread (UCS_THREAD_MODE_SINGLE); every UCX call runs there. Public methods may be
// called from any thread: they validate on the caller's thread, then post commands to the
// progress thread and wake it (ucp_worker_signal). When idle the thread sleeps on the worker's
// event fd (at most `idle_poll` between checks), so it does not spin a core.
//
// Errors: as documented in kvtransfer/transport.h. UCX status codes are converted by
// UcsToStatus (kvtransfer/ucx/ucx_status.h). A peer that reports an endpoint error, says Bye
// (its transport was destroyed) or leaves a transfer without progress for peer_timeout fails the
// transfers to it with kUnavailable.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "kvtransfer/transport.h"

namespace tessera::kvtransfer {

struct UcxTransportOptions {
  TransportOptions base;
  // Segments of one transfer sent and not yet acknowledged at any time (flow control, and what
  // Cancel can still stop).
  int max_inflight_segments = 32;
  // Bytes of one transfer in flight (at least one segment is always allowed).
  uint64_t max_inflight_bytes = 64ull << 20;
  // Longest sleep of the idle progress thread between two looks at its queues and deadlines.
  absl::Duration idle_poll = absl::Milliseconds(50);
  // How long the destructor waits for endpoints to flush their goodbyes before tearing down.
  absl::Duration close_timeout = absl::Seconds(1);
  // How long a caller waits for the progress thread to run a command (register, deregister).
  absl::Duration command_timeout = absl::Seconds(10);
};

// Create() initialises UCX (ucp_init, ucp_worker_create) and starts the progress thread;
// kUnavailable (or the converted UCX code) when UCX cannot start, kInvalidArgument for bad
// options. The transport owns its UCX objects and thread; destruction cancels running transfers,
// lets receives in flight finish (at most peer_timeout), says goodbye to connected peers and joins
// the thread (each step bounded by close_timeout). Should UCX still hold requests after that, the
// worker and context are leaked (logged) rather than destroyed: UCX would abort the process.
class UcxTransport : public Transport {
 public:
  static absl::StatusOr<std::unique_ptr<UcxTransport>> Create(const UcxTransportOptions& options);

  absl::string_view kind() const override { return "ucx"; }

 protected:
  UcxTransport() = default;
};

}  // namespace tessera::kvtransfer
