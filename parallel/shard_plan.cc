#include "parallel/shard_plan.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status_macros.h"

namespace tessera::parallel {

std::string ShardPlan::DebugString() const {
  return absl::StrCat("tp ", tp_rank, "/", tp_size, ", pp ", pp_rank, "/", pp_size, ": layers [",
                      layer_begin, ", ", layer_end, "), heads [", head_begin, ", +", num_heads,
                      "), kv heads [", kv_head_begin, ", +", num_kv_heads, "), mlp [", inter_begin,
                      ", +", inter_size, "), vocab [", vocab_begin, ", +", vocab_size, ")");
}

absl::Status ValidateParallelConfig(const model::ModelConfig& config,
                                    const ParallelConfig& parallel) {
  const int tp = parallel.tp_size;
  const int pp = parallel.pp_size;
  if (tp < 1 || pp < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor-parallel size (", tp, ") and pipeline-parallel size (", pp, ") must be >= 1"));
  }
  if (config.num_attention_heads % tp != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel size ", tp,
                                                   " does not divide the model's ",
                                                   config.num_attention_heads, " attention heads"));
  }
  const int64_t kv = config.num_key_value_heads;
  if ((tp <= kv && kv % tp != 0) || (tp > kv && tp % kv != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor-parallel size ", tp, " and the model's ", kv,
        " key/value heads: one must divide the other (KV heads are split, or replicated when "
        "TP exceeds them)"));
  }
  if (config.intermediate_size % tp != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel size ", tp,
                                                   " does not divide the intermediate size ",
                                                   config.intermediate_size));
  }
  if (config.num_hidden_layers < pp) {
    return absl::InvalidArgumentError(absl::StrCat("pipeline-parallel size ", pp, " exceeds the ",
                                                   config.num_hidden_layers, " layers"));
  }
  if (!parallel.pp_layers.empty()) {
    if (static_cast<int>(parallel.pp_layers.size()) != pp) {
      return absl::InvalidArgumentError(absl::StrCat("the layer split names ",
                                                     parallel.pp_layers.size(),
                                                     " stages for pipeline-parallel size ", pp));
    }
    int64_t total = 0;
    for (int64_t n : parallel.pp_layers) {
      if (n < 1) {
        return absl::InvalidArgumentError("every pipeline stage needs at least one layer");
      }
      total += n;
    }
    if (total != config.num_hidden_layers) {
      return absl::InvalidArgumentError(absl::StrCat("the layer split adds up to ", total,
                                                     " layers, the model has ",
                                                     config.num_hidden_layers));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ShardPlan> MakeShardPlan(const model::ModelConfig& config,
                                        const ParallelConfig& parallel, int tp_rank, int pp_rank) {
  TESSERA_RETURN_IF_ERROR(ValidateParallelConfig(config, parallel));
  const int tp = parallel.tp_size;
  const int pp = parallel.pp_size;
  if (tp_rank < 0 || tp_rank >= tp || pp_rank < 0 || pp_rank >= pp) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank (tp ", tp_rank, ", pp ", pp_rank, ") is outside tp ", tp, " x pp ", pp));
  }
  ShardPlan plan;
  plan.tp_rank = tp_rank;
  plan.tp_size = tp;
  plan.pp_rank = pp_rank;
  plan.pp_size = pp;
  // Layers.
  const std::vector<int64_t> split =
      parallel.pp_layers.empty() ? EvenLayerSplit(config, pp) : parallel.pp_layers;
  int64_t begin = 0;
  for (int s = 0; s <= pp_rank; ++s) {
    const int64_t n = split[s];
    if (s == pp_rank) {
      plan.layer_begin = begin;
      plan.layer_end = begin + n;
    }
    begin += n;
  }
  // Heads.
  plan.num_heads = config.num_attention_heads / tp;
  plan.head_begin = tp_rank * plan.num_heads;
  const int64_t kv = config.num_key_value_heads;
  if (tp <= kv) {
    plan.num_kv_heads = kv / tp;
    plan.kv_head_begin = tp_rank * plan.num_kv_heads;
  } else {
    plan.num_kv_heads = 1;
    plan.kv_head_begin = tp_rank / (tp / kv);
  }
  plan.inter_size = config.intermediate_size / tp;
  plan.inter_begin = tp_rank * plan.inter_size;
  plan.vocab_shard = (config.vocab_size + tp - 1) / tp;
  plan.vocab_begin = tp_rank * plan.vocab_shard;
  plan.vocab_size =
      std::max<int64_t>(0, std::min(plan.vocab_shard, config.vocab_size - plan.vocab_begin));
  return plan;
}

ShardPlan SingleRankPlan(const model::ModelConfig& config) {
  ShardPlan plan;
  plan.layer_end = config.num_hidden_layers;
  plan.num_heads = config.num_attention_heads;
  plan.num_kv_heads = config.num_key_value_heads;
  plan.inter_size = config.intermediate_size;
  plan.vocab_size = config.vocab_size;
  plan.vocab_shard = config.vocab_size;
  return plan;
}

namespace {

// `layers` over `stages`, as even as possible, earlier stages taking the remainder.
std::vector<int64_t> EvenSplit(int64_t layers, int64_t stages) {
  std::vector<int64_t> split;
  split.reserve(static_cast<size_t>(stages));
  for (int64_t s = 0; s < stages; ++s) {
    split.push_back(layers / stages + (s < layers % stages ? 1 : 0));
  }
  return split;
}

}  // namespace

std::vector<int64_t> EvenLayerSplit(const model::ModelConfig& config, int pp_size) {
  const int64_t layers = config.num_hidden_layers;
  TESSERA_CHECK(pp_size >= 1 && pp_size <= layers)
      << "EvenLayerSplit: " << pp_size << " stages for " << layers << " layers";
  return EvenSplit(layers, pp_size);
}

std::vector<int64_t> BalancedLayerSplit(const model::ModelConfig& config, int pp_size) {
  const int64_t layers = config.num_hidden_layers;
  TESSERA_CHECK(pp_size >= 1 && pp_size <= layers)
      << "BalancedLayerSplit: " << pp_size << " stages for " << layers << " layers";
  if (pp_size == 1) return {layers};
  const auto hidden = static_cast<double>(config.hidden_size);
  // Weights a decode step reads: q, k, v and o; gate, up and down (norms are negligible).
  const double layer = hidden * static_cast<double>(2 * config.q_size() + 2 * config.kv_size() +
                                                    3 * config.intermediate_size);
  const double head = hidden * static_cast<double>(config.vocab_size);
  const int64_t others = pp_size - 1;
  int64_t best_last = 0;
  double best_cost = 0, best_gap = 0;
  for (int64_t last = 1; last <= layers - others; ++last) {
    const int64_t rest = layers - last;
    const int64_t widest = (rest + others - 1) / others;
    const double cost =
        std::max(static_cast<double>(last) * layer + head, static_cast<double>(widest) * layer);
    const double gap = std::abs(static_cast<double>(last) - static_cast<double>(rest) / others);
    if (best_last == 0 || cost < best_cost || (cost == best_cost && gap < best_gap)) {
      best_last = last;
      best_cost = cost;
      best_gap = gap;
    }
  }
  std::vector<int64_t> split = EvenSplit(layers - best_last, others);
  split.push_back(best_last);
  return split;
}

}  // namespace tessera::parallel
