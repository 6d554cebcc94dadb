// Validation of every op, written once for all backends, then dispatch through the backend's
// OpTable. Only shapes, dtypes, devices, strides and aliasing are checked here: values held in
// device memory (ids, slots, block tables) are checked by the backends that can read them.
#include "kernels/ops.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/validate.h"

namespace tessera::kernels {
namespace {

using internal::DataTypeBit;
using internal::kFloatTypes;
using internal::OpValidator;

constexpr internal::DataTypeSet kI32 = DataTypeBit(DataType::kI32);
constexpr internal::DataTypeSet kI64 = DataTypeBit(DataType::kI64);
constexpr internal::DataTypeSet kF32 = DataTypeBit(DataType::kF32);

template <typename Params>
absl::Status Dispatch(absl::string_view op, absl::Status (*fn)(Backend&, const Params&, Stream&),
                      Backend& backend, const Params& params, Stream& stream) {
  if (fn == nullptr) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": not implemented by the ", backend.name(), " backend"));
  }
  return fn(backend, params, stream);
}

absl::Status ValidateEmbedding(const OpValidator& v, const EmbeddingParams& p) {
  TESSERA_RETURN_IF_ERROR(v.Tensor("ids", p.ids, 1, kI32));
  TESSERA_RETURN_IF_ERROR(v.Tensor("table", p.table, 2, kFloatTypes));
  TESSERA_RETURN_IF_ERROR(v.Tensor("output", p.output, 2, v.activation_types()));
  TESSERA_RETURN_IF_ERROR(
      v.Shape("output", p.output, {p.ids.dim(0), p.table.dim(1)}, "[ids.size, table.cols]"));
  if (p.row_offset < 0) {
    return v.Error(absl::StrCat("row_offset expected >= 0, got ", p.row_offset));
  }
  TESSERA_RETURN_IF_ERROR(v.NotSelfOverlapping("output", p.output));
  TESSERA_RETURN_IF_ERROR(v.Disjoint("output", p.output, "table", p.table));
  return v.Disjoint("output", p.output, "ids", p.ids);
}

absl::Status ValidateRmsNorm(const OpValidator& v, const RmsNormParams& p) {
  TESSERA_RETURN_IF_ERROR(v.TensorRanks("input", p.input, 2, 3, v.activation_types()));
  TESSERA_RETURN_IF_ERROR(v.Tensor("weight", p.weight, 1, kFloatTypes));
  TESSERA_RETURN_IF_ERROR(v.TensorRanks("output", p.output, 2, 3, v.activation_types()));
  TESSERA_RETURN_IF_ERROR(v.SameDataType("output", p.output, "input", p.input));
  TESSERA_RETURN_IF_ERROR(v.Shape("output", p.output, p.input.shape(), "the shape of input"));
  const int64_t hidden = p.input.dim(-1);
  if (hidden < 1) return v.Error("field input expected a non-empty last dimension, got 0");
  TESSERA_RETURN_IF_ERROR(v.Shape("weight", p.weight, {hidden}, "[input.hidden]"));
  if (!std::isfinite(p.epsilon) || p.epsilon < 0) {
    return v.Error(absl::StrCat("epsilon expected finite and >= 0, got ", p.epsilon));
  }
  TESSERA_RETURN_IF_ERROR(v.NotSelfOverlapping("output", p.output));
  if (!internal::SameView(p.output, p.input)) {
    TESSERA_RETURN_IF_ERROR(v.Disjoint("output", p.output, "input", p.input));
  }
  TESSERA_RETURN_IF_ERROR(v.Disjoint("output", p.output, "weight", p.weight));
  if (!p.residual.empty()) {
    TESSERA_RETURN_IF_ERROR(v.TensorRanks("residual", p.residual, 2, 3, v.activation_types()));
    TESSERA_RETURN_IF_ERROR(v.SameDataType("residual", p.residual, "input", p.input));
    TESSERA_RETURN_IF_ERROR(v.Shape("residual", p.residual, p.input.shape(), "the shape of input"));
    TESSERA_RETURN_IF_ERROR(v.NotSelfOverlapping("residual", p.residual));
    TESSERA_RETURN_IF_ERROR(v.Disjoint("output", p.output, "residual", p.residual));
    if (!internal::SameView(p.residual, p.input)) {
      TESSERA_RETURN_IF_ERROR(v.Disjoint("residual", p.residual, "input", p.input));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateMatmul(const OpValidator& v, const MatmulParams& p) {
  TESSERA_RETURN_IF_ERROR(v.Tensor("input", p.input, 2, v.activation_types()));
  TESSERA_RETURN_IF_ERROR(v.Tensor("weight", p.weight, 2, kFloatTypes));
  TESSERA_RETURN_IF_ERROR(v.Contiguous("weight", p.weight));
  TESSERA_RETURN_IF_ERROR(v.Tensor("output", p.output, 2, v.activation_types()));
  TESSERA_RETURN_IF_ERROR(v.SameDataType("output", p.output, "input", p.input));
  const int64_t m = p.input.dim(0);
  const int64_t k = p.input.dim(1);
  const int64_t n = p.weight.dim(0);
  if (p.weight.dim(1) != k) {
    return v.Error(absl::StrCat("field weight expected shape [n, ", k, "] (k = input.cols), got ",
                                ShapeToString(p.weight.shape())));
  }
  TESSERA_RETURN_IF_ERROR(v.Shape("output", p.output, {m, n}, "[input.rows, weight.rows]"));
  TESSERA_RETURN_IF_ERROR(v.OptionalTensor("bias", p.bias, 1, kFloatTypes));
  if (!p.bias.empty()) {
    TESSERA_RETURN_IF_ERROR(v.Shape("bias", p.bias, {n}, "[weight.rows]"));
    TESSERA_RETURN_IF_ERROR(v.Disjoint("output", p.output, "bias", p.bias));
  }
  TESSERA_RETURN_IF_ERROR(v.NotSelfOverlapping("output", p.output));
  TESSERA_RETURN_IF_ERROR(v.Disjoint("output", p.output, "input", p.input));
  return v.Disjoint("output", p.output, "weight", p.weight);
}

absl::Status ValidateRope(const OpValidator& v, const RopeParams& p) {
  TESSERA_RETURN_IF_ERROR(v.Tensor("query", p.query, 3, v.activation_types()));
  TESSERA_RETURN_IF_ERROR(v.Tensor("key", p.key, 3, v.activation_types()));
  TESSERA_RETURN_IF_ERROR(v.SameDataType("key", p.key, "query", p.query));
  TESSERA_RETURN_IF_ERROR(v.Tensor("positions", p.positions, 1, kI32));
  TESSERA_RETURN_IF_ERROR(v.Tensor("inv_freq", p.inv_freq, 1, kF32));
  const int64_t tokens = p.query.dim(0);
  const int64_t head_dim = p.query.dim(2);
  TESSERA_RETURN_IF_ERROR(v.Shape("key", p.key, {tokens, p.key.dim(1), head_dim},
                                  "[query.tokens, kv_heads, query.head_dim]"));
  TESSERA_RETURN_IF_ERROR(v.Shape("positions", p.positions, {tokens}, "[query.tokens]"));
  if (2 * p.inv_freq.dim(0) > head_dim) {
    return v.Error(absl::StrCat("field inv_freq expected at most head_dim / 2 = ", head_dim / 2,
                                " elements (rotary_dim <= head_dim), got ",
                                ShapeToString(p.inv_freq.shape())));
  }
  TESSERA_RETURN_IF_ERROR(v.NotSelfOverlapping("query", p.query));
  TESSERA_RETURN_IF_ERROR(v.NotSelfOverlapping("key", p.key));
  TESSERA_RETURN_IF_ERROR(v.Disjoint("query", p.query, "key", p.key));
  TESSERA_RETURN_IF_ERROR(v.Disjoint("query", p.query, "positions", p.positions));
  TESSERA_RETURN_IF_ERROR(v.Disjoint("key", p.key, "positions", p.positions));
  TESSERA_RETURN_IF_ERROR(v.Disjoint("query", p.query, "inv_freq", p.inv_freq));
  return v.Disjoint("key", p.key, "inv_freq", p.inv_freq);
}

absl::Status ValidateSwiglu(const OpValidator& v, const SwigluParams& p) {
  TESSERA_RETURN_IF_ERROR(v.Tensor("gate_up", p.gate_up, 2, v.activation_types()));
  TESSERA_RETURN_IF_ERROR(v.Tensor("output", p.output, 2, v.activation_types()));
  TESSERA_RETURN_IF_ERROR(v.SameDataType("output", p.output, "gate_up", p.gate_up));
  if (p.gate_up.dim(1) % 2 != 0) {
    return v.Error(
        absl::StrCat("field gate_up expected an even number of columns (2 * inter), got ",
                     ShapeToString(p.gate_up.shape())));
  }
  TESSERA_RETURN_IF_ERROR(v.Shape("output", p.output, {p.gate_up.dim(0), p.gate_up.dim(1) / 2},
                                  "[gate_up.rows, gate_up.cols / 2]"));
  TESSERA_RETURN_IF_ERROR(v.NotSelfOverlapping("output", p.output));
  // Writing over the gate half in place is fine: each element is read before it is written.
  const bool over_gate = p.output.data() == p.gate_up.data() &&
                         (p.output.dim(0) <= 1 || p.output.stride(0) == p.gate_up.stride(0));
  if (!over_gate) TESSERA_RETURN_IF_ERROR(v.Disjoint("output", p.output, "gate_up", p.gate_up));
  return absl::OkStatus();
}

absl::Status ValidateCaches(const OpValidator& v, const TensorView& key_cache,
                            const TensorView& value_cache) {
  TESSERA_RETURN_IF_ERROR(v.Tensor("key_cache", key_cache, 4, kFloatTypes));
  TESSERA_RETURN_IF_ERROR(v.Tensor("value_cache", value_cache, 4, kFloatTypes));
  TESSERA_RETURN_IF_ERROR(v.SameDataType("value_cache", value_cache, "key_cache", key_cache));
  TESSERA_RETURN_IF_ERROR(
      v.Shape("value_cache", value_cache, key_cache.shape(), "the shape of key_cache"));
  if (key_cache.dim(1) < 1 || key_cache.dim(2) < 1) {
    return v.Error(absl::StrCat(
        "field key_cache expected [num_blocks, kv_heads >= 1, block_size >= 1, head_dim], got ",
        ShapeToString(key_cache.shape())));
  }
  TESSERA_RETURN_IF_ERROR(v.NotSelfOverlapping("key_cache", key_cache));
  TESSERA_RETURN_IF_ERROR(v.NotSelfOverlapping("value_cache", value_cache));
  return v.Disjoint("key_cache", key_cache, "value_cache", value_cache);
}

absl::Status ValidateKvWrite(const OpValidator& v, const KvWriteParams& p) {
  TESSERA_RETURN_IF_ERROR(v.Tensor("key", p.key, 3, v.activation_types()));
  TESSERA_RETURN_IF_ERROR(v.Tensor("value", p.value, 3, v.activation_types()));
  TESSERA_RETURN_IF_ERROR(v.SameDataType("value", p.value, "key", p.key));
  TESSERA_RETURN_IF_ERROR(v.Shape("value", p.value, p.key.shape(), "the shape of key"));
  TESSERA_RETURN_IF_ERROR(v.Tensor("slot_mapping", p.slot_mapping, 1, kI64));
  TESSERA_RETURN_IF_ERROR(v.Shape("slot_mapping", p.slot_mapping, {p.key.dim(0)}, "[key.tokens]"));
  TESSERA_RETURN_IF_ERROR(ValidateCaches(v, p.key_cache, p.value_cache));
  const Shape expected = {p.key_cache.dim(0), p.key.dim(1), p.key_cache.dim(2), p.key.dim(2)};
  TESSERA_RETURN_IF_ERROR(v.Shape("key_cache", p.key_cache, expected,
                                  "[num_blocks, key.kv_heads, block_size, key.head_dim]"));
  for (const auto& [name, cache] :
       {std::pair{"key_cache", p.key_cache}, std::pair{"value_cache", p.value_cache}}) {
    TESSERA_RETURN_IF_ERROR(v.Disjoint(name, cache, "key", p.key));
    TESSERA_RETURN_IF_ERROR(v.Disjoint(name, cache, "value", p.value));
    TESSERA_RETURN_IF_ERROR(v.Disjoint(name, cache, "slot_mapping", p.slot_mapping));
  }
  return absl::OkStatus();
}

absl::Status ValidatePagedAttention(const OpValidator& v, const PagedAttentionParams& p) {
  TESSERA_RETURN_IF_ERROR(v.Tensor("query", p.query, 3, v.activation_types()));
  TESSERA_RETURN_IF_ERROR(ValidateCaches(v, p.key_cache, p.value_cache));
  TESSERA_RETURN_IF_ERROR(v.Tensor("block_tables", p.block_tables, 2, kI32));
  TESSERA_RETURN_IF_ERROR(v.Tensor("query_start", p.query_start, 1, kI32));
  TESSERA_RETURN_IF_ERROR(v.Tensor("seq_lens", p.seq_lens, 1, kI32));
  TESSERA_RETURN_IF_ERROR(v.Tensor("output", p.output, 3, v.activation_types()));
  TESSERA_RETURN_IF_ERROR(v.SameDataType("output", p.output, "query", p.query));
  TESSERA_RETURN_IF_ERROR(v.Shape("output", p.output, p.query.shape(), "the shape of query"));
  const int64_t q_heads = p.query.dim(1);
  const int64_t kv_heads = p.key_cache.dim(1);
  if (q_heads % kv_heads != 0) {
    return v.Error(absl::StrCat("field query expected a multiple of kv_heads = ", kv_heads,
                                " heads (grouped-query attention), got ",
                                ShapeToString(p.query.shape())));
  }
  if (p.key_cache.dim(3) != p.query.dim(2)) {
    return v.Error(absl::StrCat("field key_cache expected head_dim ", p.query.dim(2),
                                " (that of query), got ", ShapeToString(p.key_cache.shape())));
  }
  const int64_t num_seqs = p.seq_lens.dim(0);
  TESSERA_RETURN_IF_ERROR(
      v.Shape("query_start", p.query_start, {num_seqs + 1}, "[seq_lens.size + 1]"));
  TESSERA_RETURN_IF_ERROR(v.Shape("block_tables", p.block_tables, {num_seqs, p.block_tables.dim(1)},
                                  "[seq_lens.size, max_blocks_per_seq]"));
  if (!std::isfinite(p.scale)) {
    return v.Error(absl::StrCat("scale expected a finite value, got ", p.scale));
  }
  TESSERA_RETURN_IF_ERROR(v.NotSelfOverlapping("output", p.output));
  TESSERA_RETURN_IF_ERROR(v.Disjoint("output", p.output, "query", p.query));
  TESSERA_RETURN_IF_ERROR(v.Disjoint("output", p.output, "key_cache", p.key_cache));
  return v.Disjoint("output", p.output, "value_cache", p.value_cache);
}

absl::Status ValidateSample(const OpValidator& v, const SampleParams& p) {
  TESSERA_RETURN_IF_ERROR(v.Tensor("logits", p.logits, 2, kF32));
  const int64_t num_seqs = p.logits.dim(0);
  if (num_seqs > 0 && p.logits.dim(1) < 1) {
    return v.Error(absl::StrCat("field logits expected a vocabulary of at least 1, got ",
                                ShapeToString(p.logits.shape())));
  }
  const Shape per_seq = {num_seqs};
  const struct {
    const char* name;
    const TensorView& view;
    internal::DataTypeSet dtype;
  } fields[] = {{"temperature", p.temperature, kF32},
                {"top_k", p.top_k, kI32},
                {"top_p", p.top_p, kF32},
                {"seeds", p.seeds, kI64},
                {"steps", p.steps, kI64}};
  for (const auto& field : fields) {
    TESSERA_RETURN_IF_ERROR(v.Tensor(field.name, field.view, 1, field.dtype));
    TESSERA_RETURN_IF_ERROR(v.Shape(field.name, field.view, per_seq, "[logits.rows]"));
  }
  TESSERA_RETURN_IF_ERROR(v.Tensor("output_ids", p.output_ids, 1, kI32));
  TESSERA_RETURN_IF_ERROR(v.Shape("output_ids", p.output_ids, per_seq, "[logits.rows]"));
  TESSERA_RETURN_IF_ERROR(v.Disjoint("output_ids", p.output_ids, "logits", p.logits));
  if (!p.output_logprobs.empty()) {
    TESSERA_RETURN_IF_ERROR(v.Tensor("output_logprobs", p.output_logprobs, 1, kF32));
    TESSERA_RETURN_IF_ERROR(
        v.Shape("output_logprobs", p.output_logprobs, per_seq, "[logits.rows]"));
    TESSERA_RETURN_IF_ERROR(v.Disjoint("output_logprobs", p.output_logprobs, "logits", p.logits));
    TESSERA_RETURN_IF_ERROR(
        v.Disjoint("output_logprobs", p.output_logprobs, "output_ids", p.output_ids));
  }
  TESSERA_RETURN_IF_ERROR(v.OptionalTensor("min_p", p.min_p, 1, kF32));
  if (!p.min_p.empty()) {
    TESSERA_RETURN_IF_ERROR(v.Shape("min_p", p.min_p, per_seq, "[logits.rows]"));
  }
  TESSERA_RETURN_IF_ERROR(v.OptionalTensor("raw_logits", p.raw_logits, 2, kF32));
  if (!p.raw_logits.empty()) {
    TESSERA_RETURN_IF_ERROR(
        v.Shape("raw_logits", p.raw_logits, p.logits.shape(), "the shape of logits"));
  }
  if (p.output_top_ids.empty() != p.output_top_logprobs.empty()) {
    return v.Error("output_top_ids and output_top_logprobs go together: both or neither");
  }
  if (!p.output_top_ids.empty()) {
    TESSERA_RETURN_IF_ERROR(v.Tensor("output_top_ids", p.output_top_ids, 2, kI32));
    const int64_t n = p.output_top_ids.dim(1);
    if (n < 1 || (num_seqs > 0 && n > p.logits.dim(1))) {
      return v.Error(absl::StrCat("field output_top_ids expected 1 to vocab (", p.logits.dim(1),
                                  ") columns, got ", n));
    }
    TESSERA_RETURN_IF_ERROR(
        v.Shape("output_top_ids", p.output_top_ids, {num_seqs, n}, "[logits.rows, n]"));
    TESSERA_RETURN_IF_ERROR(v.Tensor("output_top_logprobs", p.output_top_logprobs, 2, kF32));
    TESSERA_RETURN_IF_ERROR(v.Shape("output_top_logprobs", p.output_top_logprobs, {num_seqs, n},
                                    "the shape of output_top_ids"));
    const struct {
      const char* name;
      const TensorView& view;
    } outputs[] = {{"output_top_ids", p.output_top_ids},
                   {"output_top_logprobs", p.output_top_logprobs}};
    for (const auto& out : outputs) {
      TESSERA_RETURN_IF_ERROR(v.NotSelfOverlapping(out.name, out.view));
      TESSERA_RETURN_IF_ERROR(v.Disjoint(out.name, out.view, "logits", p.logits));
      TESSERA_RETURN_IF_ERROR(v.Disjoint(out.name, out.view, "output_ids", p.output_ids));
      if (!p.raw_logits.empty()) {
        TESSERA_RETURN_IF_ERROR(v.Disjoint(out.name, out.view, "raw_logits", p.raw_logits));
      }
      if (!p.output_logprobs.empty()) {
        TESSERA_RETURN_IF_ERROR(
            v.Disjoint(out.name, out.view, "output_logprobs", p.output_logprobs));
      }
    }
    TESSERA_RETURN_IF_ERROR(v.Disjoint("output_top_ids", p.output_top_ids, "output_top_logprobs",
                                       p.output_top_logprobs));
  }
  if (!p.raw_logits.empty()) {
    TESSERA_RETURN_IF_ERROR(v.Disjoint("output_ids", p.output_ids, "raw_logits", p.raw_logits));
    if (!p.output_logprobs.empty()) {
      TESSERA_RETURN_IF_ERROR(
          v.Disjoint("output_logprobs", p.output_logprobs, "raw_logits", p.raw_logits));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateApplyPenalties(const OpValidator& v, const ApplyPenaltiesParams& p) {
  TESSERA_RETURN_IF_ERROR(v.Tensor("logits", p.logits, 2, kF32));
  TESSERA_RETURN_IF_ERROR(v.NotSelfOverlapping("logits", p.logits));
  const int64_t rows = p.logits.dim(0);
  const Shape per_row = {rows};
  const Shape row_starts = {rows + 1};
  const struct {
    const char* name;
    const TensorView& view;
  } penalties[] = {{"repetition_penalty", p.repetition_penalty},
                   {"presence_penalty", p.presence_penalty},
                   {"frequency_penalty", p.frequency_penalty}};
  for (const auto& field : penalties) {
    TESSERA_RETURN_IF_ERROR(v.Tensor(field.name, field.view, 1, kF32));
    TESSERA_RETURN_IF_ERROR(v.Shape(field.name, field.view, per_row, "[logits.rows]"));
    TESSERA_RETURN_IF_ERROR(v.Disjoint("logits", p.logits, field.name, field.view));
  }
  // A per-row list: ids (i32), values of the same shape, offsets [rows + 1] (i32).
  const auto row_list = [&](const char* ids_name, const TensorView& ids, const char* values_name,
                            const TensorView& values, internal::DataTypeSet values_type,
                            const char* start_name, const TensorView& start) -> absl::Status {
    TESSERA_RETURN_IF_ERROR(v.Tensor(ids_name, ids, 1, kI32));
    if (values_name != nullptr) {
      TESSERA_RETURN_IF_ERROR(v.Tensor(values_name, values, 1, values_type));
      TESSERA_RETURN_IF_ERROR(
          v.Shape(values_name, values, ids.shape(), absl::StrCat("the shape of ", ids_name)));
    }
    TESSERA_RETURN_IF_ERROR(v.Tensor(start_name, start, 1, kI32));
    return v.Shape(start_name, start, row_starts, "[logits.rows + 1]");
  };
  TESSERA_RETURN_IF_ERROR(row_list("token_ids", p.token_ids, "output_counts", p.output_counts, kI32,
                                   "token_start", p.token_start));
  if (p.banned_ids.empty() != p.banned_start.empty()) {
    return v.Error("banned_ids and banned_start go together: both or neither");
  }
  if (!p.banned_ids.empty()) {
    TESSERA_RETURN_IF_ERROR(row_list("banned_ids", p.banned_ids, nullptr, TensorView(), kI32,
                                     "banned_start", p.banned_start));
  }
  if (p.bias_ids.empty() != p.bias_start.empty() || p.bias_ids.empty() != p.bias_values.empty()) {
    return v.Error("bias_ids, bias_values and bias_start go together: all three or none");
  }
  if (!p.bias_ids.empty()) {
    TESSERA_RETURN_IF_ERROR(row_list("bias_ids", p.bias_ids, "bias_values", p.bias_values, kF32,
                                     "bias_start", p.bias_start));
  }
  if (!p.allowed_mask.empty()) {
    TESSERA_RETURN_IF_ERROR(v.Tensor("allowed_mask", p.allowed_mask, 2, kI32));
    TESSERA_RETURN_IF_ERROR(v.Shape("allowed_mask", p.allowed_mask,
                                    {rows, (p.logits.dim(1) + 31) / 32},
                                    "[logits.rows, ceil(vocab / 32)]"));
  }
  const struct {
    const char* name;
    const TensorView& view;
  } lists[] = {{"allowed_mask", p.allowed_mask},   {"token_ids", p.token_ids},
               {"output_counts", p.output_counts}, {"token_start", p.token_start},
               {"banned_ids", p.banned_ids},       {"banned_start", p.banned_start},
               {"bias_ids", p.bias_ids},           {"bias_values", p.bias_values},
               {"bias_start", p.bias_start}};
  for (const auto& field : lists) {
    if (!field.view.empty()) {
      TESSERA_RETURN_IF_ERROR(v.Disjoint("logits", p.logits, field.name, field.view));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Embedding(Backend& backend, const EmbeddingParams& params, Stream& stream) {
  const OpValidator v("Embedding", backend);
  TESSERA_RETURN_IF_ERROR(v.StreamDevice(stream));
  TESSERA_RETURN_IF_ERROR(ValidateEmbedding(v, params));
  return Dispatch("Embedding", backend.ops().embedding, backend, params, stream);
}

absl::Status RmsNorm(Backend& backend, const RmsNormParams& params, Stream& stream) {
  const OpValidator v("RmsNorm", backend);
  TESSERA_RETURN_IF_ERROR(v.StreamDevice(stream));
  TESSERA_RETURN_IF_ERROR(ValidateRmsNorm(v, params));
  return Dispatch("RmsNorm", backend.ops().rms_norm, backend, params, stream);
}

absl::Status Matmul(Backend& backend, const MatmulParams& params, Stream& stream) {
  const OpValidator v("Matmul", backend);
  TESSERA_RETURN_IF_ERROR(v.StreamDevice(stream));
  TESSERA_RETURN_IF_ERROR(ValidateMatmul(v, params));
  return Dispatch("Matmul", backend.ops().matmul, backend, params, stream);
}

absl::Status Rope(Backend& backend, const RopeParams& params, Stream& stream) {
  const OpValidator v("Rope", backend);
  TESSERA_RETURN_IF_ERROR(v.StreamDevice(stream));
  TESSERA_RETURN_IF_ERROR(ValidateRope(v, params));
  return Dispatch("Rope", backend.ops().rope, backend, params, stream);
}

absl::Status Swiglu(Backend& backend, const SwigluParams& params, Stream& stream) {
  const OpValidator v("Swiglu", backend);
  TESSERA_RETURN_IF_ERROR(v.StreamDevice(stream));
  TESSERA_RETURN_IF_ERROR(ValidateSwiglu(v, params));
  return Dispatch("Swiglu", backend.ops().swiglu, backend, params, stream);
}

absl::Status KvWrite(Backend& backend, const KvWriteParams& params, Stream& stream) {
  const OpValidator v("KvWrite", backend);
  TESSERA_RETURN_IF_ERROR(v.StreamDevice(stream));
  TESSERA_RETURN_IF_ERROR(ValidateKvWrite(v, params));
  return Dispatch("KvWrite", backend.ops().kv_write, backend, params, stream);
}

absl::Status PagedAttention(Backend& backend, const PagedAttentionParams& params, Stream& stream) {
  const OpValidator v("PagedAttention", backend);
  TESSERA_RETURN_IF_ERROR(v.StreamDevice(stream));
  TESSERA_RETURN_IF_ERROR(ValidatePagedAttention(v, params));
  return Dispatch("PagedAttention", backend.ops().paged_attention, backend, params, stream);
}

absl::Status Sample(Backend& backend, const SampleParams& params, Stream& stream) {
  const OpValidator v("Sample", backend);
  TESSERA_RETURN_IF_ERROR(v.StreamDevice(stream));
  TESSERA_RETURN_IF_ERROR(ValidateSample(v, params));
  return Dispatch("Sample", backend.ops().sample, backend, params, stream);
}

absl::Status ApplyPenalties(Backend& backend, const ApplyPenaltiesParams& params, Stream& stream) {
  const OpValidator v("ApplyPenalties", backend);
  TESSERA_RETURN_IF_ERROR(v.StreamDevice(stream));
  TESSERA_RETURN_IF_ERROR(ValidateApplyPenalties(v, params));
  return Dispatch("ApplyPenalties", backend.ops().apply_penalties, backend, params, stream);
}

uint64_t SplitMix64(uint64_t x) {
  uint64_t z = x + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double SampleUniform(int64_t seed, int64_t step) {
  const uint64_t bits =
      SplitMix64(static_cast<uint64_t>(seed) ^ SplitMix64(static_cast<uint64_t>(step)));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

}  // namespace tessera::kernels
