// DisaggregatedCall: one request served by a prefill replica P and a decode replica D, seen by the
// coordinator's stream as one ReplicaCall (docs/decisions/0008-disaggregation.md).
//
// Flow: the router picks D among the live decode replicas (free blocks, load, cached prefix — D's
// cached prefix is not sent) and P among the prefill replicas (load, cached prefix); D reserves
// blocks (ReplicaClient::ReserveKv); P prefills, sends the KV into them and returns the first
// token, which goes to the client at once; D verifies the KV and continues; its tokens follow.
//
// Recovery, so that a client sees each token exactly once:
//  - before the first token, any retryable failure (a replica refuses or is lost, a transfer fails
//    or is refused, D finds the KV damaged) releases what was reserved and starts again on other
//    replicas;
//  - after tokens were sent, a lost or failing D is replaced: the prompt plus every token already
//    sent is prefilled again on a P and decoding continues on another D.
// Only when no replica can continue does the stream end, with kUnavailable ("retry"). Each
// request recovers at most max_recoveries times.
//
// Threads: Next is for the stream's reader thread; Cancel for any thread. The destructor cancels
// and releases a reservation that was not handed over.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/registry.h"
#include "coordinator/replica.h"
#include "coordinator/router.h"

namespace tessera::coordinator {

struct DisaggregationOptions {
  int32_t max_placement_attempts = 3;  // replica pairs tried per placement
  int32_t max_recoveries = 3;          // placements after the first, per request
  absl::Duration poll_interval = absl::Milliseconds(50);
  // Told the reason of each recovery ("prefill_failed", "decode_lost", ...), for metrics.
  std::function<void(const std::string&)> on_recovery;
};

// The live replicas of `role` that are not lost.
std::vector<std::shared_ptr<ReplicaEntry>> Pool(
    const std::vector<std::shared_ptr<ReplicaEntry>>& live, const std::string& role);

class DisaggregatedCall final : public ReplicaCall {
 public:
  // Places the request (reserve on a decode replica, start the prefill). kUnavailable when no
  // pair of replicas takes it; other errors (kInvalidArgument) as a replica returned them.
  static absl::StatusOr<std::unique_ptr<DisaggregatedCall>> Start(ReplicaRegistry& registry,
                                                                  Router& router,
                                                                  ReplicaRequest request,
                                                                  DisaggregationOptions options);
  ~DisaggregatedCall() override;

  absl::StatusOr<ReplicaEvent> Next(absl::Duration timeout) override;
  void Cancel() override;

  // The replicas of the current placement (for logs and tests).
  std::string prefill_name() const;
  std::string decode_name() const;
  int32_t recoveries() const { return recoveries_; }

 private:
  enum class Phase { kPrefill, kDecode, kDone };
  DisaggregatedCall(ReplicaRegistry& registry, Router& router, ReplicaRequest request,
                    DisaggregationOptions options);
  // The request as it continues now: the prompt plus the tokens sent so far.
  ReplicaRequest Continuation() const;
  absl::Status Place();
  // After a failure: place again, or the final event that ends the stream.
  std::optional<ReplicaEvent> Recover(const std::string& reason, const absl::Status& why);
  // The reservation on `decode` this call waits on: the coordinator renews its lease with D's
  // heartbeats until Drop (handed over to D) or Release (given back).
  void Hold(std::shared_ptr<ReplicaEntry> decode, KvReservation reservation);
  void Drop();
  void Release();  // the reservation not handed over, if any
  void Leave();    // drops in-flight counts of the current call's replica
  static bool Retryable(const absl::Status& status);

  ReplicaRegistry& registry_;
  Router& router_;
  const ReplicaRequest request_;
  const DisaggregationOptions options_;
  std::vector<int32_t> sent_;  // tokens given to the client
  std::shared_ptr<ReplicaEntry> prefill_;
  std::shared_ptr<ReplicaEntry> decode_;
  std::unique_ptr<ReplicaCall> call_;
  std::shared_ptr<ReplicaEntry> in_flight_on_;     // the replica counting this request now
  std::optional<RequestTimings> prefill_timings_;  // the last prefill replica's
  std::optional<KvReservation> reservation_;       // reserved on decode_, not yet handed over
  std::vector<const ReplicaEntry*> failed_;
  Phase phase_ = Phase::kPrefill;
  std::optional<ReplicaEvent> pending_end_;  // returned by the next Next
  int32_t recoveries_ = 0;
  std::atomic<bool> cancelled_{false};
};

}  // namespace tessera::coordinator
