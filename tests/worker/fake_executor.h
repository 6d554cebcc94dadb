// A StepExecutor without a model, for scheduler and engine tests. It keeps the token and position
// written to every KV slot, checks each plan the way a paged cache would see it, and "samples" a
// deterministic function of the sequence's whole history as read back through its block table.
// A scheduling bug that would corrupt a real model's cache — a wrong block, a shared block
// overwritten, a recompute that skips tokens — changes the tokens or fails the step.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "common/status_macros.h"
#include "kernels/op_params.h"
#include "worker/step.h"

namespace tessera::worker::testing {

class FakeExecutor final : public StepExecutor {
 public:
  FakeExecutor(const ExecutorLimits& limits, int64_t vocab_size)
      : limits_(limits),
        vocab_(vocab_size),
        slot_token_(static_cast<size_t>(limits.num_blocks) * limits.block_size, -1),
        slot_pos_(slot_token_.size(), -1) {}

  // The token a sequence whose history is `tokens` gets next: greedy (temperature 0) depends on
  // the history alone; sampled rows also on (seed, step), as the real sampler. Never below
  // kFirstToken, so that low ids can serve as EOS/stop tokens in tests.
  static constexpr int32_t kFirstToken = 3;
  static int32_t NextToken(absl::Span<const int32_t> tokens, int64_t vocab,
                           const SamplingRow& row) {
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (int32_t t : tokens) h = kernels::SplitMix64(h ^ static_cast<uint32_t>(t));
    if (row.temperature > 0.0f) {
      h = kernels::SplitMix64(h ^ kernels::SplitMix64(static_cast<uint64_t>(row.seed)) ^
                              static_cast<uint64_t>(row.step));
    }
    return kFirstToken + static_cast<int32_t>(h % static_cast<uint64_t>(vocab - kFirstToken));
  }
  static float LogprobOf(int32_t token) { return -0.01f * static_cast<float>(token % 100); }

  absl::StatusOr<StepResult> Execute(const StepPlan& plan) override {
    if (on_step) on_step();
    ++steps_;
    if (!fail_next_.ok()) return std::exchange(fail_next_, absl::OkStatus());
    const int32_t bs = limits_.block_size;
    const int32_t width = limits_.max_blocks_per_seq;
    const size_t tokens = plan.token_ids.size();
    const size_t seqs = plan.seq_lens.size();
    auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
    if (plan.positions.size() != tokens || plan.slot_mapping.size() != tokens ||
        plan.query_start.size() != seqs + 1 || plan.block_tables.size() != seqs * width ||
        plan.logits_rows.size() != plan.sampling.size() ||
        static_cast<size_t>(plan.query_start.back()) != tokens) {
      return bad("inconsistent plan sizes");
    }
    if (tokens > static_cast<size_t>(limits_.max_num_tokens) ||
        seqs > static_cast<size_t>(limits_.max_num_seqs)) {
      return bad("plan over the limits: ", tokens, " tokens, ", seqs, " sequences");
    }
    max_step_tokens_ = std::max<int64_t>(max_step_tokens_, static_cast<int64_t>(tokens));
    std::vector<int32_t> seq_of_row(tokens);
    std::vector<bool> written(slot_token_.size(), false);
    for (size_t s = 0; s < seqs; ++s) {
      const int32_t begin = plan.query_start[s], end = plan.query_start[s + 1];
      if (end <= begin) return bad("sequence ", s, " has no tokens");
      for (int32_t t = begin; t < end; ++t) {
        seq_of_row[t] = static_cast<int32_t>(s);
        const int32_t pos = plan.positions[t];
        if (pos != plan.seq_lens[s] - (end - t)) return bad("position ", pos, " of row ", t);
        const int32_t block = plan.block_tables[s * width + pos / bs];
        if (block < 0 || block >= limits_.num_blocks) return bad("block ", block);
        const int64_t slot = static_cast<int64_t>(block) * bs + pos % bs;
        if (plan.slot_mapping[t] != slot) return bad("slot of row ", t, " is not its block's");
        if (written[slot]) return bad("two tokens write slot ", slot, " in one step");
        written[slot] = true;
        SetSlot(slot, plan.token_ids[t], pos);
      }
    }
    StepResult result;
    for (size_t i = 0; i < plan.logits_rows.size(); ++i) {
      const int32_t row = plan.logits_rows[i];
      const int32_t s = seq_of_row[row];
      std::vector<int32_t> history;
      for (int32_t p = 0; p <= plan.positions[row]; ++p) {
        const int32_t block = plan.block_tables[s * width + p / bs];
        const int64_t slot = static_cast<int64_t>(block) * bs + p % bs;
        if (SlotPos(slot) != p) {
          return absl::InternalError(
              absl::StrCat("position ", p, " of sequence ", s, " is not in its cache"));
        }
        history.push_back(SlotToken(slot));
      }
      const int32_t token = NextToken(history, vocab_, plan.sampling[i]);
      result.token_ids.push_back(token);
      result.logprobs.push_back(LogprobOf(token));
      result.top_n = std::max(result.top_n, plan.sampling[i].num_top_logprobs);
    }
    for (size_t i = 0; i < plan.logits_rows.size() && result.top_n > 0; ++i) {
      for (int32_t j = 0; j < result.top_n; ++j) {
        result.top_token_ids.push_back((result.token_ids[i] + j) % static_cast<int32_t>(vocab_));
        result.top_logprobs.push_back(-static_cast<float>(j));
      }
    }
    plans_.push_back(plan);
    return result;
  }
  ExecutorLimits limits() const override { return limits_; }
  // Pipelining: plans run at Submit, in order (as every rank of a pipeline runs them); their
  // results wait for Collect.
  int max_steps_in_flight() const override { return steps_in_flight; }
  absl::Status Submit(const StepPlan& plan) override {
    TESSERA_RETURN_IF_ERROR(StepExecutor::Submit(plan));
    max_outstanding_ = std::max(max_outstanding_, ++outstanding_);
    return absl::OkStatus();
  }
  absl::StatusOr<StepResult> Collect() override {
    --outstanding_;
    return StepExecutor::Collect();
  }
  int steps_in_flight = 1;
  // The most steps submitted and not yet collected at once.
  int max_outstanding() const { return max_outstanding_; }

  void FailNextStep(absl::Status status) { fail_next_ = std::move(status); }
  int64_t steps() const { return steps_; }
  int64_t max_step_tokens() const { return max_step_tokens_; }
  const std::vector<StepPlan>& plans() const { return plans_; }
  std::function<void()> on_step;  // called at the start of every Execute (on its thread)

  // Keeps what each KV slot holds (token, position) in real KV-cache memory instead of private
  // vectors: slot s at tokens[s * stride] and positions[s * stride] (position + 1, so that zeroed
  // memory reads as empty). Then KV that migrates between replicas carries it, and a decode
  // replica's tokens are right only if every slot arrived. Call before the first step.
  void StoreSlotsIn(int32_t* tokens, int32_t* positions, int64_t stride) {
    ext_tokens_ = tokens;
    ext_positions_ = positions;
    ext_stride_ = stride;
  }

 private:
  void SetSlot(int64_t slot, int32_t token, int32_t pos) {
    if (ext_tokens_ != nullptr) {
      ext_tokens_[slot * ext_stride_] = token;
      ext_positions_[slot * ext_stride_] = pos + 1;
      return;
    }
    slot_token_[slot] = token;
    slot_pos_[slot] = pos;
  }
  int32_t SlotToken(int64_t slot) const {
    return ext_tokens_ != nullptr ? ext_tokens_[slot * ext_stride_] : slot_token_[slot];
  }
  int32_t SlotPos(int64_t slot) const {
    return ext_tokens_ != nullptr ? ext_positions_[slot * ext_stride_] - 1 : slot_pos_[slot];
  }
  int32_t* ext_tokens_ = nullptr;
  int32_t* ext_positions_ = nullptr;
  int64_t ext_stride_ = 1;
  ExecutorLimits limits_;
  int64_t vocab_;
  std::vector<int32_t> slot_token_;
  std::vector<int32_t> slot_pos_;
  absl::Status fail_next_;
  int64_t steps_ = 0;
  int outstanding_ = 0;
  int max_outstanding_ = 0;
  int64_t max_step_tokens_ = 0;
  std::vector<StepPlan> plans_;
};

// The greedy (or seeded) tokens FakeExecutor gives `prompt` when it runs alone.
inline std::vector<int32_t> FakeAlone(std::vector<int32_t> prompt, int32_t max_tokens,
                                      int64_t vocab, SamplingRow row = {}) {
  std::vector<int32_t> out;
  for (int32_t i = 0; i < max_tokens; ++i) {
    row.step = i;
    const int32_t t = FakeExecutor::NextToken(prompt, vocab, row);
    out.push_back(t);
    prompt.push_back(t);
  }
  return out;
}

}  // namespace tessera::worker::testing
