// The Llama-family forward pass (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3) over the paged KV cache,
// for a batch that mixes prefill chunks and decode steps of sequences of different lengths.
// Built from kernels/ops.h and parallel/comm only, so it runs on any Backend and Communicator.
//
// Under tensor parallelism (Megatron style) a rank holds its heads of q/k/v and o_proj, its
// columns of gate/up and rows of down_proj, and its vocabulary rows of the embedding and LM head;
// o_proj and down_proj are followed by an all-reduce over the TP group, the embedding by an
// all-reduce of the vocab-parallel lookups, and the LM head by an all-gather of the logits (or
// none: ForwardOptions::gather_logits, for worker/vocab_parallel.h's greedy sampling). Under
// pipeline parallelism a rank runs the layers of its stage; the residual stream goes stage to
// stage with Send/Recv over the PP group. Each rank reads only its own slices of the checkpoint.
//
// Owns its weights (copied to the backend at Create, q/k/v and gate/up fused) and its activation
// workspace, sized for `max_num_tokens` tokens and `max_num_seqs` sequences per step.
// Thread-compatible: one thread calls Forward at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/stream.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/weights.h"
#include "parallel/comm/communicator.h"
#include "parallel/shard_plan.h"
#include "worker/kv_cache.h"

namespace tessera::worker {

struct LlamaModelOptions {
  // Weight storage on the device; unset keeps each tensor's checkpoint dtype (bf16 stays bf16,
  // read as f32 by the kernels). Compute is f32 on the CPU backend either way.
  std::optional<DataType> weight_dtype;
  // The residual stream, every projection's input and output, q/k/v and attention: f32, or on a
  // GPU backend bf16/f16 (the model's own dtype, as vLLM runs it: cuBLAS then multiplies on
  // tensor cores). Logits are f32 either way; the KV cache must take K/V of this type.
  DataType activation_dtype = DataType::kF32;
  int32_t max_num_tokens = 2048;   // tokens per step
  int32_t max_num_seqs = 256;      // sequences per step
  int32_t max_blocks_per_seq = 0;  // block-table width; required
  // Decode steps (one new token per sequence, the logits of every row) of up to the largest of
  // these batch sizes run as a graph (CUDA graphs): recorded at the first step of each size,
  // then replayed, the batch padded to the next size with rows that write no KV. Launching a
  // few hundred kernels one by one costs more than a small decode step computes. Used only
  // where the backend records graphs (kernels::Backend::supports_graphs), on a model of one
  // pipeline stage; empty runs every step eagerly (vLLM's --enforce-eager). Each size in
  // [1, min(max_num_seqs, max_num_tokens)].
  std::vector<int32_t> graph_batch_sizes;
};

// How a model's decode steps ran (LlamaModelOptions::graph_batch_sizes).
struct GraphStats {
  // Graphs recorded: one per batch size (under TP one with the logits gathered and one without),
  // again for another cache.
  int64_t recorded = 0;
  int64_t replayed = 0;  // steps run by replaying a graph
  int64_t failed = 0;    // recordings that failed: graphs are off for the model from then on
};

// One step's batch. Sequence s owns token rows [query_start[s], query_start[s+1]); its cache holds
// seq_lens[s] tokens after this step, in blocks block_tables[s * max_blocks_per_seq + j].
struct ForwardInput {
  absl::Span<const int32_t> token_ids;     // [tokens]
  absl::Span<const int32_t> positions;     // [tokens]
  absl::Span<const int64_t> slot_mapping;  // [tokens]: block * block_size + offset
  absl::Span<const int32_t> query_start;   // [seqs + 1]
  absl::Span<const int32_t> seq_lens;      // [seqs]
  absl::Span<const int32_t> block_tables;  // [seqs * max_blocks_per_seq]
  absl::Span<const int32_t> logits_rows;   // token rows whose logits are computed
};

// How one Forward call runs beyond its batch.
struct ForwardOptions {
  // Called with the model's (global) layer index once that layer's K and V are in the cache and
  // the stream has synchronised — for sending them on while later layers compute.
  std::function<void(int32_t)> kv_written;
  // Under tensor parallelism: true gathers every rank's vocabulary shard into [rows, vocab];
  // false returns this rank's own columns only, [rows, VocabColumns()] with the shard's row
  // stride (worker/vocab_parallel.h samples greedy rows from them without the gather).
  bool gather_logits = true;
  // On a pipeline stage that is not the last: called once the stage's layers are done, just
  // before the residual stream is sent to the next stage (the replica forwards the step's plan
  // there first, and a pipelining leader collects an older step's tokens). Its error ends Forward.
  std::function<absl::Status()> before_send;
};

// This rank's share of the model and its groups. The default is the whole model on one rank.
struct ModelParallelism {
  parallel::ShardPlan plan;              // tp_size == pp_size == 1 and no layers: whole model
  parallel::Communicator* tp = nullptr;  // required when plan.tp_size > 1; not owned
  parallel::Communicator* pp = nullptr;  // required when plan.pp_size > 1; not owned
};

class LlamaModel {
 public:
  // Validates the weights against the config (model/weights.h), then copies this rank's slices to
  // `backend`. The source may be destroyed afterwards; the communicators must outlive the model.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Create(
      const model::ModelConfig& config, const model::WeightSource& weights,
      kernels::Backend& backend, const LlamaModelOptions& options,
      const ModelParallelism& parallelism = {});
  ~LlamaModel();

  // Runs one step: writes this step's K/V into `cache` and returns the logits of `logits_rows`,
  // [logits_rows.size(), vocab] f32 on the device, valid until the next Forward — on the last
  // pipeline stage; earlier stages send their activations on and return an empty view. Every rank
  // of the replica must call Forward with the same input. kInvalidArgument when the batch is
  // inconsistent or exceeds the workspace; communicator errors as they come.
  absl::StatusOr<TensorView> Forward(const ForwardInput& input, KvCache& cache, Stream& stream,
                                     const ForwardOptions& options = {});

  const model::ModelConfig& config() const { return config_; }
  const parallel::ShardPlan& plan() const { return par_.plan; }
  // The TP group (null without tensor parallelism).
  parallel::Communicator* tp_group() const { return par_.plan.tp_size > 1 ? par_.tp : nullptr; }
  // How many of this rank's vocab_shard LM-head rows are real vocabulary (the last shard is
  // padded; with more ranks than the vocabulary fills, some hold none).
  int64_t VocabColumns() const;
  // The KV-cache shape this rank needs (layers of its stage, its KV heads).
  KvCacheConfig KvCacheShape(int32_t num_blocks, int32_t block_size, DataType dtype) const;
  const LlamaModelOptions& options() const { return options_; }
  // Bytes of weights on the device (what a decode step reads once).
  size_t weight_bytes() const { return weight_bytes_; }
  // The batch sizes whose decode steps run as graphs: the options' sizes, sorted, where the
  // backend records graphs and the model has one stage; empty otherwise.
  const std::vector<int32_t>& graph_batch_sizes() const { return graph_sizes_; }
  const GraphStats& graph_stats() const { return graph_stats_; }

 private:
  struct Weight;
  struct Layer;
  struct Workspace;
  struct RecordedStep;
  // A step's size as the kernels see it: tokens, sequences, logits rows.
  struct StepShape {
    int64_t tokens = 0;
    int64_t seqs = 0;
    int64_t rows = 0;
  };
  LlamaModel(const model::ModelConfig& config, kernels::Backend& backend,
             const LlamaModelOptions& options, const ModelParallelism& parallelism);
  absl::Status LoadWeights(const model::WeightSource& weights);
  absl::Status AllocateWorkspace();
  absl::Status Upload(const ForwardInput& input, Stream& stream);
  absl::Status ValidateInput(const ForwardInput& input, const KvCache& cache) const;
  // Enqueues the step over the uploaded input: every op of the forward, and the sends of a
  // stage that is not the last. Reads nothing of the host's input, so it can be recorded.
  absl::Status Compute(const StepShape& shape, KvCache& cache, Stream& stream,
                       const ForwardOptions& options);
  // What Forward returns for `rows` logits rows (after Compute).
  TensorView Output(int64_t rows, bool gather_logits) const;
  // The graph a step runs as: the index in graph_sizes_ of the smallest size that holds its batch,
  // or nullopt to run it eagerly.
  std::optional<size_t> GraphIndex(const ForwardInput& input, const ForwardOptions& options) const;
  // Fills rows [t, n) of the uploaded input with padding rows.
  absl::Status UploadPadding(size_t t, size_t n, Stream& stream);
  absl::StatusOr<TensorView> ForwardGraph(const ForwardInput& input, size_t index, KvCache& cache,
                                          Stream& stream, const ForwardOptions& options);

  model::ModelConfig config_;
  kernels::Backend& backend_;
  LlamaModelOptions options_;
  ModelParallelism par_;
  size_t weight_bytes_ = 0;
  std::unique_ptr<Weight> embedding_;   // first stage: vocab rows of this TP rank
  std::unique_ptr<Weight> final_norm_;  // last stage
  std::unique_ptr<Weight> lm_head_;     // last stage: vocab rows (the embedding's when tied)
  std::vector<Layer> layers_;
  std::unique_ptr<Workspace> ws_;
  std::vector<int32_t> graph_sizes_;
  std::vector<RecordedStep> graphs_;  // two per graph_sizes_ entry (RecordedStep)
  GraphStats graph_stats_;
};

}  // namespace tessera::worker
