#include "worker/llama_model.h"

#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status_macros.h"
#include "kernels/ops.h"
#include "model/rope.h"

namespace tessera::worker {
namespace {

// Appends `src` (host, contiguous) to `dst` converted to `dtype`.
void AppendConverted(const TensorView& src, DataType dtype, std::vector<char>& dst) {
  const size_t count = static_cast<size_t>(src.numel());
  const size_t offset = dst.size();
  dst.resize(offset + count * DataTypeSize(dtype));
  if (src.dtype() == dtype) {
    std::memcpy(dst.data() + offset, src.data(), count * DataTypeSize(dtype));
    return;
  }
  std::vector<float> f32(count);
  ConvertToF32(src.dtype(), src.data(), f32.data(), count);
  ConvertFromF32(f32.data(), dtype, dst.data() + offset, count);
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
  kernels::DeviceBuffer residual, normed, delta, qkv, attn, gate_up, act, gathered, logits;
  kernels::DeviceBuffer token_ids, positions, slots, query_start, seq_lens, block_tables,
      logits_rows, inv_freq;
  int32_t rope_half = 0;
};

LlamaModel::LlamaModel(const model::ModelConfig& config, kernels::Backend& backend,
                       const LlamaModelOptions& options)
    : config_(config), backend_(backend), options_(options) {}

LlamaModel::~LlamaModel() = default;

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Create(const model::ModelConfig& config,
                                                               const model::WeightSource& weights,
                                                               kernels::Backend& backend,
                                                               const LlamaModelOptions& options) {
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
  if (config.sliding_window.has_value()) {
    return absl::UnimplementedError(absl::StrCat(
        "LlamaModel: sliding-window attention (sliding_window=", *config.sliding_window,
        ") is not supported yet"));
  }
  TESSERA_RETURN_IF_ERROR(model::ValidateWeights(config, weights));
  auto llama = std::unique_ptr<LlamaModel>(new LlamaModel(config, backend, options));
  TESSERA_RETURN_IF_ERROR(llama->LoadWeights(weights));
  TESSERA_RETURN_IF_ERROR(llama->AllocateWorkspace());
  return llama;
}

absl::Status LlamaModel::LoadWeights(const model::WeightSource& weights) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Stream> stream, backend_.CreateStream());
  // Builds one device weight from the concatenation (along dim 0) of `names`.
  auto load =
      [&](std::initializer_list<std::string> names) -> absl::StatusOr<std::unique_ptr<Weight>> {
    std::vector<char> host;
    Shape shape;
    DataType dtype = DataType::kF32;
    bool first = true;
    for (const std::string& name : names) {
      TESSERA_ASSIGN_OR_RETURN(TensorView src, weights.Get(name));
      if (first) {
        dtype = options_.weight_dtype.value_or(src.dtype());
        shape = src.shape();
        first = false;
      } else {
        shape[0] += src.dim(0);
      }
      AppendConverted(src, dtype, host);
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

  TESSERA_ASSIGN_OR_RETURN(embedding_, load({"model.embed_tokens.weight"}));
  TESSERA_ASSIGN_OR_RETURN(final_norm_, load({"model.norm.weight"}));
  if (!config_.tie_word_embeddings) {
    TESSERA_ASSIGN_OR_RETURN(lm_head_, load({"lm_head.weight"}));
  }
  layers_.resize(config_.num_hidden_layers);
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    Layer& layer = layers_[i];
    TESSERA_ASSIGN_OR_RETURN(layer.input_norm, load({p + "input_layernorm.weight"}));
    TESSERA_ASSIGN_OR_RETURN(layer.qkv,
                             load({p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
                                   p + "self_attn.v_proj.weight"}));
    if (config_.attention_bias) {
      TESSERA_ASSIGN_OR_RETURN(layer.qkv_bias,
                               load({p + "self_attn.q_proj.bias", p + "self_attn.k_proj.bias",
                                     p + "self_attn.v_proj.bias"}));
    }
    if (config_.qk_norm) {
      TESSERA_ASSIGN_OR_RETURN(layer.q_norm, load({p + "self_attn.q_norm.weight"}));
      TESSERA_ASSIGN_OR_RETURN(layer.k_norm, load({p + "self_attn.k_norm.weight"}));
    }
    TESSERA_ASSIGN_OR_RETURN(layer.o_proj, load({p + "self_attn.o_proj.weight"}));
    TESSERA_ASSIGN_OR_RETURN(layer.post_norm, load({p + "post_attention_layernorm.weight"}));
    TESSERA_ASSIGN_OR_RETURN(layer.gate_up,
                             load({p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"}));
    TESSERA_ASSIGN_OR_RETURN(layer.down, load({p + "mlp.down_proj.weight"}));
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::AllocateWorkspace() {
  ws_ = std::make_unique<Workspace>();
  const size_t t = static_cast<size_t>(options_.max_num_tokens);
  const size_t s = static_cast<size_t>(options_.max_num_seqs);
  const size_t f = sizeof(float);
  const size_t hidden = static_cast<size_t>(config_.hidden_size);
  const size_t qkv = static_cast<size_t>(config_.q_size() + 2 * config_.kv_size());
  const size_t inter = static_cast<size_t>(config_.intermediate_size);
  const size_t vocab = static_cast<size_t>(config_.vocab_size);
  // Logits are computed for at most max_num_tokens rows (all positions, for scoring prompts).
  struct Request {
    kernels::DeviceBuffer* buffer;
    size_t bytes;
  };
  const Request requests[] = {
      {&ws_->residual, t * hidden * f},
      {&ws_->normed, t * hidden * f},
      {&ws_->delta, t * hidden * f},
      {&ws_->qkv, t * qkv * f},
      {&ws_->attn, t * static_cast<size_t>(config_.q_size()) * f},
      {&ws_->gate_up, t * 2 * inter * f},
      {&ws_->act, t * inter * f},
      {&ws_->gathered, t * hidden * f},
      {&ws_->logits, t * vocab * f},
      {&ws_->token_ids, t * sizeof(int32_t)},
      {&ws_->positions, t * sizeof(int32_t)},
      {&ws_->slots, t * sizeof(int64_t)},
      {&ws_->query_start, (s + 1) * sizeof(int32_t)},
      {&ws_->seq_lens, s * sizeof(int32_t)},
      {&ws_->block_tables, s * static_cast<size_t>(options_.max_blocks_per_seq) * sizeof(int32_t)},
      {&ws_->logits_rows, t * sizeof(int32_t)},
  };
  for (const Request& r : requests) {
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

absl::StatusOr<TensorView> LlamaModel::Forward(const ForwardInput& in, KvCache& cache,
                                               Stream& stream) {
  TESSERA_RETURN_IF_ERROR(ValidateInput(in, cache));
  TESSERA_RETURN_IF_ERROR(Upload(in, stream));
  using namespace kernels;  // NOLINT: the op names read best unqualified here
  const int64_t t = static_cast<int64_t>(in.token_ids.size());
  const int64_t seqs = static_cast<int64_t>(in.seq_lens.size());
  const int64_t rows = static_cast<int64_t>(in.logits_rows.size());
  const int64_t hidden = config_.hidden_size;
  const int64_t heads = config_.num_attention_heads;
  const int64_t kv_heads = config_.num_key_value_heads;
  const int64_t head_dim = config_.head_dim;
  const int64_t q_size = config_.q_size();
  const int64_t kv_size = config_.kv_size();
  const int64_t qkv_width = q_size + 2 * kv_size;
  const int64_t inter = config_.intermediate_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const DataType f32 = DataType::kF32;
  const Device dev = backend_.device();

  MutableTensorView residual = ws_->residual.View(f32, {t, hidden});
  MutableTensorView normed = ws_->normed.View(f32, {t, hidden});
  MutableTensorView delta = ws_->delta.View(f32, {t, hidden});
  MutableTensorView qkv = ws_->qkv.View(f32, {t, qkv_width});
  // q, k and v are column ranges of the fused projection: [t, heads, head_dim] with row stride
  // qkv_width.
  auto head_view = [&](int64_t column, int64_t n_heads) {
    char* base = static_cast<char*>(ws_->qkv.data()) + column * static_cast<int64_t>(sizeof(float));
    return MutableTensorView(base, f32, {t, n_heads, head_dim}, {qkv_width, head_dim, 1}, dev);
  };
  MutableTensorView q = head_view(0, heads);
  MutableTensorView k = head_view(q_size, kv_heads);
  MutableTensorView v = head_view(q_size + kv_size, kv_heads);
  MutableTensorView attn = ws_->attn.View(f32, {t, heads, head_dim});
  MutableTensorView gate_up = ws_->gate_up.View(f32, {t, 2 * inter});
  MutableTensorView act = ws_->act.View(f32, {t, inter});
  const TensorView ids = ws_->token_ids.View(DataType::kI32, {t});
  const TensorView positions = ws_->positions.View(DataType::kI32, {t});
  const TensorView slots = ws_->slots.View(DataType::kI64, {t});
  const TensorView query_start = ws_->query_start.View(DataType::kI32, {seqs + 1});
  const TensorView seq_lens = ws_->seq_lens.View(DataType::kI32, {seqs});
  const TensorView block_tables =
      ws_->block_tables.View(DataType::kI32, {seqs, options_.max_blocks_per_seq});
  const TensorView inv_freq = ws_->inv_freq.View(f32, {ws_->rope_half});
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));

  TESSERA_RETURN_IF_ERROR(Embedding(backend_, {ids, embedding_->view, residual, 0}, stream));
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& layer = layers_[i];
    // Layer 0 normalises the embedding; later layers fold the previous MLP output into the
    // residual first (fused add + norm).
    if (i == 0) {
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
    TESSERA_RETURN_IF_ERROR(KvWrite(
        backend_, {k, v, slots, cache.key(static_cast<int>(i)), cache.value(static_cast<int>(i))},
        stream));
    TESSERA_RETURN_IF_ERROR(
        PagedAttention(backend_,
                       {q, cache.key(static_cast<int>(i)), cache.value(static_cast<int>(i)),
                        block_tables, query_start, seq_lens, attn, scale},
                       stream));
    TESSERA_RETURN_IF_ERROR(
        Matmul(backend_, {attn.Reshape({t, q_size}), layer.o_proj->view, {}, delta}, stream));
    TESSERA_RETURN_IF_ERROR(
        RmsNorm(backend_, {delta, residual, layer.post_norm->view, normed, eps}, stream));
    TESSERA_RETURN_IF_ERROR(Matmul(backend_, {normed, layer.gate_up->view, {}, gate_up}, stream));
    TESSERA_RETURN_IF_ERROR(Swiglu(backend_, {gate_up, act}, stream));
    TESSERA_RETURN_IF_ERROR(Matmul(backend_, {act, layer.down->view, {}, delta}, stream));
  }
  TESSERA_RETURN_IF_ERROR(
      RmsNorm(backend_, {delta, residual, final_norm_->view, normed, eps}, stream));
  // Only the rows whose logits are wanted go through the LM head.
  MutableTensorView gathered = ws_->gathered.View(f32, {rows, hidden});
  TESSERA_RETURN_IF_ERROR(Embedding(
      backend_, {ws_->logits_rows.View(DataType::kI32, {rows}), normed, gathered, 0}, stream));
  MutableTensorView logits = ws_->logits.View(f32, {rows, config_.vocab_size});
  const TensorView head = lm_head_ ? lm_head_->view : embedding_->view;
  TESSERA_RETURN_IF_ERROR(Matmul(backend_, {gathered, head, {}, logits}, stream));
  return TensorView(logits);
}

}  // namespace tessera::worker
