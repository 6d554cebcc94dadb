// InProcessTransport: kvtransfer::Transport between transports of one process (tests, and
// single-process setups). Transports that can reach each other share an InProcessFabric, passed
// explicitly at Create: there is no process-wide registry. A transfer is copied with memcpy on the
// sending transport's worker thread, segment by segment (large segments in 1 MiB chunks so that
// Cancel is prompt), asking the receiver's WriteListener to Admit each segment before the copy and
// telling it Written after.
//
// Descriptors name the fabric, the receiving endpoint and its regions with their lengths; Connect
// fails with kInvalidArgument for a malformed one and kUnavailable for one of another fabric or of
// a transport that is gone. A transfer to a transport destroyed meanwhile ends kUnavailable.
//
// Threads: every method may be called from any thread (the Transport contract). The destructor
// cancels queued and running transfers, waits for the copy in progress (bounded by one chunk) and
// for incoming copies into this transport's memory, then returns.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kvtransfer/transport.h"

namespace tessera::kvtransfer {

// The set of InProcessTransports that can connect to each other. Shared (shared_ptr) by the test
// or composition root that creates it and by every transport created on it; thread-safe.
class InProcessFabric {
 public:
  static std::shared_ptr<InProcessFabric> Create();
  ~InProcessFabric();
  InProcessFabric(const InProcessFabric&) = delete;
  InProcessFabric& operator=(const InProcessFabric&) = delete;

  // Internal to InProcessTransport.
  class Impl;
  Impl& impl() { return *impl_; }

 private:
  InProcessFabric();
  std::unique_ptr<Impl> impl_;
};

class InProcessTransport final : public Transport {
 public:
  // kInvalidArgument for a null fabric.
  static absl::StatusOr<std::unique_ptr<InProcessTransport>> Create(
      std::shared_ptr<InProcessFabric> fabric, const TransportOptions& options);
  ~InProcessTransport() override;

  InProcessTransport(const InProcessTransport&) = delete;
  InProcessTransport& operator=(const InProcessTransport&) = delete;

  absl::string_view kind() const override { return "inproc"; }
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
  explicit InProcessTransport(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::kvtransfer
