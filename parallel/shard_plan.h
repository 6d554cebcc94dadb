// Which part of a model one worker rank holds under tensor (TP) and pipeline (PP) parallelism,
// Megatron style: attention heads, MLP columns and vocabulary rows split across the TP group;
// layers split into PP stages. Pure data and arithmetic; thread-compatible.
//
// Rank layout of a replica of tp_size * pp_size ranks: rank = pp_rank * tp_size + tp_rank (TP
// innermost, so a TP group is made of neighbouring ranks — one node — and PP crosses nodes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"

namespace tessera::parallel {

struct ParallelConfig {
  int tp_size = 1;
  int pp_size = 1;
  // Layers per PP stage; empty: as even as possible (earlier stages take the remainder).
  std::vector<int64_t> pp_layers;
};

struct ShardPlan {
  int tp_rank = 0;
  int tp_size = 1;
  int pp_rank = 0;
  int pp_size = 1;

  // Layers [layer_begin, layer_end) of the model run on this stage.
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
  // Query heads [head_begin, head_begin + num_heads).
  int64_t head_begin = 0;
  int64_t num_heads = 0;
  // KV heads [kv_head_begin, kv_head_begin + num_kv_heads). When tp_size exceeds the model's KV
  // heads, each KV head is replicated on tp_size / kv_heads ranks and num_kv_heads is 1.
  int64_t kv_head_begin = 0;
  int64_t num_kv_heads = 0;
  // MLP intermediate columns [inter_begin, inter_begin + inter_size).
  int64_t inter_begin = 0;
  int64_t inter_size = 0;
  // Vocabulary rows [vocab_begin, vocab_begin + vocab_size) of the embedding and LM head; every
  // rank's shard is vocab_shard rows wide (the last one padded past the model's vocabulary).
  int64_t vocab_begin = 0;
  int64_t vocab_size = 0;
  int64_t vocab_shard = 0;

  bool first_stage() const { return pp_rank == 0; }
  bool last_stage() const { return pp_rank == pp_size - 1; }
  int64_t num_layers() const { return layer_end - layer_begin; }
  // The rank of (tp_rank, pp_rank) in the replica.
  static int ReplicaRank(int tp_rank, int pp_rank, int tp_size) {
    return pp_rank * tp_size + tp_rank;
  }
  std::string DebugString() const;
};

// Checks that `parallel` can split `config` (heads, KV heads, intermediate size divisible; at
// least one layer per stage; an explicit layer split that adds up); kInvalidArgument naming the
// quantity and the sizes otherwise.
absl::Status ValidateParallelConfig(const model::ModelConfig& config,
                                    const ParallelConfig& parallel);

// The plan of rank (tp_rank, pp_rank). Validates as ValidateParallelConfig does.
absl::StatusOr<ShardPlan> MakeShardPlan(const model::ModelConfig& config,
                                        const ParallelConfig& parallel, int tp_rank, int pp_rank);

// The whole model on one rank.
ShardPlan SingleRankPlan(const model::ModelConfig& config);

// Layers per pipeline stage as even as possible, earlier stages taking the remainder (the split
// of an empty ParallelConfig::pp_layers). `pp_size` must be in [1, num_hidden_layers].
std::vector<int64_t> EvenLayerSplit(const model::ModelConfig& config, int pp_size);

// Layers per pipeline stage (`--pp-layers auto`) that even out what each stage reads during a
// decode step: a layer's weights on every stage, and on the last one also the LM head, which
// weighs vocab × hidden — 2.4 layers' worth on Llama 3 8B, 2.8 on the CPU benchmark's model. The
// largest stage's share is as small as whole layers allow; among splits that achieve it, the most
// even one; earlier stages take a remainder. `pp_size` must be in [1, num_hidden_layers].
std::vector<int64_t> BalancedLayerSplit(const model::ModelConfig& config, int pp_size);

}  // namespace tessera::parallel
