// The scheduling policy of one replica, as pure logic: no threads, no clock, no executor. The
// engine (worker/engine.h) calls Schedule() for a StepPlan, runs it on a StepExecutor, and hands
// the StepResult to Update(); between steps it adds and aborts requests.
//
// Policy (docs/decisions/0005-engine-scheduler.md):
//  - Continuous batching. Running sequences, oldest admission first, each get their next tokens
//    (decodes, then the remaining chunk of a prompt: only the newest admissions can still be
//    prefilling, so decodes always come first), then waiting requests are admitted in arrival
//    order, under max_num_batched_tokens tokens and max_num_seqs sequences per step.
//  - Chunked prefill (default): a prompt takes whatever budget is left and goes on next step.
//    Off: prompts are prefilled whole, in steps of their own that come before decodes (vLLM's
//    behaviour without chunked prefill).
//  - KV blocks are allocated as sequences grow. When none is left for a running sequence, the most
//    recently admitted running sequence is preempted: its blocks are released (full ones stay in
//    the prefix cache) and it goes back to the front of the waiting queue, to be recomputed from
//    its prompt and the tokens generated so far. The oldest sequence is never preempted for a
//    newer one, so the scheduler always makes progress.
//  - Priority scheduling (optional, vLLM's --scheduling-policy priority): "oldest" and "newest"
//    above become "most" and "least urgent", (priority, arrival) ascending; a preempted sequence
//    goes back to its place in that order.
//  - Prefix caching (default): an admitted request takes the cached blocks of its longest cached
//    prefix of full blocks, short of its last token (which must be computed to get logits).
//  - A request that could never run — longer than max_model_len, or more blocks than the whole
//    cache — is rejected by Validate.
//
// Thread-compatible, except Validate (const, thread-safe).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/token_constraint.h"
#include "worker/block_manager.h"
#include "worker/request.h"
#include "worker/step.h"

namespace tessera::worker {

struct SchedulerConfig {
  int32_t max_model_len = 0;  // prompt + output tokens of one request; required
  int32_t max_num_seqs = 256;
  int32_t max_num_batched_tokens = 2048;
  bool enable_chunked_prefill = true;  // off: max_num_batched_tokens >= max_model_len
  bool enable_prefix_caching = true;
  uint64_t seed = 0;  // unseeded requests draw with SplitMix64(seed ^ request id)
  // vLLM's --scheduling-policy priority: the waiting queue and the running batch are ordered by
  // (Request::priority, arrival), so admission takes the most urgent first and preemption takes
  // the least urgent. Off (fcfs): arrival order, and requests must have priority 0.
  bool priority_scheduling = false;
  // Steps planned before the oldest one's result is applied (StepExecutor::max_steps_in_flight).
  // Above 1, a step takes no sequence whose next token a step in flight has yet to return (a
  // prompt's next chunk may follow the one in flight), and at most 1/max_steps_in_flight of the
  // live sequences (rounded up), so that the steps in flight share the batch.
  int32_t max_steps_in_flight = 1;
};

// Counters the serving layer exports (vLLM's metric names in parentheses).
struct SchedulerCounters {
  int64_t num_running = 0;  // (num_requests_running)
  int64_t num_waiting = 0;  // (num_requests_waiting), preempted ones included
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_free = 0;
  int64_t kv_blocks_in_use = 0;
  int64_t kv_blocks_cached = 0;        // unreferenced, evictable
  int64_t prefix_cache_queries = 0;    // tokens looked up at admission (prefix_cache_queries)
  int64_t prefix_cache_hits = 0;       // of which served from the cache (prefix_cache_hits)
  int64_t prefix_cache_evictions = 0;  // cached blocks evicted for fresh ones
  int64_t preemptions = 0;             // (num_preemptions)
  int64_t steps = 0;
  int64_t prefill_tokens = 0;  // prompt (and recomputed) tokens run (prompt_tokens)
  int64_t decode_tokens = 0;   // generated tokens fed back (generation_tokens)
  int64_t last_step_prefill_tokens = 0;
  int64_t last_step_decode_tokens = 0;
  int64_t last_step_seqs = 0;
  int64_t requests_finished = 0;    // by stop or length
  int64_t requests_aborted = 0;     // cancelled, timed out, shut down, failed
  int64_t kv_blocks_reserved = 0;   // decode side: held for KV that is arriving (in use)
  int64_t kv_blocks_exporting = 0;  // prefill side: held until their KV has been sent (in use)

  double prefix_cache_hit_rate() const {
    return prefix_cache_queries > 0
               ? static_cast<double>(prefix_cache_hits) / static_cast<double>(prefix_cache_queries)
               : 0.0;
  }
};

class Scheduler {
 public:
  // kInvalidArgument when the config is inconsistent or exceeds the executor's limits.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(const SchedulerConfig& config,
                                                           const ExecutorLimits& limits,
                                                           const model::ModelConfig& model);
  ~Scheduler();

  // kInvalidArgument (what is wrong, with the limit) for a request that is malformed or could
  // never run. Does not look at the scheduler's state: thread-safe.
  absl::Status Validate(const Request& request) const;
  // Queues a request (validated first). `stop_matcher` may be null. kAlreadyExists for a
  // duplicate id.
  // `constraint` (structured outputs) limits the tokens each of its steps may sample, and ends the
  // request (kStop) once its output is complete and nothing may follow.
  absl::Status Add(RequestId id, Request request, std::unique_ptr<StopMatcher> stop_matcher = {},
                   std::unique_ptr<model::TokenConstraint> constraint = {});
  // Removes a waiting or running request; its blocks return — once the step it is in, if any,
  // has been applied (Update) or discarded. False when the id is unknown (finished already).
  bool Abort(RequestId id);
  std::vector<RequestId> request_ids() const;
  // The requests admitted (given blocks for the first time) since the last call.
  std::vector<RequestId> TakeAdmitted();

  bool HasWork() const { return !running_.empty() || !waiting_.empty(); }
  // Whether blocks are held outside the sequences, by KV reservations or exports: they come back
  // without a step (a commit, a release, a finished send).
  bool HoldsBlocksOutsideSequences() const { return !reservations_.empty() || !exports_.empty(); }
  // Plans the next step over the sequences no step in flight owes a token: at least one token when
  // HasWork(), no step is in flight and no blocks are held outside the sequences; otherwise it may
  // be empty (every sequence waits for a step in flight, or for the blocks a step, a reservation
  // or an export will free), and then nothing is put in flight.
  StepPlan Schedule();
  int steps_in_flight() const { return static_cast<int>(in_flight_.size()); }
  // Applies the executor's result to the sequences of the oldest step in flight: one event per
  // sampled token (finish reason on a request's last), finished requests removed and their
  // blocks released; sequences aborted meanwhile are removed without events. kInternal when the
  // result does not match the plan.
  absl::StatusOr<std::vector<TokenEvent>> Update(const StepResult& result);
  // Forgets the steps in flight when the executor failed to run them (the sequences keep their
  // state and blocks; abort them next).
  void DiscardStep();

  // --- Disaggregated serving (decode side).
  struct KvReservationBlocks {
    std::vector<int32_t> fresh;     // blocks the prompt's KV is written into, in order
    int32_t num_cached_tokens = 0;  // leading prompt tokens already in the prefix cache
  };
  // Takes blocks for `request`'s whole prompt under `token`: its longest cached prefix of full
  // blocks (nothing to transfer) and fresh blocks for the rest, held until AddPrefilled or
  // ReleaseReservation. kInvalidArgument (Validate), kAlreadyExists for a token in use,
  // kResourceExhausted when the cache has no room for it now.
  absl::StatusOr<KvReservationBlocks> Reserve(uint64_t token, const Request& request);
  // Returns a reservation's blocks. kNotFound for an unknown token.
  absl::Status ReleaseReservation(uint64_t token);
  // Queues a request whose prompt's KV is in reservation `request.kv_import->token` (verified by
  // the caller) and whose first token was sampled elsewhere; it keeps the reservation's blocks
  // and waits for a place in the batch like any request. kNotFound for an unknown token.
  // The first token goes through `constraint` as if sampled here (kInvalidArgument if it breaks
  // the grammar).
  absl::Status AddPrefilled(RequestId id, Request request,
                            std::unique_ptr<StopMatcher> stop_matcher = {},
                            std::unique_ptr<model::TokenConstraint> constraint = {});

  // --- Disaggregated serving (prefill side).
  struct KvExportBlocks {
    std::vector<int32_t> blocks;  // this replica's blocks to send, parallel to destination's
    KvDestination destination;
    std::vector<int32_t> held;  // every block of the request, released by ReleaseExport
  };
  // After Schedule: what the newest step makes ready to send of the prompts with a
  // kv_destination (layer-wise streaming, chunk by chunk). A chunk that fills blocks sends them
  // (blocks it leaves partly written wait for the next chunk); the chunk that completes the prompt
  // sends the rest, its last partial block included. Over a prompt's steps every block from the
  // destination's cached prefix on is sent once, in order, also when its chunks follow each other
  // into the pipeline (each step's sends are counted when it is planned).
  struct KvSend {
    RequestId id = 0;
    std::vector<int32_t> blocks;  // local blocks
    KvDestination destination;    // the matching destination blocks only
  };
  std::vector<KvSend> KvSendsInStep() const { return newest_sends_; }
  // The requests whose blocks were released since the last call (preempted for recomputation)
  // while sends of them may be in flight: the caller cancels those sends before the next step
  // writes into the blocks; their blocks are sent again as they are recomputed.
  std::vector<RequestId> TakeKvSendsToCancel();
  // A request that ended with kv_handoff keeps its blocks until ReleaseExport. nullptr when the
  // id has none.
  const KvExportBlocks* ExportOf(RequestId id) const;
  void ReleaseExport(RequestId id);

  SchedulerCounters counters() const;
  const BlockManager& blocks() const { return blocks_; }
  const SchedulerConfig& config() const { return config_; }

 private:
  struct Sequence;
  struct Scheduled {
    Sequence* seq;
    int32_t num_tokens;
  };
  Scheduler(const SchedulerConfig& config, const ExecutorLimits& limits,
            const model::ModelConfig& model);

  int32_t BlocksFor(int32_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }
  void ComputeBlockHashes(Sequence& seq, int32_t full_blocks) const;
  // Extends `hashes` (the chain of `tokens`' leading full blocks) to `full_blocks` entries.
  void ExtendBlockHashes(absl::Span<const int32_t> tokens, uint64_t salt_key, int32_t full_blocks,
                         std::vector<uint64_t>& hashes) const;
  // Running phase and admission phase of Schedule; true when they scheduled anything.
  bool ScheduleRunning(int32_t& budget, bool& preempted);
  bool ScheduleWaiting(int32_t& budget);
  // Sequences the step being built may still take (max_steps_in_flight's share).
  bool RoomForSequence() const { return scheduled_.size() < seq_cap_; }
  // Plans the KV send of the newest step of `seq` (computing `n` of its tokens) into newest_sends_.
  void PlanKvSend(Sequence& seq, int32_t n);
  void Preempt(Sequence& seq);
  // Puts `seq` into the waiting queue or the running batch: at the back (or, with `front`, the
  // front), or under priority scheduling in (priority, arrival) order.
  template <typename Queue>
  void Enqueue(Queue& queue, Sequence* seq, bool front) const;
  void ReleaseBlocks(Sequence& seq);
  void Remove(Sequence* seq);
  StepPlan BuildPlan() const;
  SamplingRow MakeSamplingRow(const Sequence& seq) const;
  std::optional<FinishReason> CheckStop(Sequence& seq, int32_t token) const;

  const SchedulerConfig config_;
  const ExecutorLimits limits_;
  const int32_t block_size_;
  const int64_t vocab_size_;
  const std::vector<int64_t> eos_token_ids_;
  BlockManager blocks_;
  absl::flat_hash_map<RequestId, std::unique_ptr<Sequence>> sequences_;
  std::deque<Sequence*> waiting_;     // arrival order; preempted sequences at the front
  std::vector<Sequence*> running_;    // admission order ((priority, arrival) under priority)
  std::vector<Scheduled> scheduled_;  // the step Schedule is building
  std::deque<std::vector<Scheduled>> in_flight_;  // steps awaiting Update, oldest first
  std::vector<RequestId> kv_sends_to_cancel_;     // TakeKvSendsToCancel
  std::vector<KvSend> newest_sends_;              // KvSendsInStep
  size_t seq_cap_ = 0;                            // of the step being built
  SchedulerCounters counters_;
  struct Reservation {
    std::vector<int32_t> blocks;  // cached prefix, then fresh
    int32_t num_cached_tokens = 0;
  };
  absl::flat_hash_map<uint64_t, Reservation> reservations_;
  absl::flat_hash_map<RequestId, KvExportBlocks> exports_;
  std::vector<RequestId> admitted_;  // since the last TakeAdmitted
};

}  // namespace tessera::worker
