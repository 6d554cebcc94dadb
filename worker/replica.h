// A replica spread over several ranks (TP x PP): the leader (replica rank 0) plans every step and
// hands the plan to its followers; every rank runs its shard of the forward pass (TP all-reduces
// and PP sends happen inside LlamaModel); the last stage samples and its TP rank 0 sends the
// tokens back to the leader.
//
//   leader:    ReplicaExecutor (a StepExecutor for the scheduler) -> ShardWorker
//   followers: RunFollower(ShardWorker) until the leader stops the replica
//
// Messages (plans, keep-alives, commands, stop) travel with the data, along the pipeline: the
// leader broadcasts each over the first stage's TP group, and every rank of a stage that is not
// the last passes it to the rank of the next stage with the same TP rank (over the PP group) —
// a step's plan right before the step's activations, anything else at once. So no stage waits
// for a later one to take the next plan, and a pipelining leader (max_steps_in_flight > 1) can
// start step n+1 on the first stage while later stages still run step n. Every wait is bounded
// by the communicators' timeouts: a follower idles at most that long, so a leader with no work
// sends a keep-alive more often than that — Idle() does it.
//
// Commands for the followers' FollowerHandlers (KV migration: worker/replica_kv.h) go two ways:
//   - posted (ReplicaExecutor::Post): a command rides in the next step's message. Every follower
//     runs it before that step's forward pass and appends its reply to the message it passes down
//     the pipeline; the last stage's TP ranks gather the replies to the rank that sends the
//     tokens, which sends them with the step's tokens. Steps in flight are never waited for.
//   - called (ReplicaExecutor::CallFollowers): a message between steps, sent once every step in
//     flight has come back (a pipeline drain); each follower replies to the leader directly.
// Either way each follower runs the commands in the order the leader posted or called them.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/weights.h"
#include "parallel/comm/communicator.h"
#include "parallel/shard_plan.h"
#include "worker/kv_cache.h"
#include "worker/llama_model.h"
#include "worker/local_executor.h"
#include "worker/replica_wire.h"
#include "worker/step.h"
#include "worker/vocab_parallel.h"

namespace tessera::worker {

// Told by a ShardWorker, on its rank's thread, as a step writes each layer's KV (layer-wise KV
// streaming). Wants() is asked before every step: false spares the step the per-layer
// synchronisation. StepEnded follows every step that wanted layers.
class KvLayerObserver {
 public:
  virtual ~KvLayerObserver() = default;
  virtual bool Wants() const = 0;
  virtual void LayerWritten(int32_t layer) = 0;  // the model's (global) layer index
  virtual void StepEnded() {}
};

// The host (CPU) communicators of a rank's TP and PP groups, which carry the leader's messages
// along the pipeline; null where the group has one rank (the model's TP/PP groups may be NCCL
// communicators made over them).
struct ShardHostGroups {
  parallel::Communicator* tp = nullptr;
  parallel::Communicator* pp = nullptr;
};

// This rank's part of a replica: its model shard, its KV cache and, on the last stage, a sampler.
// `replica` is the communicator of all ranks of the replica (rank = ShardPlan::ReplicaRank); it
// carries plans and tokens in host memory, so it is a CPU communicator (MPI or in-process) even
// when the TP/PP groups are NCCL.
class ShardWorker {
 public:
  // Everything referenced must outlive the worker.
  // With pipeline stages, each step runs as up to `micro_batches` micro-batches of whole
  // sequences, so that stage s+1 works on micro-batch i while stage s works on i+1 (GPipe within
  // a step: the idle share of a stage falls from (P-1)/P to (P-1)/(M+P-1)). Every rank of the
  // replica must use the same value.
  static absl::StatusOr<std::unique_ptr<ShardWorker>> Create(LlamaModel& model, KvCache& cache,
                                                             kernels::Backend& backend,
                                                             parallel::Communicator& replica,
                                                             int micro_batches = 1,
                                                             ShardHostGroups host = {});
  // Runs one step on this rank. On a stage that is not the last, `before_send` (null: none) runs
  // once, after the stage's layers of its first micro-batch and before its activations go to the
  // next stage. The last stage's TP rank 0 sends the tokens to the leader when that is another
  // rank; the leader gets them from ReceiveResult then, and RunStep returns them only when the
  // leader samples itself (no pipeline). Elsewhere an empty result.
  // `replies` is non-null on every rank when posted commands ride with the step: this rank's
  // reply section (AppendReplyEntry: the replies of the ranks upstream and its own). The last
  // stage's TP ranks gather theirs to TP rank 0, which sends the section with the tokens, or, on
  // the leader, leaves the whole section in `replies`.
  absl::StatusOr<StepResult> RunStep(const StepPlan& plan,
                                     const std::function<absl::Status()>& before_send = nullptr,
                                     std::vector<int64_t>* replies = nullptr);
  // Whether the leader's tokens come from another rank (the last stage), through ReceiveResult.
  bool result_from_last_stage() const;
  // The leader: receives the tokens of the oldest step the last stage still owes, one that had
  // `rows` logits rows, and, when `replies` is non-null, the reply section of the commands that
  // rode with it.
  absl::StatusOr<StepResult> ReceiveResult(int64_t rows, std::vector<int64_t>* replies = nullptr);

  // The message route (see the top of this file). The leader hands a message to the first
  // stage's other TP ranks (a no-op without TP); every rank passes a message on to the next stage
  // (a no-op on the last); followers receive the next message from where it comes to them.
  absl::Status SendToFirstStage(std::vector<int64_t>& words);
  absl::Status PassDownstream(const std::vector<int64_t>& words);
  absl::Status ReceiveMessage(std::vector<int64_t>& words);

  // Reports the layers each step writes to `observer` (null: none). With pipeline micro-batches a
  // layer is written once per micro-batch, so the layers are reported after the whole step.
  void SetKvLayerObserver(KvLayerObserver* observer) { observer_ = observer; }

  bool is_leader() const { return replica_.rank() == 0; }
  int pipeline_stages() const { return model_.plan().pp_size; }
  ExecutorLimits limits() const;
  parallel::Communicator& replica() { return replica_; }

 private:
  ShardWorker(LlamaModel& model, KvCache& cache, parallel::Communicator& replica, int micro_batches,
              ShardHostGroups host)
      : model_(model),
        cache_(cache),
        replica_(replica),
        micro_batches_(micro_batches),
        host_(host) {}
  // Forward and, on the last stage, sampling of one (micro-)batch; `observer` hears of each layer.
  absl::StatusOr<StepResult> ForwardAndSample(const StepPlan& plan, KvLayerObserver* observer,
                                              const std::function<absl::Status()>& before_send);
  // The last stage's TP rank 0 sends a step's tokens (rows > 0) and reply section (non-null) to
  // the leader.
  absl::Status SendResult(const StepResult& result, int64_t rows,
                          const std::vector<int64_t>* replies);
  // The last stage: TP ranks other than 0 send their reply sections to TP rank 0, which appends
  // them to its own.
  absl::Status GatherReplies(std::vector<int64_t>& replies);
  absl::Status SendTokens(const StepResult& result, int64_t rows);
  absl::StatusOr<StepResult> ReceiveTokens(int64_t rows, int sender);

  LlamaModel& model_;
  KvCache& cache_;
  parallel::Communicator& replica_;
  const int micro_batches_;
  const ShardHostGroups host_;
  std::unique_ptr<Stream> stream_;
  std::unique_ptr<DeviceSampler> sampler_;               // last stage only
  std::unique_ptr<VocabParallelSampler> vocab_sampler_;  // last stage under TP only
  KvLayerObserver* observer_ = nullptr;
};

// What a follower does with a command from the leader (ReplicaExecutor::CallFollowers and Post):
// the command's words in, the reply's words out.
using FollowerHandler = std::function<std::vector<int64_t>(const std::vector<int64_t>& command)>;

// The followers' replies to one command, in replica rank order (rank 1 first), or the error that
// kept them from coming.
using FollowerReplies = absl::StatusOr<std::vector<std::vector<int64_t>>>;
using PostedReplyHandler = std::function<void(FollowerReplies replies)>;

struct ReplicaExecutorOptions {
  // Keep-alives go out at most this often (of the clock's monotonic time); keep it well under the
  // replica communicators' timeout.
  absl::Duration keepalive_interval = absl::Seconds(1);
  // Steps in flight at once (StepExecutor::max_steps_in_flight), 1 to the number of pipeline
  // stages: with P stages and P steps in flight every stage works on a step of its own during
  // decode. More than P could deadlock the pipeline's blocking sends, so it is refused.
  int max_steps_in_flight = 1;
};

// The leader's executor: sends each plan down the pipeline, runs its own shard, returns the
// tokens. Thread-safe: steps, keep-alives and follower commands are serialised on the channel.
class ReplicaExecutor final : public StepExecutor {
 public:
  // `worker` must be the leader's (replica rank 0) and outlive the executor. kInvalidArgument for
  // a max_steps_in_flight out of range.
  static absl::StatusOr<std::unique_ptr<ReplicaExecutor>> Create(
      ShardWorker& worker, const ReplicaExecutorOptions& options = {},
      Clock& clock = RealClock::Get());
  // Stops the followers if Stop() was not called (errors are logged).
  ~ReplicaExecutor() override;

  // kFailedPrecondition while Submit-ted steps are not collected.
  absl::StatusOr<StepResult> Execute(const StepPlan& plan) override;
  int max_steps_in_flight() const override { return max_steps_in_flight_; }
  // Broadcasts the plan to the first stage and runs the leader's shard; with a pipeline the plan
  // goes on to the next stage before the activations, after receiving the tokens of the oldest
  // step in flight when max_steps_in_flight would otherwise be exceeded.
  absl::Status Submit(const StepPlan& plan) override;
  absl::StatusOr<StepResult> Collect() override;
  ExecutorLimits limits() const override { return worker_.limits(); }
  // The leader's own layers; followers report theirs to their FollowerKvHandler.
  bool SetKvWrittenCallback(std::function<void(int32_t layer)> kv_written) override;

  // A keep-alive for idle followers (an empty plan), unless a step or keep-alive went out within
  // the interval.
  absl::Status Idle() override;
  // Tells the followers to return from RunFollower. Idempotent.
  absl::Status Stop();

  // Runs `command` on every follower (its FollowerHandler) between steps and returns their
  // replies, followers in replica rank order (rank 1 first). Commands posted before it go first.
  // Waits for every step in flight (a pipeline drain). kFailedPrecondition after Stop; a
  // communicator error leaves the replica unusable (every later call fails with it).
  FollowerReplies CallFollowers(const std::vector<int64_t>& command);
  // Runs `command` on every follower without waiting for the steps in flight: it rides with the
  // next step submitted (each follower runs it before that step's forward pass, and the replies
  // come back with the step's tokens), or goes between steps at the next Idle, FlushPosted, Stop
  // or CallFollowers when no step goes first. `done` (may be null) gets the replies, outside the
  // executor's lock, on the thread of the call that received them; after Stop or a channel error
  // it gets the error (at once when posted then).
  void Post(std::vector<int64_t> command, PostedReplyHandler done);
  // Sends the posted commands that no step took between steps now, and hands out their replies.
  absl::Status FlushPosted();
  // Receives every step in flight and flushes the posted commands: every handler has run when it
  // returns (what the handlers refer to may go then). kFailedPrecondition after Stop, which did
  // the same.
  absl::Status Quiesce();
  int64_t pipeline_drains() const override;
  int size() const { return worker_.replica().size(); }

 private:
  ReplicaExecutor(ShardWorker& worker, const ReplicaExecutorOptions& options, Clock& clock)
      : worker_(worker),
        keepalive_interval_(options.keepalive_interval),
        max_steps_in_flight_(options.max_steps_in_flight),
        clock_(clock) {}
  // kFailedPrecondition after Stop, the first communicator error after one.
  absl::Status UsableLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  struct Posted {
    std::vector<int64_t> command;
    PostedReplyHandler done;
  };
  // A submitted step whose tokens the last stage still owes.
  struct Downstream {
    int64_t rows = 0;                        // its logits rows
    std::vector<PostedReplyHandler> posted;  // the commands that rode with it
  };
  // Moves the oldest step the last stage owes into ready_ (its tokens received).
  absl::Status ReceiveOldestLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A message that is not a step: every step in flight is received first (followers answer
  // commands only between steps), then it goes to every follower.
  absl::Status SendMessageLocked(std::vector<int64_t>& words) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends the posted commands and `command` (when non-null) between steps and receives every
  // follower's replies: the posted ones are handed out, `command`'s are returned.
  FollowerReplies CallLocked(const std::vector<int64_t>* command)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Empties posted_: the handlers, and the commands into `commands` (when non-null).
  std::vector<PostedReplyHandler> TakePostedLocked(std::vector<std::vector<int64_t>>* commands)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks the channel broken by `status` and hands it to every handler still waiting.
  absl::Status BreakLocked(absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues each of `posted`'s handlers with its command's replies (the first posted.size() of
  // `replies`: replies[command][follower]) or the error.
  using CommandReplies = std::vector<std::vector<std::vector<int64_t>>>;
  void HandOutLocked(std::vector<PostedReplyHandler>& posted,
                     absl::StatusOr<CommandReplies>& replies) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues the replies (a reply section, or an error) of the commands `posted` for the handlers.
  void FinishPostedLocked(std::vector<PostedReplyHandler> posted,
                          const absl::StatusOr<std::vector<int64_t>>& section)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs the handlers whose replies came, outside mu_ (every public method ends with it).
  void RunFinished() ABSL_LOCKS_EXCLUDED(mu_);
  class FinishedRunner;
  // Hands the leader's layers to the engine's callback.
  class CallbackObserver final : public KvLayerObserver {
   public:
    bool Wants() const override { return static_cast<bool>(kv_written); }
    void LayerWritten(int32_t layer) override { kv_written(layer); }
    std::function<void(int32_t)> kv_written;
  };

  ShardWorker& worker_;
  CallbackObserver observer_;
  const absl::Duration keepalive_interval_;
  const int max_steps_in_flight_;
  Clock& clock_;
  mutable absl::Mutex mu_;  // the channel: one exchange with the followers at a time
  // The submitted steps whose tokens the last stage still owes, oldest first.
  std::deque<Downstream> downstream_ ABSL_GUARDED_BY(mu_);
  // Posted commands that no message has taken yet.
  std::vector<Posted> posted_ ABSL_GUARDED_BY(mu_);
  // Handlers and their replies, for RunFinished.
  std::vector<std::pair<PostedReplyHandler, FollowerReplies>> finished_ ABSL_GUARDED_BY(mu_);
  int64_t drains_ ABSL_GUARDED_BY(mu_) = 0;
  // Results of submitted steps not yet collected that are here already (older than downstream_).
  std::deque<StepResult> ready_ ABSL_GUARDED_BY(mu_);
  absl::Time last_sent_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status broken_ ABSL_GUARDED_BY(mu_);  // a channel error: followers are out of step
};

// A follower's loop: receives plans from the leader and runs them until told to stop (OK) or a
// communicator fails (its error). Commands go to `handler`; without one they are answered with
// an empty reply.
absl::Status RunFollower(ShardWorker& worker, const FollowerHandler& handler = nullptr);

// Makes a TP or PP group's data-plane communicator from the host communicator split for that
// group (every rank of the group calls it, collectively). GPU replicas return NCCL communicators
// on `backend`'s device; the host groups stay alive beside them.
using DeviceGroupFactory = std::function<absl::StatusOr<std::unique_ptr<parallel::Communicator>>(
    parallel::Communicator& host_group, kernels::Backend& backend)>;

struct ReplicaRankOptions {
  parallel::ParallelConfig parallel;
  // Null: the host groups carry the TP/PP data themselves (the CPU backend).
  DeviceGroupFactory device_groups;
  int pp_micro_batches = 0;  // 0: 1 (see docs/parallelism.md for when more pays)
  // For the leader's ReplicaExecutorOptions::max_steps_in_flight (1 to pp_size, checked here).
  int pp_steps_in_flight = 1;
  LlamaModelOptions model;
  int32_t num_kv_blocks = 0;
  int32_t block_size = 16;
  DataType kv_cache_dtype = DataType::kF32;
};

// Everything one rank of a replica holds, declared so that it is destroyed in a safe order.
struct ReplicaRank {
  // The groups split from the replica's host communicator (null when that size is 1), then, with
  // ReplicaRankOptions::device_groups, the data-plane groups made over them (else null: the model
  // uses the host groups).
  std::unique_ptr<parallel::Communicator> tp_host;
  std::unique_ptr<parallel::Communicator> pp_host;
  std::unique_ptr<parallel::Communicator> tp_device;
  std::unique_ptr<parallel::Communicator> pp_device;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<ShardWorker> worker;
};

// Collective over `replica` (size tp_size * pp_size): splits the TP and PP groups, then loads
// this rank's shard of `weights` onto `backend` and allocates its KV cache. kInvalidArgument when
// the replica's size does not match the parallel config or the config cannot split the model.
absl::StatusOr<ReplicaRank> CreateReplicaRank(const model::ModelConfig& config,
                                              const model::WeightSource& weights,
                                              kernels::Backend& backend,
                                              parallel::Communicator& replica,
                                              const ReplicaRankOptions& options);

// Splits `plan` into at most `parts` plans of whole sequences, in order, balanced by tokens;
// `origin[i]` lists, for plan i, the index in `plan`'s logits rows of each of its logits rows.
std::vector<StepPlan> SplitStepPlan(const StepPlan& plan, int parts,
                                    std::vector<std::vector<size_t>>* origin);

}  // namespace tessera::worker
