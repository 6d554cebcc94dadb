#include "tests/worker/replica_test_util.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace tessera::worker::testing {

ReplicaRankOptions ReplicaOptions(const Split& split) {
  ReplicaRankOptions o;
  o.parallel.tp_size = split.tp;
  o.parallel.pp_size = split.pp;
  o.parallel.pp_layers = split.pp_layers;
  o.pp_micro_batches = split.micro_batches;
  o.pp_steps_in_flight = split.steps_in_flight;
  o.model.max_num_tokens = 128;
  o.model.max_num_seqs = 8;
  o.model.max_blocks_per_seq = 32;
  if (split.graphs) o.model.graph_batch_sizes = {1, 2, 4, 8};
  o.num_kv_blocks = 128;
  o.block_size = 4;
  return o;
}

absl::Status GreedyBody(const Fixture& f, ReplicaRank& rank, std::vector<RequestOutput>& results,
                        int steps_in_flight) {
  if (!rank.worker->is_leader()) return RunFollower(*rank.worker);
  auto executor = ReplicaExecutor::Create(*rank.worker, {.max_steps_in_flight = steps_in_flight});
  if (!executor.ok()) return executor.status();
  SchedulerConfig scheduler;
  scheduler.max_model_len = 64;
  scheduler.max_num_seqs = 8;
  scheduler.max_num_batched_tokens = 32;  // prompts of 40 tokens take two chunks
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& p : f.prompts) prompts.push_back(p.ids);
  auto out = GenerateGreedy(**executor, f.config, prompts,
                            static_cast<int32_t>(f.prompts[0].greedy.size()), scheduler);
  if (!out.ok()) return out.status();
  results = *std::move(out);
  return (*executor)->Stop();
}

absl::Status LogitsBody(const Fixture& f, ReplicaRank& rank, std::vector<float>& logits) {
  const auto& prompt = f.prompts.back();
  const int32_t n = static_cast<int32_t>(prompt.ids.size());
  StepPlan plan;
  for (int32_t pos = 0; pos < n; ++pos) {
    plan.token_ids.push_back(prompt.ids[pos]);
    plan.positions.push_back(pos);
    plan.slot_mapping.push_back(pos);
    plan.logits_rows.push_back(pos);
  }
  plan.query_start.push_back(n);
  plan.seq_lens.push_back(n);
  for (int32_t j = 0; j < 32; ++j) plan.block_tables.push_back(j);
  CpuStream stream;
  auto out = rank.model->Forward(plan.AsForwardInput(), *rank.cache, stream);
  if (!out.ok()) return out.status();
  if (rank.model->plan().last_stage() && rank.model->plan().tp_rank == 0) {
    logits.assign(out->data_as<float>(), out->data_as<float>() + out->numel());
  }
  return absl::OkStatus();
}

std::string CompareLogits(const Fixture& f, const std::vector<float>& logits) {
  const auto& prompt = f.prompts.back();
  const int64_t n = static_cast<int64_t>(prompt.ids.size());
  const int64_t vocab = f.config.vocab_size;
  if (logits.size() != static_cast<size_t>(n * vocab)) {
    return absl::StrCat("got ", logits.size(), " logits, expected ", n * vocab);
  }
  for (int64_t pos = 0; pos < n; ++pos) {
    float scale = 1.0f, worst = 0.0f;
    for (int64_t v = 0; v < vocab; ++v) {
      scale = std::max(scale, std::fabs(prompt.logits[pos * vocab + v]));
      worst = std::max(worst, std::fabs(logits[pos * vocab + v] - prompt.logits[pos * vocab + v]));
    }
    if (worst > 1e-4f * scale) {
      return absl::StrCat("position ", pos, ": max |diff| ", worst, " > 1e-4 * ", scale);
    }
  }
  return "";
}

}  // namespace tessera::worker::testing
