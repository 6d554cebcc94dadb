#include "worker/llama_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/ops.h"
#include "model/rope.h"

namespace tessera::worker {
namespace {

// Appends `count` elements at `src` (host) to `dst` converted to `dtype`.
void AppendConverted(const void* src, DataType src_dtype, size_t count, DataType dtype,
                     std::vector<char>& dst) {
  const size_t offset = dst.size();
  dst.resize(offset + count * DataTypeSize(dtype));
  if (src_dtype == dtype) {
    std::memcpy(dst.data() + offset, src, count * DataTypeSize(dtype));
    return;
  }
  std::vector<float> f32(count);
  ConvertToF32(src_dtype, src, f32.data(), count);
  ConvertFromF32(f32.data(), dtype, dst.data() + offset, count);
}

// A part of a checkpoint tensor that one rank loads: `count` indices from `begin` along `dim`
// (0: rows, 1: columns), or the whole tensor. Rows past the tensor's end are zero padding (the
// last vocabulary shard).
struct Slice {
  std::string name;
  int dim = 0;
  int64_t begin = 0;
  int64_t count = -1;  // -1: the whole dimension
};

// Appends the slice of `src` (contiguous host tensor of rank 1 or 2) to `dst`; returns its shape.
Shape AppendSlice(const TensorView& src, const Slice& slice, DataType dtype,
                  std::vector<char>& dst) {
  const char* base = static_cast<const char*>(src.data());
  const size_t elem = src.element_size();
  if (slice.count < 0) {
    AppendConverted(base, src.dtype(), static_cast<size_t>(src.numel()), dtype, dst);
    return src.shape();
  }
  const int64_t cols = src.rank() == 2 ? src.dim(1) : 1;
  if (slice.dim == 0) {
    const int64_t available = std::max<int64_t>(0, std::min(slice.count, src.dim(0) - slice.begin));
    AppendConverted(base + slice.begin * cols * elem, src.dtype(),
                    static_cast<size_t>(available * cols), dtype, dst);
    dst.resize(
        dst.size() + static_cast<size_t>((slice.count - available) * cols) * DataTypeSize(dtype),
        0);
    Shape shape = src.shape();
    shape[0] = slice.count;
    return shape;
  }
  for (int64_t r = 0; r < src.dim(0); ++r) {
    AppendConverted(base + (r * cols + slice.begin) * elem, src.dtype(),
                    static_cast<size_t>(slice.count), dtype, dst);
  }
  return {src.dim(0), slice.count};
}

}  // namespace

// A tensor on the device and its view.
struct LlamaModel::Weight {
  kernels::DeviceBuffer buffer;
  TensorView view;
};

struct LlamaModel::Layer {
  std::unique_ptr<Weight> input_norm, qkv, qkv_bias, q_norm, k_norm, o_proj, post_norm, gate_up,
      down;
};

// Activations for up to max_num_tokens tokens, and the step's index tensors.
struct LlamaModel::Workspace {
  kernels::DeviceBuffer residual, normed, delta, qkv, attn, gate_up, act, gathered, logits,
      all_logits, full_logits;
  kernels::DeviceBuffer token_ids, positions, slots, query_start, seq_lens, block_tables,
      logits_rows, inv_freq;
  int32_t rope_half = 0;
  // Graph steps' padding, made once: 0, 1, 2, ... (query_start, logits rows) and 1s (seq_lens).
  std::vector<int32_t> count_up, ones;
};

// A decode step recorded at one batch size, and what it was recorded over.
// (Two per size under TP: with the logits gathered, for sampled rows, and without, for greedy
// ones, so that batches alternating between the two replay rather than record again.)
struct LlamaModel::RecordedStep {
  std::unique_ptr<kernels::Graph> graph;
  const KvCache* cache = nullptr;
  const void* cache_data = nullptr;  // its first layer's keys: another cache at the same address
};

LlamaModel::LlamaModel(const model::ModelConfig& config, kernels::Backend& backend,
                       const LlamaModelOptions& options, const ModelParallelism& parallelism)
    : config_(config), backend_(backend), options_(options), par_(parallelism) {}

KvCacheConfig LlamaModel::KvCacheShape(int32_t num_blocks, int32_t block_size,
                                       DataType dtype) const {
  KvCacheConfig c;
  c.num_layers = static_cast<int32_t>(par_.plan.num_layers());
  c.num_blocks = num_blocks;
  c.block_size = block_size;
  c.kv_heads = static_cast<int32_t>(par_.plan.num_kv_heads);
  c.head_dim = static_cast<int32_t>(config_.head_dim);
  c.dtype = dtype;
  return c;
}

LlamaModel::~LlamaModel() = default;

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Create(
    const model::ModelConfig& config, const model::WeightSource& weights, kernels::Backend& backend,
    const LlamaModelOptions& options, const ModelParallelism& parallelism) {
  if (options.max_num_tokens <= 0 || options.max_num_seqs <= 0 || options.max_blocks_per_seq <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("LlamaModel: max_num_tokens (", options.max_num_tokens, "), max_num_seqs (",
                     options.max_num_seqs, ") and max_blocks_per_seq (", options.max_blocks_per_seq,
                     ") must be positive"));
  }
  if (options.weight_dtype.has_value() && !IsFloatingPoint(*options.weight_dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("LlamaModel: weight dtype must be f32, f16 or bf16, got ",
                     DataTypeName(*options.weight_dtype)));
  }
  if (!IsFloatingPoint(options.activation_dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("LlamaModel: activation dtype must be f32, f16 or bf16, got ",
                     DataTypeName(options.activation_dtype)));
  }
  if (options.activation_dtype != DataType::kF32 && backend.device().type == DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat("LlamaModel: the ", backend.name(), " backend computes activations in f32 ",
                     "only, got ", DataTypeName(options.activation_dtype)));
  }
  if (config.sliding_window.has_value()) {
    return absl::UnimplementedError(absl::StrCat(
        "LlamaModel: sliding-window attention (sliding_window=", *config.sliding_window,
        ") is not supported yet"));
  }
  ModelParallelism par = parallelism;
  const parallel::ShardPlan& p = par.plan;
  if (p.tp_size == 1 && p.pp_size == 1 && p.layer_end == 0) {
    par.plan = parallel::SingleRankPlan(config);
  }
  if ((par.plan.tp_size > 1 && (par.tp == nullptr || par.tp->size() != par.plan.tp_size)) ||
      (par.plan.pp_size > 1 && (par.pp == nullptr || par.pp->size() != par.plan.pp_size))) {
    return absl::InvalidArgumentError(absl::StrCat("LlamaModel: the shard plan (",
                                                   par.plan.DebugString(),
                                                   ") needs TP and PP communicators of its sizes"));
  }
  const int32_t graph_limit = std::min(options.max_num_seqs, options.max_num_tokens);
  for (const int32_t size : options.graph_batch_sizes) {
    if (size < 1 || size > graph_limit) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LlamaModel: graph batch size ", size, " outside [1, ", graph_limit, "] (max_num_seqs ",
          options.max_num_seqs, ", max_num_tokens ", options.max_num_tokens, ")"));
    }
  }
  TESSERA_RETURN_IF_ERROR(model::ValidateWeights(config, weights));
  auto llama = std::unique_ptr<LlamaModel>(new LlamaModel(config, backend, options, par));
  TESSERA_RETURN_IF_ERROR(llama->LoadWeights(weights));
  TESSERA_RETURN_IF_ERROR(llama->AllocateWorkspace());
  // A pipeline stage's step waits for its activations and hands them on between host calls;
  // those steps stay eager.
  if (backend.supports_graphs() && par.plan.pp_size == 1) {
    std::vector<int32_t>& sizes = llama->graph_sizes_;
    sizes = options.graph_batch_sizes;
    std::sort(sizes.begin(), sizes.end());
    sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
    if (!sizes.empty()) {
      llama->graphs_.resize(2 * sizes.size());
      Workspace& w = *llama->ws_;
      w.count_up.resize(static_cast<size_t>(sizes.back()) + 1);
      std::iota(w.count_up.begin(), w.count_up.end(), 0);
      w.ones.assign(static_cast<size_t>(sizes.back()), 1);
    }
  }
  return llama;
}

absl::Status LlamaModel::LoadWeights(const model::WeightSource& weights) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Stream> stream, backend_.CreateStream());
  // Builds one device weight from the concatenation (along dim 0) of the slices.
  auto load = [&](std::initializer_list<Slice> slices) -> absl::StatusOr<std::unique_ptr<Weight>> {
    std::vector<char> host;
    Shape shape;
    DataType dtype = DataType::kF32;
    bool first = true;
    for (const Slice& slice : slices) {
      TESSERA_ASSIGN_OR_RETURN(TensorView src, weights.Get(slice.name));
      if (first) dtype = options_.weight_dtype.value_or(src.dtype());
      const Shape part = AppendSlice(src, slice, dtype, host);
      if (first) {
        shape = part;
        first = false;
      } else {
        shape[0] += part[0];
      }
    }
    auto weight = std::make_unique<Weight>();
    TESSERA_ASSIGN_OR_RETURN(weight->buffer, backend_.Allocate(host.size()));
    TESSERA_RETURN_IF_ERROR(
        backend_.CopyToDevice(host.data(), weight->buffer.data(), host.size(), *stream));
    // The staging buffer must outlive the copy.
    TESSERA_RETURN_IF_ERROR(stream->Synchronize());
    weight->view = weight->buffer.View(dtype, shape);
    weight_bytes_ += host.size();
    return weight;
  };

  const parallel::ShardPlan& plan = par_.plan;
  const int64_t hd = config_.head_dim;
  const Slice vocab_rows{"", 0, plan.vocab_begin, plan.vocab_shard};
  if (plan.first_stage()) {
    Slice s = vocab_rows;
    s.name = "model.embed_tokens.weight";
    TESSERA_ASSIGN_OR_RETURN(embedding_, load({s}));
  }
  if (plan.last_stage()) {
    TESSERA_ASSIGN_OR_RETURN(final_norm_, load({{"model.norm.weight"}}));
    Slice s = vocab_rows;
    s.name = config_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    TESSERA_ASSIGN_OR_RETURN(lm_head_, load({s}));
  }
  const Slice q_rows{"", 0, plan.head_begin * hd, plan.num_heads * hd};
  const Slice kv_rows{"", 0, plan.kv_head_begin * hd, plan.num_kv_heads * hd};
  auto named = [](Slice s, std::string name) {
    s.name = std::move(name);
    return s;
  };
  layers_.resize(plan.num_layers());
  for (int64_t i = 0; i < plan.num_layers(); ++i) {
    const std::string p = absl::StrCat("model.layers.", plan.layer_begin + i, ".");
    Layer& layer = layers_[i];
    TESSERA_ASSIGN_OR_RETURN(layer.input_norm, load({{p + "input_layernorm.weight"}}));
    TESSERA_ASSIGN_OR_RETURN(layer.qkv, load({named(q_rows, p + "self_attn.q_proj.weight"),
                                              named(kv_rows, p + "self_attn.k_proj.weight"),
                                              named(kv_rows, p + "self_attn.v_proj.weight")}));
    if (config_.attention_bias) {
      TESSERA_ASSIGN_OR_RETURN(layer.qkv_bias, load({named(q_rows, p + "self_attn.q_proj.bias"),
                                                     named(kv_rows, p + "self_attn.k_proj.bias"),
                                                     named(kv_rows, p + "self_attn.v_proj.bias")}));
    }
    if (config_.qk_norm) {
      TESSERA_ASSIGN_OR_RETURN(layer.q_norm, load({{p + "self_attn.q_norm.weight"}}));
      TESSERA_ASSIGN_OR_RETURN(layer.k_norm, load({{p + "self_attn.k_norm.weight"}}));
    }
    TESSERA_ASSIGN_OR_RETURN(
        layer.o_proj,
        load({{p + "self_attn.o_proj.weight", 1, plan.head_begin * hd, plan.num_heads * hd}}));
    TESSERA_ASSIGN_OR_RETURN(layer.post_norm, load({{p + "post_attention_layernorm.weight"}}));
    const Slice inter_rows{"", 0, plan.inter_begin, plan.inter_size};
    TESSERA_ASSIGN_OR_RETURN(layer.gate_up, load({named(inter_rows, p + "mlp.gate_proj.weight"),
                                                  named(inter_rows, p + "mlp.up_proj.weight")}));
    TESSERA_ASSIGN_OR_RETURN(
        layer.down, load({{p + "mlp.down_proj.weight", 1, plan.inter_begin, plan.inter_size}}));
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::AllocateWorkspace() {
  ws_ = std::make_unique<Workspace>();
  const size_t t = static_cast<size_t>(options_.max_num_tokens);
  const size_t s = static_cast<size_t>(options_.max_num_seqs);
  const size_t f = sizeof(float);
  const size_t hidden = static_cast<size_t>(config_.hidden_size);
  const parallel::ShardPlan& plan = par_.plan;
  const size_t q_size = static_cast<size_t>(plan.num_heads * config_.head_dim);
  const size_t qkv = q_size + 2 * static_cast<size_t>(plan.num_kv_heads * config_.head_dim);
  const size_t inter = static_cast<size_t>(plan.inter_size);
  const size_t shard = static_cast<size_t>(plan.vocab_shard);
  const size_t tp = static_cast<size_t>(plan.tp_size);
  const size_t vocab = static_cast<size_t>(config_.vocab_size);
  // Logits are computed for at most max_num_tokens rows (all positions, for scoring prompts).
  struct Request {
    kernels::DeviceBuffer* buffer;
    size_t bytes;
  };
  const size_t a = DataTypeSize(options_.activation_dtype);
  const Request requests[] = {
      {&ws_->residual, t * hidden * a},
      {&ws_->normed, t * hidden * a},
      {&ws_->delta, t * hidden * a},
      {&ws_->qkv, t * qkv * a},
      {&ws_->attn, t * q_size * a},
      {&ws_->gate_up, t * 2 * inter * a},
      {&ws_->act, t * inter * a},
      {&ws_->gathered, t * hidden * a},
      {&ws_->logits, t * shard * f},
      // TP: every rank's logits shard, then the rows reassembled to [rows, vocab].
      {&ws_->all_logits, tp > 1 ? tp * t * shard * f : 0},
      {&ws_->full_logits, tp > 1 ? t * vocab * f : 0},
      {&ws_->token_ids, t * sizeof(int32_t)},
      {&ws_->positions, t * sizeof(int32_t)},
      {&ws_->slots, t * sizeof(int64_t)},
      {&ws_->query_start, (s + 1) * sizeof(int32_t)},
      {&ws_->seq_lens, s * sizeof(int32_t)},
      {&ws_->block_tables, s * static_cast<size_t>(options_.max_blocks_per_seq) * sizeof(int32_t)},
      {&ws_->logits_rows, t * sizeof(int32_t)},
  };
  for (const Request& r : requests) {
    if (r.bytes == 0) continue;
    TESSERA_ASSIGN_OR_RETURN(*r.buffer, backend_.Allocate(r.bytes));
  }
  const std::vector<float> inv_freq = model::RopeInvFreq(config_);
  ws_->rope_half = static_cast<int32_t>(inv_freq.size());
  TESSERA_ASSIGN_OR_RETURN(ws_->inv_freq, backend_.Allocate(inv_freq.size() * f));
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Stream> stream, backend_.CreateStream());
  TESSERA_RETURN_IF_ERROR(
      backend_.CopyToDevice(inv_freq.data(), ws_->inv_freq.data(), inv_freq.size() * f, *stream));
  return stream->Synchronize();
}

absl::Status LlamaModel::ValidateInput(const ForwardInput& in, const KvCache& cache) const {
  const KvCacheConfig& kv = cache.config();
  if (kv.num_layers != par_.plan.num_layers() || kv.kv_heads != par_.plan.num_kv_heads ||
      kv.head_dim != config_.head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("Forward: the KV cache holds ", kv.num_layers, " layers of ", kv.kv_heads,
                     " heads of ", kv.head_dim, "; this rank needs ", par_.plan.num_layers(),
                     " of ", par_.plan.num_kv_heads, " of ", config_.head_dim));
  }
  const size_t tokens = in.token_ids.size();
  if (tokens == 0 || in.seq_lens.empty()) {
    return absl::InvalidArgumentError("Forward: empty batch");
  }
  if (tokens > static_cast<size_t>(options_.max_num_tokens) ||
      in.seq_lens.size() > static_cast<size_t>(options_.max_num_seqs) ||
      in.logits_rows.size() > static_cast<size_t>(options_.max_num_tokens)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Forward: batch of ", tokens, " tokens, ", in.seq_lens.size(), " sequences and ",
        in.logits_rows.size(), " logits rows exceeds the workspace (", options_.max_num_tokens,
        " tokens, ", options_.max_num_seqs, " sequences)"));
  }
  const size_t seqs = in.seq_lens.size();
  if (in.positions.size() != tokens || in.slot_mapping.size() != tokens ||
      in.query_start.size() != seqs + 1 ||
      in.block_tables.size() != seqs * static_cast<size_t>(options_.max_blocks_per_seq)) {
    return absl::InvalidArgumentError(
        "Forward: token_ids, positions, slot_mapping, query_start, seq_lens and block_tables "
        "disagree in size");
  }
  if (in.query_start.front() != 0 || in.query_start.back() != static_cast<int32_t>(tokens)) {
    return absl::InvalidArgumentError("Forward: query_start must run from 0 to the token count");
  }
  const int64_t capacity =
      static_cast<int64_t>(options_.max_blocks_per_seq) * cache.config().block_size;
  for (size_t i = 0; i < seqs; ++i) {
    const int32_t q_len = in.query_start[i + 1] - in.query_start[i];
    if (q_len < 0 || in.seq_lens[i] < q_len || in.seq_lens[i] > capacity) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: sequence ", i, " has ", q_len,
                                                     " query tokens and seq_len ", in.seq_lens[i],
                                                     " (capacity ", capacity, ")"));
    }
  }
  for (int32_t id : in.token_ids) {
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Forward: token id ", id, " outside the vocabulary [0, ", config_.vocab_size, ")"));
    }
  }
  for (int32_t row : in.logits_rows) {
    if (row < 0 || static_cast<size_t>(row) >= tokens) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: logits row ", row, " of ", tokens));
    }
  }
  const int64_t slots = static_cast<int64_t>(cache.config().num_blocks) * cache.config().block_size;
  for (int64_t slot : in.slot_mapping) {
    if (slot >= slots) {
      return absl::InvalidArgumentError(
          absl::StrCat("Forward: slot ", slot, " past the cache (", slots, " slots)"));
    }
  }
  for (int32_t block : in.block_tables) {
    if (block < 0 || block >= cache.config().num_blocks) {
      return absl::InvalidArgumentError(
          absl::StrCat("Forward: block id ", block, " of ", cache.config().num_blocks));
    }
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::Upload(const ForwardInput& in, Stream& stream) {
  auto copy = [&](const auto& span, kernels::DeviceBuffer& dst) {
    return backend_.CopyToDevice(span.data(), dst.data(), span.size() * sizeof(span[0]), stream);
  };
  TESSERA_RETURN_IF_ERROR(copy(in.token_ids, ws_->token_ids));
  TESSERA_RETURN_IF_ERROR(copy(in.positions, ws_->positions));
  TESSERA_RETURN_IF_ERROR(copy(in.slot_mapping, ws_->slots));
  TESSERA_RETURN_IF_ERROR(copy(in.query_start, ws_->query_start));
  TESSERA_RETURN_IF_ERROR(copy(in.seq_lens, ws_->seq_lens));
  TESSERA_RETURN_IF_ERROR(copy(in.block_tables, ws_->block_tables));
  return copy(in.logits_rows, ws_->logits_rows);
}

int64_t LlamaModel::VocabColumns() const {
  const parallel::ShardPlan& plan = par_.plan;
  return std::clamp<int64_t>(config_.vocab_size - plan.vocab_begin, 0, plan.vocab_shard);
}

absl::StatusOr<TensorView> LlamaModel::Forward(const ForwardInput& in, KvCache& cache,
                                               Stream& stream, const ForwardOptions& options) {
  TESSERA_RETURN_IF_ERROR(ValidateInput(in, cache));
  if (const std::optional<size_t> graph = GraphIndex(in, options)) {
    return ForwardGraph(in, *graph, cache, stream, options);
  }
  TESSERA_RETURN_IF_ERROR(Upload(in, stream));
  const StepShape shape{static_cast<int64_t>(in.token_ids.size()),
                        static_cast<int64_t>(in.seq_lens.size()),
                        static_cast<int64_t>(in.logits_rows.size())};
  TESSERA_RETURN_IF_ERROR(Compute(shape, cache, stream, options));
  return Output(shape.rows, options.gather_logits);
}

std::optional<size_t> LlamaModel::GraphIndex(const ForwardInput& in,
                                             const ForwardOptions& options) const {
  // A step that reports its layers runs host code between kernels. (before_send is never called
  // here: graph_sizes_ is empty on a model of several stages.)
  if (graph_sizes_.empty() || graph_stats_.failed > 0 || options.kv_written) return std::nullopt;
  const size_t t = in.token_ids.size();
  if (in.seq_lens.size() != t || in.logits_rows.size() != t ||
      t > static_cast<size_t>(graph_sizes_.back())) {
    return std::nullopt;
  }
  for (size_t i = 0; i < t; ++i) {
    if (in.query_start[i] != static_cast<int32_t>(i) ||
        in.logits_rows[i] != static_cast<int32_t>(i)) {
      return std::nullopt;
    }
  }
  return static_cast<size_t>(
      std::lower_bound(graph_sizes_.begin(), graph_sizes_.end(), static_cast<int32_t>(t)) -
      graph_sizes_.begin());
}

absl::Status LlamaModel::UploadPadding(size_t t, size_t n, Stream& stream) {
  // Rows [t, n) of a step padded to a graph's size: each a sequence of one token (id 0) at
  // position 0 whose K/V go nowhere (slot -1) and which attends to slot 0 of block 0 — memory it
  // does not own but only reads; its logits row is dropped. The batch's own query_start and
  // logits rows already count up from 0 (GraphIndex), so the padding continues them.
  if (t == n) return absl::OkStatus();
  const size_t pad = n - t;
  const auto width = static_cast<size_t>(options_.max_blocks_per_seq);
  auto at = [](const kernels::DeviceBuffer& buffer, size_t element_bytes, size_t index) {
    return static_cast<char*>(buffer.data()) + index * element_bytes;
  };
  constexpr size_t i32 = sizeof(int32_t);
  Workspace& w = *ws_;
  TESSERA_RETURN_IF_ERROR(backend_.Memset(at(w.token_ids, i32, t), 0, pad * i32, stream));
  TESSERA_RETURN_IF_ERROR(backend_.Memset(at(w.positions, i32, t), 0, pad * i32, stream));
  TESSERA_RETURN_IF_ERROR(  // every byte 0xff: -1
      backend_.Memset(at(w.slots, sizeof(int64_t), t), 0xff, pad * sizeof(int64_t), stream));
  TESSERA_RETURN_IF_ERROR(
      backend_.Memset(at(w.block_tables, i32, t * width), 0, pad * width * i32, stream));
  TESSERA_RETURN_IF_ERROR(
      backend_.CopyToDevice(w.ones.data(), at(w.seq_lens, i32, t), pad * i32, stream));
  TESSERA_RETURN_IF_ERROR(
      backend_.CopyToDevice(&w.count_up[t + 1], at(w.query_start, i32, t + 1), pad * i32, stream));
  return backend_.CopyToDevice(&w.count_up[t], at(w.logits_rows, i32, t), pad * i32, stream);
}

absl::StatusOr<TensorView> LlamaModel::ForwardGraph(const ForwardInput& in, size_t index,
                                                    KvCache& cache, Stream& stream,
                                                    const ForwardOptions& options) {
  const int32_t size = graph_sizes_[index];
  TESSERA_RETURN_IF_ERROR(Upload(in, stream));
  TESSERA_RETURN_IF_ERROR(UploadPadding(in.token_ids.size(), static_cast<size_t>(size), stream));

  const StepShape shape{size, size, size};
  // Only TP gathers logits; one graph a size serves either way without it.
  const bool gather = options.gather_logits || tp_group() == nullptr;
  const void* cache_data = cache.key(0).data();
  RecordedStep& step = graphs_[2 * index + (gather ? 1 : 0)];
  if (step.graph != nullptr && step.cache == &cache && step.cache_data == cache_data) {
    TESSERA_RETURN_IF_ERROR(step.graph->Launch(stream));
    ++graph_stats_.replayed;
    return Output(static_cast<int64_t>(in.token_ids.size()), gather);
  }
  // The first step of a size runs eagerly: it also warms up what a recording must not do itself
  // (cuBLAS choosing its kernels, CUDA loading modules). Then the size is recorded for the next.
  ForwardOptions eager;
  eager.gather_logits = gather;
  TESSERA_RETURN_IF_ERROR(Compute(shape, cache, stream, eager));
  KvCache* recorded_cache = &cache;
  absl::StatusOr<std::unique_ptr<kernels::Graph>> graph =
      backend_.CaptureGraph(stream, [this, shape, recorded_cache, gather](Stream& replay) {
        ForwardOptions replay_options;
        replay_options.gather_logits = gather;
        return Compute(shape, *recorded_cache, replay, replay_options);
      });
  if (graph.ok()) {
    step = RecordedStep{*std::move(graph), &cache, cache_data};
    ++graph_stats_.recorded;
  } else {
    // This step's result stands (it ran eagerly); every later step runs eagerly too.
    ++graph_stats_.failed;
    graphs_.clear();
    graphs_.resize(2 * graph_sizes_.size());
    TESSERA_LOG(WARNING) << "recording the decode step of batch " << size
                         << " as a graph failed, running every step eagerly from now on: "
                         << graph.status();
  }
  return Output(static_cast<int64_t>(in.token_ids.size()), gather);
}

TensorView LlamaModel::Output(int64_t rows, bool gather_logits) const {
  const parallel::ShardPlan& plan = par_.plan;
  const int64_t shard = plan.vocab_shard;
  TensorView logits = ws_->logits.View(DataType::kF32, {rows, shard});
  if (!plan.last_stage()) return logits.Rows(0, 0);
  if (rows == 0 || tp_group() == nullptr) return logits;
  if (!gather_logits) {
    // This rank's real columns only: the padding of the last shard would otherwise compete.
    return TensorView(logits.data(), DataType::kF32, {rows, VocabColumns()}, {shard, 1},
                      logits.device());
  }
  return ws_->full_logits.View(DataType::kF32, {rows, config_.vocab_size});
}

absl::Status LlamaModel::Compute(const StepShape& shape, KvCache& cache, Stream& stream,
                                 const ForwardOptions& options) {
  using namespace kernels;  // NOLINT: the op names read best unqualified here
  const parallel::ShardPlan& plan = par_.plan;
  const int64_t t = shape.tokens;
  const int64_t seqs = shape.seqs;
  const int64_t rows = shape.rows;
  const int64_t hidden = config_.hidden_size;
  const int64_t heads = plan.num_heads;
  const int64_t kv_heads = plan.num_kv_heads;
  const int64_t head_dim = config_.head_dim;
  const int64_t q_size = heads * head_dim;
  const int64_t kv_size = kv_heads * head_dim;
  const int64_t qkv_width = q_size + 2 * kv_size;
  const int64_t inter = plan.inter_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const DataType f32 = DataType::kF32;
  const Device dev = backend_.device();
  parallel::Communicator* tp = plan.tp_size > 1 ? par_.tp : nullptr;
  auto all_reduce = [&](const MutableTensorView& x) {
    return tp == nullptr ? absl::OkStatus() : tp->AllReduce(x, x, parallel::ReduceOp::kSum, stream);
  };

  // Activations in the model's activation dtype (f32, or the GPU's bf16/f16); logits f32.
  const DataType a = options_.activation_dtype;
  MutableTensorView residual = ws_->residual.View(a, {t, hidden});
  MutableTensorView normed = ws_->normed.View(a, {t, hidden});
  MutableTensorView delta = ws_->delta.View(a, {t, hidden});
  MutableTensorView qkv = ws_->qkv.View(a, {t, qkv_width});
  // q, k and v are column ranges of the fused projection: [t, heads, head_dim] with row stride
  // qkv_width.
  auto head_view = [&](int64_t column, int64_t n_heads) {
    char* base =
        static_cast<char*>(ws_->qkv.data()) + column * static_cast<int64_t>(DataTypeSize(a));
    return MutableTensorView(base, a, {t, n_heads, head_dim}, {qkv_width, head_dim, 1}, dev);
  };
  MutableTensorView q = head_view(0, heads);
  MutableTensorView k = head_view(q_size, kv_heads);
  MutableTensorView v = head_view(q_size + kv_size, kv_heads);
  MutableTensorView attn = ws_->attn.View(a, {t, heads, head_dim});
  MutableTensorView gate_up = ws_->gate_up.View(a, {t, 2 * inter});
  MutableTensorView act = ws_->act.View(a, {t, inter});
  const TensorView ids = ws_->token_ids.View(DataType::kI32, {t});
  const TensorView positions = ws_->positions.View(DataType::kI32, {t});
  const TensorView slots = ws_->slots.View(DataType::kI64, {t});
  const TensorView query_start = ws_->query_start.View(DataType::kI32, {seqs + 1});
  const TensorView seq_lens = ws_->seq_lens.View(DataType::kI32, {seqs});
  const TensorView block_tables =
      ws_->block_tables.View(DataType::kI32, {seqs, options_.max_blocks_per_seq});
  const TensorView inv_freq = ws_->inv_freq.View(f32, {ws_->rope_half});
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));

  // The residual stream enters: from the embedding on the first stage, from the previous stage
  // otherwise (residual and the pending sub-layer output `delta`).
  if (plan.first_stage()) {
    TESSERA_RETURN_IF_ERROR(
        Embedding(backend_, {ids, embedding_->view, residual, plan.vocab_begin}, stream));
    TESSERA_RETURN_IF_ERROR(all_reduce(residual));  // each rank looked up its vocab rows
  } else {
    TESSERA_RETURN_IF_ERROR(par_.pp->Recv(residual, plan.pp_rank - 1, stream));
    TESSERA_RETURN_IF_ERROR(par_.pp->Recv(delta, plan.pp_rank - 1, stream));
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& layer = layers_[i];
    // The model's first layer normalises the embedding; later layers fold the previous MLP
    // output into the residual first (fused add + norm).
    if (i == 0 && plan.first_stage()) {
      TESSERA_RETURN_IF_ERROR(
          RmsNorm(backend_, {residual, {}, layer.input_norm->view, normed, eps}, stream));
    } else {
      TESSERA_RETURN_IF_ERROR(
          RmsNorm(backend_, {delta, residual, layer.input_norm->view, normed, eps}, stream));
    }
    TESSERA_RETURN_IF_ERROR(
        Matmul(backend_,
               {normed, layer.qkv->view, layer.qkv_bias ? layer.qkv_bias->view : TensorView(), qkv},
               stream));
    if (config_.qk_norm) {
      TESSERA_RETURN_IF_ERROR(RmsNorm(backend_, {q, {}, layer.q_norm->view, q, eps}, stream));
      TESSERA_RETURN_IF_ERROR(RmsNorm(backend_, {k, {}, layer.k_norm->view, k, eps}, stream));
    }
    TESSERA_RETURN_IF_ERROR(Rope(backend_, {q, k, positions, inv_freq}, stream));
    const int cache_layer = static_cast<int>(i);
    TESSERA_RETURN_IF_ERROR(
        KvWrite(backend_, {k, v, slots, cache.key(cache_layer), cache.value(cache_layer)}, stream));
    if (options.kv_written) {
      TESSERA_RETURN_IF_ERROR(stream.Synchronize());
      options.kv_written(static_cast<int32_t>(par_.plan.layer_begin) + cache_layer);
    }
    TESSERA_RETURN_IF_ERROR(PagedAttention(backend_,
                                           {q, cache.key(cache_layer), cache.value(cache_layer),
                                            block_tables, query_start, seq_lens, attn, scale},
                                           stream));
    TESSERA_RETURN_IF_ERROR(
        Matmul(backend_, {attn.Reshape({t, q_size}), layer.o_proj->view, {}, delta}, stream));
    TESSERA_RETURN_IF_ERROR(all_reduce(delta));  // row-parallel o_proj
    TESSERA_RETURN_IF_ERROR(
        RmsNorm(backend_, {delta, residual, layer.post_norm->view, normed, eps}, stream));
    TESSERA_RETURN_IF_ERROR(Matmul(backend_, {normed, layer.gate_up->view, {}, gate_up}, stream));
    TESSERA_RETURN_IF_ERROR(Swiglu(backend_, {gate_up, act}, stream));
    TESSERA_RETURN_IF_ERROR(Matmul(backend_, {act, layer.down->view, {}, delta}, stream));
    TESSERA_RETURN_IF_ERROR(all_reduce(delta));  // row-parallel down_proj
  }
  MutableTensorView logits = ws_->logits.View(f32, {rows, plan.vocab_shard});
  if (!plan.last_stage()) {
    if (options.before_send) TESSERA_RETURN_IF_ERROR(options.before_send());
    TESSERA_RETURN_IF_ERROR(par_.pp->Send(residual, plan.pp_rank + 1, stream));
    return par_.pp->Send(delta, plan.pp_rank + 1, stream);
  }
  TESSERA_RETURN_IF_ERROR(
      RmsNorm(backend_, {delta, residual, final_norm_->view, normed, eps}, stream));
  if (rows == 0) return absl::OkStatus();  // a step of prefill chunks only
  // Only the rows whose logits are wanted go through the LM head.
  MutableTensorView gathered = ws_->gathered.View(a, {rows, hidden});
  TESSERA_RETURN_IF_ERROR(Embedding(
      backend_, {ws_->logits_rows.View(DataType::kI32, {rows}), normed, gathered, 0}, stream));
  TESSERA_RETURN_IF_ERROR(Matmul(backend_, {gathered, lm_head_->view, {}, logits}, stream));
  if (tp == nullptr || !options.gather_logits) return absl::OkStatus();
  const int64_t shard = plan.vocab_shard;
  // Vocab-parallel LM head: gather every rank's [rows, shard] and lay the shards side by side,
  // dropping the padding of the last shard.
  MutableTensorView all = ws_->all_logits.View(f32, {plan.tp_size * rows, shard});
  TESSERA_RETURN_IF_ERROR(tp->AllGather(logits, all, stream));
  MutableTensorView full = ws_->full_logits.View(f32, {rows, config_.vocab_size});
  const size_t f = sizeof(float);
  for (int64_t r = 0; r < plan.tp_size; ++r) {
    const int64_t begin = r * shard;
    const int64_t width = std::min(shard, config_.vocab_size - begin);
    if (width <= 0) break;
    for (int64_t row = 0; row < rows; ++row) {
      TESSERA_RETURN_IF_ERROR(backend_.CopyOnDevice(
          static_cast<const char*>(all.data()) + ((r * rows + row) * shard) * f,
          static_cast<char*>(full.data()) + (row * config_.vocab_size + begin) * f,
          static_cast<size_t>(width) * f, stream));
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera::worker
