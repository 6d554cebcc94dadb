// FaultInjectingTransport: a decorator over any kvtransfer::Transport for failure tests. It owns
// the wrapped transport and forwards every call to it, injecting the faults of its FaultPlan:
//
//  - sending side: the Nth Submit fails (returns the error, or returns a Transfer that fails with
//    it); every transfer is delayed; DropConnection(peer) makes later transfers to that peer fail
//    with kUnavailable and aborts the running ones with kUnavailable;
//  - receiving side: the Nth segment that lands gets one byte flipped in the destination (after
//    the inner transport copied it, before the listener hears Written) so that the receiver's
//    checksum has something to catch. The decorator installs its own listener on the inner
//    transport for this and forwards Admit/Written to the one set with SetWriteListener.
//
// Counters (Submits, landed segments) start at 1 and restart at each SetFaultPlan. Thread-safe:
// every method may be called from any thread. Errors: those of the inner transport plus the
// injected ones.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kvtransfer/transport.h"

namespace tessera::kvtransfer {

struct FaultPlan {
  enum class SubmitFailure {
    kReturnError,   // Submit itself returns submit_error
    kFailTransfer,  // Submit returns a Transfer that ends with submit_error (no byte moves)
  };
  // The Nth Submit (1-based) fails; 0: none.
  int fail_submit_at = 0;
  SubmitFailure submit_failure = SubmitFailure::kReturnError;
  absl::Status submit_error = absl::UnavailableError("injected Submit failure");
  // Every transfer reports completion no earlier than this after its Submit.
  absl::Duration transfer_delay = absl::ZeroDuration();
  // Receiving side: the Nth segment to land (1-based) gets the byte in its middle inverted; 0:
  // none.
  int corrupt_write_at = 0;
};

class FaultInjectingTransport final : public Transport {
 public:
  // kInvalidArgument for a null `inner`.
  static absl::StatusOr<std::unique_ptr<FaultInjectingTransport>> Create(
      std::unique_ptr<Transport> inner, FaultPlan plan = {});
  ~FaultInjectingTransport() override;

  FaultInjectingTransport(const FaultInjectingTransport&) = delete;
  FaultInjectingTransport& operator=(const FaultInjectingTransport&) = delete;

  // Replaces the plan and restarts the counters.
  void SetFaultPlan(FaultPlan plan);
  // Later transfers to `peer` fail with kUnavailable; running ones are cancelled and end so.
  void DropConnection(PeerId peer);
  // How many landed segments were corrupted so far.
  int corrupted_writes() const;
  Transport& inner() { return *inner_; }

  absl::string_view kind() const override { return inner_->kind(); }
  absl::StatusOr<RegionId> RegisterMemory(void* base, size_t length) override;
  absl::Status DeregisterMemory(RegionId region) override;
  absl::StatusOr<std::string> LocalDescriptor() override { return inner_->LocalDescriptor(); }
  absl::StatusOr<PeerId> Connect(absl::string_view descriptor) override {
    return inner_->Connect(descriptor);
  }
  absl::Status Disconnect(PeerId peer) override { return inner_->Disconnect(peer); }
  absl::StatusOr<std::unique_ptr<Transfer>> Submit(PeerId peer,
                                                   absl::Span<const Segment> segments) override;
  void SetWriteListener(WriteListener* listener) override;

  class TransferState;  // internal

 private:
  class Hook;
  FaultInjectingTransport(std::unique_ptr<Transport> inner, FaultPlan plan);

  struct Region {
    char* base = nullptr;
    size_t length = 0;
  };

  // Called by the hook on the inner transport's thread.
  absl::Status OnAdmit(const WriteInfo& write);
  void OnWritten(const WriteInfo& write);
  void OnNotWritten(const WriteInfo& write, const absl::Status& why);

  std::unique_ptr<Transport> inner_;
  std::unique_ptr<Hook> hook_;
  mutable absl::Mutex mu_;
  FaultPlan plan_ ABSL_GUARDED_BY(mu_);
  int submits_ ABSL_GUARDED_BY(mu_) = 0;
  int writes_ ABSL_GUARDED_BY(mu_) = 0;
  int corrupted_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<RegionId, Region> regions_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<PeerId> dropped_ ABSL_GUARDED_BY(mu_);
  std::vector<std::weak_ptr<TransferState>> running_ ABSL_GUARDED_BY(mu_);
  absl::Mutex listener_mu_;  // readers: OnAdmit/OnWritten/OnNotWritten; writer: SetWriteListener
  WriteListener* listener_ ABSL_GUARDED_BY(listener_mu_) = nullptr;
};

}  // namespace tessera::kvtransfer
