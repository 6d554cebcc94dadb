// One step of a replica, as the scheduler plans it and an executor runs it. The seam between
// scheduling (which sequences, how many tokens, which blocks) and execution (one process, or a
// TP/PP replica across ranks that receive the plan from their leader).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/llama_model.h"

namespace tessera::worker {

// Sampling parameters of one logits row (kernels::SampleParams and kernels::ApplyPenaltiesParams
// semantics). The token lists are empty unless the row has penalties or bans.
struct SamplingRow {
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  int64_t seed = 0;
  int64_t step = 0;  // tokens the sequence has generated so far
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t num_top_logprobs = 0;  // top-N logprobs wanted for this row (0: none)
  // The distinct tokens of prompt and output (each once) and their counts in the output; set
  // when a penalty is active.
  std::vector<int32_t> penalty_token_ids;
  std::vector<int32_t> penalty_output_counts;
  std::vector<int32_t> banned_token_ids;  // logits forced to -inf (min_tokens: the stop tokens)
  // OpenAI's logit_bias (parallel lists), added before the penalties.
  std::vector<int32_t> bias_token_ids;
  std::vector<float> bias_values;
  // Structured outputs: bit t % 32 of word t / 32 set when token t may be sampled (ceil(vocab / 32)
  // words); empty: every token may.
  std::vector<uint32_t> allowed_mask;

  bool HasPenalties() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
};

// Owned copies of a ForwardInput plus one SamplingRow per logits row.
struct StepPlan {
  std::vector<int32_t> token_ids;
  std::vector<int32_t> positions;
  std::vector<int64_t> slot_mapping;
  std::vector<int32_t> query_start{0};
  std::vector<int32_t> seq_lens;
  std::vector<int32_t> block_tables;  // seq_lens.size() rows of ExecutorLimits::max_blocks_per_seq
  std::vector<int32_t> logits_rows;
  std::vector<SamplingRow> sampling;  // parallel to logits_rows

  ForwardInput AsForwardInput() const {
    return {token_ids, positions, slot_mapping, query_start, seq_lens, block_tables, logits_rows};
  }
};

// One sampled token (and its logprob) per logits row, in plan order. Logprobs are of the model's
// raw distribution (before penalties and temperature). When any row asked for top-N logprobs,
// top_n is the largest N asked and every row has top_n entries (descending) in top_token_ids /
// top_logprobs at [row * top_n, (row + 1) * top_n); a row that asked for fewer uses a prefix.
struct StepResult {
  std::vector<int32_t> token_ids;
  std::vector<float> logprobs;
  int32_t top_n = 0;
  std::vector<int32_t> top_token_ids;
  std::vector<float> top_logprobs;
};

// What a scheduler must respect when it plans steps for an executor.
struct ExecutorLimits {
  int32_t num_blocks = 0;  // KV-cache blocks (the same on every rank of a replica)
  int32_t block_size = 0;
  int32_t max_blocks_per_seq = 0;
  int32_t max_num_tokens = 0;
  int32_t max_num_seqs = 0;
};

// Runs planned steps. Thread-compatible: one thread (the scheduler's) calls Execute, or Submit and
// Collect.
class StepExecutor {
 public:
  virtual ~StepExecutor() = default;
  // kInvalidArgument for a plan that breaks the limits; other errors come from the backend or,
  // for a distributed replica, from the communicators (the replica is unusable afterwards).
  virtual absl::StatusOr<StepResult> Execute(const StepPlan& plan) = 0;
  virtual ExecutorLimits limits() const = 0;

  // Pipelined execution: up to max_steps_in_flight() plans may be submitted before the oldest
  // result is collected, so that a replica's pipeline stages each work on another step (vLLM's
  // batch queue). Results come back in submission order. Plans in flight at once must not share
  // a sequence; every rank runs them in submission order, so one may reuse the blocks another
  // freed. Execute is Submit then Collect, with nothing in flight.
  virtual int max_steps_in_flight() const { return 1; }
  // Starts `plan`; an error leaves the executor unusable (as Execute's). The default runs Execute
  // and keeps the result for Collect.
  virtual absl::Status Submit(const StepPlan& plan) {
    absl::StatusOr<StepResult> result = Execute(plan);
    if (!result.ok()) return result.status();
    done_.push_back(*std::move(result));
    return absl::OkStatus();
  }
  // The result of the oldest plan submitted and not yet collected; kFailedPrecondition when none
  // is.
  virtual absl::StatusOr<StepResult> Collect() {
    if (done_.empty()) return absl::FailedPreconditionError("Collect without a step in flight");
    StepResult result = std::move(done_.front());
    done_.pop_front();
    return result;
  }
  // Called by an idle scheduler (at most every EngineOptions::idle_wait): a distributed replica
  // sends its followers a keep-alive so their bounded waits do not expire. Cheap; default no-op.
  virtual absl::Status Idle() { return absl::OkStatus(); }
  // Layer-wise KV streaming: `kv_written(layer)` is called during the next Execute calls, on the
  // executing thread, once the global `layer`'s K and V of the step are in the cache (null: no
  // calls). False when this executor cannot report layers (then sends go after the step). A
  // replica across ranks reports the leader's layers here; each follower reports its own.
  virtual bool SetKvWrittenCallback(std::function<void(int32_t layer)> kv_written) { return false; }
  // How often a message between steps (a command that must be answered before the caller goes
  // on) had to wait for every step in flight first: each such drain idles a pipeline's stages.
  virtual int64_t pipeline_drains() const { return 0; }

 private:
  std::deque<StepResult> done_;  // the default Submit's results
};

}  // namespace tessera::worker
