// KV migration for a replica of several ranks (TP x PP). Every rank has its own KV cache, KvPort
// and transport; the leader's ReplicaKvPort is the KvEndpoint the engine uses: it does each
// operation on its own port and, through the ReplicaExecutor (on the replica's communicator), on
// every follower's — where a FollowerKvHandler runs it. Most commands are posted
// (ReplicaExecutor::Post): they ride with the next step and their replies come back with its
// tokens, so a multi-stage replica keeps its steps in flight. Only the layout exchange at start-up
// is called between steps (ReplicaExecutor::CallFollowers, after the steps in flight).
//
//   ReserveAsync, CommitAsync: this rank at once, the followers with the next step; the answer
//     once all have answered. A reservation refused anywhere is undone everywhere; Commit hands
//     each rank the checksums that name it.
//   AbortAsync: this rank at once, the followers with the next step; the answer once all have
//     answered. Preconnect: this rank at once, the followers with the next step (their failures
//     are logged).
//   Export: every rank starts sending its slice (the block ids are the replica's, the same on
//     every rank). The leader's KvExport is done when its own transfers and every follower's are;
//     once its own are, it posts a poll whenever the last one has come back, and the followers
//     hand over their checksums once done. A follower that could not start reports it then.
//     Cancel is posted too: each follower stops reading the blocks before it runs any later
//     step, so the engine may hand them out again at once. Its Wait with a timeout sends the
//     posted polls itself (ReplicaExecutor::FlushPosted), draining the steps in flight: it is for
//     callers that run no steps (tests, tools); the engine polls Done() instead.
//   StreamLayers: before the step, every rank opens a layer stream of its slice; during the step
//     each rank's ShardWorker reports the layers it writes to its own stream (the leader's through
//     the executor's callback, a follower's through its FollowerKvHandler), so every rank sends
//     each layer as soon as it has it; after the step each rank finishes its stream and the
//     leader's export is polled as Export's.
//   Preconnect: the leader connects at once; followers on a thread of their own.
//   counters: bytes and transfers summed over the ranks (followers as of their last reply);
//     commits, checksum failures and open reservations counted once per replica.
//
// Thread-safety: every ReplicaKvPort method may be called from any thread (the executor
// serialises the exchanges with steps); FollowerKvHandler runs on its follower's thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "parallel/shard_plan.h"
#include "worker/kv_port.h"
#include "worker/kv_preconnector.h"
#include "worker/replica.h"

namespace tessera::worker {

// The KvPort options of the rank `plan` describes: its first global layer and KV head, and
// whether it sends (of the ranks that hold a replicated KV head, only the first does).
// `model_kv_heads`: the model's number of KV heads.
KvPortOptions KvPortOptionsFor(const parallel::ShardPlan& plan, int64_t model_kv_heads);

class ReplicaKvPort final : public KvEndpoint {
 public:
  // Collects the followers' layouts (each follower must run RunFollower with a
  // FollowerKvHandler). `local` is rank 0's port; it and `executor` must outlive the port.
  static absl::StatusOr<std::unique_ptr<ReplicaKvPort>> Create(KvPort& local,
                                                               ReplicaExecutor& executor);

  std::vector<KvRankLayout> layouts() const override { return layouts_; }
  KvPortCounters counters() const override;
  absl::Status Preconnect(const std::string& descriptor) override;
  absl::StatusOr<std::unique_ptr<KvExport>> Export(absl::Span<const int32_t> blocks,
                                                   const KvDestination& destination) override;
  absl::StatusOr<std::unique_ptr<KvLayerStream>> StreamLayers(
      absl::Span<const int32_t> blocks, const KvDestination& destination) override;
  void AbortAsync(uint64_t token, Done done) override;
  // This rank at once, the followers with the next step (ReplicaExecutor::Post); `done` once all
  // have answered. A reservation refused anywhere is undone everywhere.
  void ReserveAsync(uint64_t token, absl::Span<const int32_t> blocks, Done done) override;
  void CommitAsync(uint64_t token, absl::Span<const KvSegmentChecksum> checksums,
                   Done done) override;

  // Waits for the replies of the commands it posted (ReplicaExecutor::Quiesce).
  ~ReplicaKvPort() override;

  // One follower's answer: its status and what follows it.
  struct Reply {
    absl::Status status;
    std::vector<int64_t> payload;
  };

 private:
  friend class ReplicaKvExport;
  friend class ReplicaLayerStream;
  ReplicaKvPort(KvPort& local, ReplicaExecutor& executor) : local_(local), executor_(executor) {}
  // Runs `command` on every follower: one Reply per follower (rank 1 first), or the channel's
  // error. Records the counters each reply carries.
  absl::StatusOr<std::vector<Reply>> Call(const std::vector<int64_t>& command);
  // As Call, without waiting: `done` (may be null) gets the replies when they come
  // (ReplicaExecutor::Post).
  void Post(std::vector<int64_t> command,
            std::function<void(absl::StatusOr<std::vector<Reply>>)> done);
  // The followers' raw replies as Replies; records their counters.
  std::vector<Reply> ParseReplies(const std::vector<std::vector<int64_t>>& words);
  // kDataLoss (counted) when a checksum names a rank the replica does not have.
  absl::Status CheckChecksumRanks(uint64_t token, absl::Span<const KvSegmentChecksum> checksums);
  void CountCommit(const absl::Status& status);  // commits_ or checksum_failures_
  void ExportEnded(absl::Duration took);         // send_seconds
  uint64_t NextExportId();
  // What an export's posted commands (its start, its polls) bring back (defined in the .cc).
  struct ExportInbox;
  // An export or stream started on every rank: its id, this rank's part, the followers' count,
  // and where the followers' replies arrive.
  template <typename T>
  struct Started {
    uint64_t id = 0;
    T local;
    int followers = 0;
    std::shared_ptr<ExportInbox> inbox;
  };
  // Posts command `op` (an export or a stream) of a new id to every follower (each starts with
  // the next step, and whether it could comes back to the inbox), then runs `start_local` on this
  // rank; when that fails, the followers' part is cancelled.
  template <typename T>
  absl::StatusOr<Started<T>> StartEverywhere(int64_t op, absl::Span<const int32_t> blocks,
                                             const KvDestination& destination,
                                             const std::function<absl::StatusOr<T>()>& start_local);
  // Cancels export `id` on the followers (unknown ids are ignored), posted; errors are logged.
  void CancelFollowers(uint64_t id);

  KvPort& local_;
  ReplicaExecutor& executor_;
  std::vector<KvRankLayout> layouts_;  // fixed after Create

  mutable absl::Mutex mu_;
  uint64_t next_export_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<KvPortCounters> follower_counters_ ABSL_GUARDED_BY(mu_);  // as of their last reply
  int64_t commits_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t checksum_failures_ ABSL_GUARDED_BY(mu_) = 0;
  double send_seconds_ ABSL_GUARDED_BY(mu_) = 0;
};

// A follower's side: runs the leader's KV commands on this rank's port. Pass
// `[&h](const auto& c) { return h.Handle(c); }` to RunFollower. `replica_rank` is this rank's
// index in the replica (and in a reservation's KvDestination::ranks). Given the rank's `worker`,
// it hears of each layer the worker's steps write and streams the layers of the sends the leader
// opened (without it, those layers go out after the step).
class FollowerKvHandler final : public KvLayerObserver {
 public:
  FollowerKvHandler(KvPort& port, int replica_rank, ShardWorker* worker = nullptr);
  // Cancels the exports still running (each waits until memory is unread).
  ~FollowerKvHandler() override;
  std::vector<int64_t> Handle(const std::vector<int64_t>& command);

  // KvLayerObserver, on the follower's thread.
  bool Wants() const override { return !streams_.empty(); }
  void LayerWritten(int32_t layer) override;
  void StepEnded() override;  // the step's streams become exports

 private:
  // Finishes stream `id` into exports_ (or failed_).
  void FinishStream(uint64_t id);

  KvPort& port_;
  const int rank_;
  ShardWorker* const worker_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<KvLayerStream>> streams_;  // open for a step
  absl::flat_hash_map<uint64_t, std::unique_ptr<KvExport>> exports_;
  absl::flat_hash_map<uint64_t, absl::Status> failed_;  // streams that could not finish
  KvPreconnector preconnector_;
};

}  // namespace tessera::worker
