#include "kernels/bench/kernel_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "kernels/ops.h"
#include "nlohmann/json.hpp"

namespace tessera::kernels::bench {
namespace {

using SteadyClock = std::chrono::steady_clock;

double SecondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

double Bytes(int64_t elements, DataType dtype) {
  return static_cast<double>(elements) * static_cast<double>(DataTypeSize(dtype));
}

// One case: its name, its least traffic and work, the target it is held to, the bytes its
// buffers take (one copy of the operands that rotate plus those that do not), and what it needs
// to launch. Prepare allocates (with `copies` copies of the rotating operands) and returns the
// launch of copy i.
struct Case {
  std::string op, shape;
  double bytes = 0, flops = 0;
  Target target;
  double rotating_bytes = 0;  // per copy
  double fixed_bytes = 0;     // once
  std::function<absl::StatusOr<std::function<absl::Status(int64_t)>>(int64_t copies)> prepare;
};

// Device memory owned by a running case, and helpers that fill it.
class Arena {
 public:
  Arena(Backend& backend, Stream& stream) : backend_(backend), stream_(stream) {}

  // `copies` contiguous copies of a tensor of `shape`, every byte 0x3c (a small finite value in
  // f32, f16 and bf16: 0.0115, 1.06, 0.0115): what ops read need not be random to be timed.
  absl::StatusOr<MutableTensorView> Floats(DataType dtype, const Shape& shape, int64_t copies) {
    Shape all = {copies};
    all.insert(all.end(), shape.begin(), shape.end());
    TESSERA_ASSIGN_OR_RETURN(MutableTensorView view, Make(dtype, all));
    TESSERA_RETURN_IF_ERROR(backend_.Memset(view.data(), 0x3c, view.nbytes(), stream_));
    return view;
  }
  template <typename T>
  absl::StatusOr<MutableTensorView> Values(DataType dtype, const std::vector<T>& values,
                                           Shape shape) {
    TESSERA_ASSIGN_OR_RETURN(MutableTensorView view, Make(dtype, std::move(shape)));
    TESSERA_RETURN_IF_ERROR(
        backend_.CopyToDevice(values.data(), view.data(), view.nbytes(), stream_));
    TESSERA_RETURN_IF_ERROR(stream_.Synchronize());  // `values` may go now
    return view;
  }
  // [n] values all equal to `value` (a per-row parameter that is the same for every row).
  template <typename T>
  absl::StatusOr<MutableTensorView> Filled(DataType dtype, T value, int64_t n) {
    return Values(dtype, std::vector<T>(static_cast<size_t>(n), value), {n});
  }

 private:
  absl::StatusOr<MutableTensorView> Make(DataType dtype, Shape shape) {
    const size_t bytes = static_cast<size_t>(NumElements(shape)) * DataTypeSize(dtype);
    TESSERA_ASSIGN_OR_RETURN(DeviceBuffer buffer, backend_.Allocate(bytes));
    MutableTensorView view = buffer.View(dtype, std::move(shape));
    buffers_.push_back(std::move(buffer));
    return view;
  }

  Backend& backend_;
  Stream& stream_;
  std::vector<DeviceBuffer> buffers_;
};

// Copy i of a rotating operand made by Arena::Floats.
MutableTensorView CopyOf(const MutableTensorView& all, int64_t i) {
  MutableTensorView row = all.Rows(i, i + 1);
  const Shape& full = all.shape();
  return row.Reshape(Shape(full.begin() + 1, full.end()));
}

// 0, 1, ..., n - 1.
std::vector<int32_t> Iota32(int64_t n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>(i);
  return v;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The cases of every selected op, in the order KernelOpNames() lists the ops.
class CaseBuilder {
 public:
  CaseBuilder(Backend& backend, Stream& stream, const KernelBenchOptions& o)
      : backend_(backend),
        stream_(stream),
        o_(o),
        s_(o.shape),
        act_(o.activation_dtype),
        w_(o.dtype) {}

  std::vector<Case> Build() {
    std::vector<int64_t> rows = o_.batch_sizes;  // decode rows, then prefill rows
    rows.insert(rows.end(), o_.prefill_tokens.begin(), o_.prefill_tokens.end());
    std::vector<Case> cases;
    auto wanted = [&](const std::string& op) {
      return o_.ops.empty() || std::find(o_.ops.begin(), o_.ops.end(), op) != o_.ops.end();
    };
    if (wanted("embedding")) {
      for (int64_t t : rows) cases.push_back(Embedding(t));
    }
    if (wanted("add_rms_norm")) {
      for (int64_t t : rows) cases.push_back(AddRmsNorm(t));
    }
    if (wanted("rope")) {
      for (int64_t t : rows) cases.push_back(Rope(t));
    }
    if (wanted("swiglu")) {
      for (int64_t t : rows) cases.push_back(Swiglu(t));
    }
    if (wanted("kv_write")) {
      for (int64_t t : rows) cases.push_back(KvWrite(t));
    }
    if (wanted("matmul")) {
      const int64_t qkv = (s_.q_heads + 2 * s_.kv_heads) * s_.head_dim;
      const struct {
        const char* name;
        int64_t n, k;
      } layers[] = {{"qkv", qkv, s_.hidden},
                    {"o", s_.hidden, s_.q_heads * s_.head_dim},
                    {"gate_up", 2 * s_.intermediate, s_.hidden},
                    {"down", s_.hidden, s_.intermediate},
                    {"lm_head", s_.vocab, s_.hidden}};
      for (const auto& layer : layers) {
        for (int64_t t : rows) cases.push_back(Matmul(layer.name, t, layer.n, layer.k));
      }
    }
    if (wanted("decode_attention")) {
      for (int64_t b : o_.batch_sizes) {
        for (int64_t c : o_.contexts) cases.push_back(DecodeAttention(b, c));
      }
    }
    if (wanted("prefill_attention")) {
      for (int64_t n : o_.prefill_tokens) cases.push_back(PrefillAttention(n));
    }
    if (wanted("sample_greedy")) {
      for (int64_t b : o_.batch_sizes) cases.push_back(Sample(b, /*top_p=*/false));
    }
    if (wanted("sample_top_p")) {
      for (int64_t b : o_.batch_sizes) cases.push_back(Sample(b, /*top_p=*/true));
    }
    if (wanted("apply_penalties")) {
      for (int64_t b : o_.batch_sizes) cases.push_back(ApplyPenalties(b));
    }
    return cases;
  }

 private:
  using Launch = std::function<absl::Status(int64_t)>;

  // A new arena for a case's buffers; it lives as long as the case's launch function.
  std::shared_ptr<Arena> NewArena() { return std::make_shared<Arena>(backend_, stream_); }

  Case Embedding(int64_t t) {
    Case c{"embedding", absl::StrCat("tokens=", t, " hidden=", s_.hidden)};
    c.bytes = Bytes(t * s_.hidden, w_) + Bytes(t * s_.hidden, act_) + Bytes(t, DataType::kI32);
    // Each copy has its own ids and so reads other rows of the table (the table is not copied).
    c.rotating_bytes = c.bytes;
    c.fixed_bytes = Bytes(s_.vocab * s_.hidden, w_);
    c.prepare = [this, t](int64_t copies) -> absl::StatusOr<Launch> {
      auto arena = NewArena();
      // Ids spread over the table, so that rows come from all over it, and differ per copy.
      std::vector<int32_t> ids(static_cast<size_t>(copies * t));
      for (size_t i = 0; i < ids.size(); ++i) {
        ids[i] = static_cast<int32_t>((static_cast<int64_t>(i) * 7919) % s_.vocab);
      }
      TESSERA_ASSIGN_OR_RETURN(auto id_view, arena->Values(DataType::kI32, ids, {copies, t}));
      TESSERA_ASSIGN_OR_RETURN(auto table, arena->Floats(w_, {s_.vocab, s_.hidden}, 1));
      TESSERA_ASSIGN_OR_RETURN(auto out, arena->Floats(act_, {t, s_.hidden}, copies));
      return Launch([this, arena, id_view, table, out](int64_t i) {
        EmbeddingParams p;
        p.ids = CopyOf(id_view, i);
        p.table = CopyOf(table, 0);
        p.output = CopyOf(out, i);
        return kernels::Embedding(backend_, p, stream_);
      });
    };
    return c;
  }

  Case AddRmsNorm(int64_t t) {
    Case c{"add_rms_norm", absl::StrCat("tokens=", t, " hidden=", s_.hidden)};
    // Reads input and residual, writes residual and output.
    c.bytes = 4 * Bytes(t * s_.hidden, act_) + Bytes(s_.hidden, w_);
    c.target = {Target::Kind::kBandwidth, 0.8};
    c.rotating_bytes = 3 * Bytes(t * s_.hidden, act_);
    c.fixed_bytes = Bytes(s_.hidden, w_);
    c.prepare = [this, t](int64_t copies) -> absl::StatusOr<Launch> {
      auto arena = NewArena();
      TESSERA_ASSIGN_OR_RETURN(auto input, arena->Floats(act_, {t, s_.hidden}, copies));
      TESSERA_ASSIGN_OR_RETURN(auto residual, arena->Floats(act_, {t, s_.hidden}, copies));
      TESSERA_ASSIGN_OR_RETURN(auto out, arena->Floats(act_, {t, s_.hidden}, copies));
      TESSERA_ASSIGN_OR_RETURN(auto weight, arena->Floats(w_, {s_.hidden}, 1));
      return Launch([this, arena, input, residual, out, weight](int64_t i) {
        RmsNormParams p;
        p.input = CopyOf(input, i);
        p.residual = CopyOf(residual, i);
        p.weight = CopyOf(weight, 0);
        p.output = CopyOf(out, i);
        return kernels::RmsNorm(backend_, p, stream_);
      });
    };
    return c;
  }

  Case Rope(int64_t t) {
    Case c{"rope", absl::StrCat("tokens=", t, " heads=", s_.q_heads, "+", s_.kv_heads,
                                " head_dim=", s_.head_dim)};
    const int64_t heads = s_.q_heads + s_.kv_heads;
    c.bytes = 2 * Bytes(t * heads * s_.head_dim, act_) + Bytes(t, DataType::kI32);
    c.target = {Target::Kind::kBandwidth, 0.8};
    c.rotating_bytes = Bytes(t * heads * s_.head_dim, act_);
    c.fixed_bytes = Bytes(t, DataType::kI32) + Bytes(s_.head_dim / 2, DataType::kF32);
    c.prepare = [this, t](int64_t copies) -> absl::StatusOr<Launch> {
      auto arena = NewArena();
      TESSERA_ASSIGN_OR_RETURN(auto q, arena->Floats(act_, {t, s_.q_heads, s_.head_dim}, copies));
      TESSERA_ASSIGN_OR_RETURN(auto k, arena->Floats(act_, {t, s_.kv_heads, s_.head_dim}, copies));
      TESSERA_ASSIGN_OR_RETURN(auto positions, arena->Values(DataType::kI32, Iota32(t), {t}));
      std::vector<float> inv_freq(static_cast<size_t>(s_.head_dim / 2));
      for (size_t j = 0; j < inv_freq.size(); ++j) {
        inv_freq[j] = static_cast<float>(
            std::pow(500000.0, -2.0 * static_cast<double>(j) / static_cast<double>(s_.head_dim)));
      }
      TESSERA_ASSIGN_OR_RETURN(auto freq, arena->Values(DataType::kF32, inv_freq,
                                                        {static_cast<int64_t>(inv_freq.size())}));
      return Launch([this, arena, q, k, positions, freq](int64_t i) {
        RopeParams p;
        p.query = CopyOf(q, i);
        p.key = CopyOf(k, i);
        p.positions = positions;
        p.inv_freq = freq;
        return kernels::Rope(backend_, p, stream_);
      });
    };
    return c;
  }

  Case Swiglu(int64_t t) {
    Case c{"swiglu", absl::StrCat("tokens=", t, " intermediate=", s_.intermediate)};
    c.bytes = 3 * Bytes(t * s_.intermediate, act_);
    c.target = {Target::Kind::kBandwidth, 0.8};
    c.rotating_bytes = c.bytes;
    c.prepare = [this, t](int64_t copies) -> absl::StatusOr<Launch> {
      auto arena = NewArena();
      TESSERA_ASSIGN_OR_RETURN(auto gate_up, arena->Floats(act_, {t, 2 * s_.intermediate}, copies));
      TESSERA_ASSIGN_OR_RETURN(auto out, arena->Floats(act_, {t, s_.intermediate}, copies));
      return Launch([this, arena, gate_up, out](int64_t i) {
        SwigluParams p;
        p.gate_up = CopyOf(gate_up, i);
        p.output = CopyOf(out, i);
        return kernels::Swiglu(backend_, p, stream_);
      });
    };
    return c;
  }

  Case KvWrite(int64_t t) {
    Case c{"kv_write", absl::StrCat("tokens=", t, " kv_heads=", s_.kv_heads,
                                    " head_dim=", s_.head_dim, " block=", o_.block_size)};
    const int64_t per_side = t * s_.kv_heads * s_.head_dim;
    c.bytes = 2 * (Bytes(per_side, act_) + Bytes(per_side, w_)) + Bytes(t, DataType::kI64);
    c.target = {Target::Kind::kBandwidth, 0.8};
    const int64_t blocks = CeilDiv(t, o_.block_size);
    c.rotating_bytes =
        2 * (Bytes(per_side, act_) + Bytes(blocks * o_.block_size * s_.kv_heads * s_.head_dim, w_));
    c.fixed_bytes = Bytes(t, DataType::kI64);
    c.prepare = [this, t, blocks](int64_t copies) -> absl::StatusOr<Launch> {
      auto arena = NewArena();
      const Shape rows = {t, s_.kv_heads, s_.head_dim};
      const Shape cache = {blocks, s_.kv_heads, o_.block_size, s_.head_dim};
      TESSERA_ASSIGN_OR_RETURN(auto key, arena->Floats(act_, rows, copies));
      TESSERA_ASSIGN_OR_RETURN(auto value, arena->Floats(act_, rows, copies));
      TESSERA_ASSIGN_OR_RETURN(auto key_cache, arena->Floats(w_, cache, copies));
      TESSERA_ASSIGN_OR_RETURN(auto value_cache, arena->Floats(w_, cache, copies));
      std::vector<int64_t> slots(static_cast<size_t>(t));
      for (int64_t i = 0; i < t; ++i) slots[i] = i;
      TESSERA_ASSIGN_OR_RETURN(auto slot_view, arena->Values(DataType::kI64, slots, {t}));
      return Launch([this, arena, key, value, key_cache, value_cache, slot_view](int64_t i) {
        KvWriteParams p;
        p.key = CopyOf(key, i);
        p.value = CopyOf(value, i);
        p.slot_mapping = slot_view;
        p.key_cache = CopyOf(key_cache, i);
        p.value_cache = CopyOf(value_cache, i);
        return kernels::KvWrite(backend_, p, stream_);
      });
    };
    return c;
  }

  Case Matmul(const char* name, int64_t m, int64_t n, int64_t k) {
    Case c{"matmul", absl::StrCat(name, " m=", m, " n=", n, " k=", k)};
    c.bytes = Bytes(n * k, w_) + Bytes(m * k, act_) + Bytes(m * n, act_);
    c.flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
    c.rotating_bytes = c.bytes;
    c.prepare = [this, m, n, k](int64_t copies) -> absl::StatusOr<Launch> {
      auto arena = NewArena();
      TESSERA_ASSIGN_OR_RETURN(auto input, arena->Floats(act_, {m, k}, copies));
      TESSERA_ASSIGN_OR_RETURN(auto weight, arena->Floats(w_, {n, k}, copies));
      TESSERA_ASSIGN_OR_RETURN(auto out, arena->Floats(act_, {m, n}, copies));
      return Launch([this, arena, input, weight, out](int64_t i) {
        MatmulParams p;
        p.input = CopyOf(input, i);
        p.weight = CopyOf(weight, i);
        p.output = CopyOf(out, i);
        return kernels::Matmul(backend_, p, stream_);
      });
    };
    return c;
  }

  // Attention of `seqs` sequences of `context` tokens each, `q_len` query rows per sequence
  // (decode: 1; prefill: one sequence, q_len = context).
  Case Attention(std::string op, std::string shape, int64_t seqs, int64_t context, int64_t q_len) {
    Case c{std::move(op), std::move(shape)};
    const int64_t width = CeilDiv(context, o_.block_size);
    const int64_t blocks = seqs * width;
    const int64_t rows = seqs * q_len;
    const int64_t kv_elements = blocks * s_.kv_heads * o_.block_size * s_.head_dim;
    const double kv_read = 2 * Bytes(seqs * context * s_.kv_heads * s_.head_dim, w_);
    c.bytes = kv_read + 2 * Bytes(rows * s_.q_heads * s_.head_dim, act_) +
              Bytes(blocks + 2 * seqs + 1, DataType::kI32);
    // Keys attended per query row: the whole context in decode, a causal triangle in prefill.
    const double pairs = q_len == 1 ? static_cast<double>(seqs) * static_cast<double>(context)
                                    : static_cast<double>(seqs) * static_cast<double>(q_len) *
                                          static_cast<double>(q_len + 1) / 2.0;
    c.flops = 4.0 * pairs * static_cast<double>(s_.q_heads) * static_cast<double>(s_.head_dim);
    c.rotating_bytes =
        2 * Bytes(rows * s_.q_heads * s_.head_dim, act_) + 2 * Bytes(kv_elements, w_);
    c.fixed_bytes = Bytes(blocks + 2 * seqs + 1, DataType::kI32);
    c.prepare = [this, seqs, context, q_len, width, blocks,
                 rows](int64_t copies) -> absl::StatusOr<Launch> {
      auto arena = NewArena();
      const Shape q_shape = {rows, s_.q_heads, s_.head_dim};
      const Shape cache = {blocks, s_.kv_heads, o_.block_size, s_.head_dim};
      TESSERA_ASSIGN_OR_RETURN(auto query, arena->Floats(act_, q_shape, copies));
      TESSERA_ASSIGN_OR_RETURN(auto out, arena->Floats(act_, q_shape, copies));
      TESSERA_ASSIGN_OR_RETURN(auto key_cache, arena->Floats(w_, cache, copies));
      TESSERA_ASSIGN_OR_RETURN(auto value_cache, arena->Floats(w_, cache, copies));
      TESSERA_ASSIGN_OR_RETURN(auto tables,
                               arena->Values(DataType::kI32, Iota32(blocks), {seqs, width}));
      std::vector<int32_t> starts(static_cast<size_t>(seqs + 1));
      for (int64_t s = 0; s <= seqs; ++s) starts[s] = static_cast<int32_t>(s * q_len);
      TESSERA_ASSIGN_OR_RETURN(auto query_start, arena->Values(DataType::kI32, starts, {seqs + 1}));
      const std::vector<int32_t> lens(static_cast<size_t>(seqs), static_cast<int32_t>(context));
      TESSERA_ASSIGN_OR_RETURN(auto seq_lens, arena->Values(DataType::kI32, lens, {seqs}));
      const float scale = 1.0f / std::sqrt(static_cast<float>(s_.head_dim));
      return Launch([this, arena, query, out, key_cache, value_cache, tables, query_start, seq_lens,
                     scale](int64_t i) {
        PagedAttentionParams p;
        p.query = CopyOf(query, i);
        p.key_cache = CopyOf(key_cache, i);
        p.value_cache = CopyOf(value_cache, i);
        p.block_tables = tables;
        p.query_start = query_start;
        p.seq_lens = seq_lens;
        p.output = CopyOf(out, i);
        p.scale = scale;
        return kernels::PagedAttention(backend_, p, stream_);
      });
    };
    return c;
  }

  Case DecodeAttention(int64_t batch, int64_t context) {
    Case c = Attention("decode_attention", absl::StrCat("batch=", batch, " context=", context),
                       batch, context, 1);
    if (batch >= 32 && context >= 4096) c.target = {Target::Kind::kBandwidth, 0.8};
    return c;
  }

  Case PrefillAttention(int64_t tokens) {
    Case c = Attention("prefill_attention", absl::StrCat("tokens=", tokens, " causal"), 1, tokens,
                       tokens);
    if (tokens >= 4096) c.target = {Target::Kind::kCompute, 0.5};
    return c;
  }

  Case Sample(int64_t batch, bool top_p) {
    Case c{top_p ? "sample_top_p" : "sample_greedy",
           absl::StrCat("batch=", batch, " vocab=", s_.vocab,
                        top_p ? " temperature=1 top_p=0.9" : "")};
    c.bytes = Bytes(batch * s_.vocab, DataType::kF32) + Bytes(batch, DataType::kI32);
    c.rotating_bytes = Bytes(batch * s_.vocab, DataType::kF32);
    c.fixed_bytes = Bytes(batch, DataType::kF32) * 2 + Bytes(batch, DataType::kI32) * 2 +
                    Bytes(batch, DataType::kI64) * 2;
    c.prepare = [this, batch, top_p](int64_t copies) -> absl::StatusOr<Launch> {
      auto arena = NewArena();
      // Logits like a model's: normal, so that top-p keeps a realistic share of the vocabulary.
      std::mt19937_64 rng(7);
      std::normal_distribution<float> normal(0.0f, 2.0f);
      std::vector<float> logits(static_cast<size_t>(batch * s_.vocab));
      for (float& x : logits) x = normal(rng);
      TESSERA_ASSIGN_OR_RETURN(auto all, arena->Floats(DataType::kF32, {batch, s_.vocab}, copies));
      for (int64_t i = 0; i < copies; ++i) {
        TESSERA_RETURN_IF_ERROR(backend_.CopyToDevice(logits.data(), CopyOf(all, i).data(),
                                                      logits.size() * sizeof(float), stream_));
      }
      TESSERA_RETURN_IF_ERROR(stream_.Synchronize());
      TESSERA_ASSIGN_OR_RETURN(auto temperature,
                               arena->Filled(DataType::kF32, top_p ? 1.0f : 0.0f, batch));
      TESSERA_ASSIGN_OR_RETURN(auto top_k, arena->Filled(DataType::kI32, int32_t{0}, batch));
      TESSERA_ASSIGN_OR_RETURN(auto top_p_view,
                               arena->Filled(DataType::kF32, top_p ? 0.9f : 1.0f, batch));
      TESSERA_ASSIGN_OR_RETURN(auto seeds, arena->Filled(DataType::kI64, int64_t{1}, batch));
      TESSERA_ASSIGN_OR_RETURN(auto steps, arena->Filled(DataType::kI64, int64_t{0}, batch));
      TESSERA_ASSIGN_OR_RETURN(auto ids, arena->Floats(DataType::kI32, {batch}, 1));
      return Launch(
          [this, arena, all, temperature, top_k, top_p_view, seeds, steps, ids](int64_t i) {
            SampleParams p;
            p.logits = CopyOf(all, i);
            p.temperature = temperature;
            p.top_k = top_k;
            p.top_p = top_p_view;
            p.seeds = seeds;
            p.steps = steps;
            p.output_ids = CopyOf(ids, 0);
            return kernels::Sample(backend_, p, stream_);
          });
    };
    return c;
  }

  // Repetition, presence and frequency penalties on kPenaltyTokens distinct tokens a row (a
  // prompt and output that long), and 3 banned tokens: the op touches those logits only.
  static constexpr int64_t kPenaltyTokens = 1024;
  Case ApplyPenalties(int64_t batch) {
    const int64_t per_row = std::min(kPenaltyTokens, s_.vocab);
    const int64_t bans = std::min<int64_t>(3, s_.vocab);
    Case c{"apply_penalties",
           absl::StrCat("batch=", batch, " tokens=", per_row, " vocab=", s_.vocab)};
    // Each listed logit read and written, with its id and count; each ban written with its id.
    c.bytes = static_cast<double>(batch) *
              (static_cast<double>(per_row) * (2 * 4 + 4 + 4) + static_cast<double>(bans) * 8);
    c.rotating_bytes = Bytes(batch * s_.vocab, DataType::kF32);
    c.fixed_bytes = Bytes(batch * (2 * per_row + bans) + 2 * (batch + 1), DataType::kI32) +
                    Bytes(3 * batch, DataType::kF32);
    c.prepare = [this, batch, per_row, bans](int64_t copies) -> absl::StatusOr<Launch> {
      auto arena = NewArena();
      TESSERA_ASSIGN_OR_RETURN(auto logits,
                               arena->Floats(DataType::kF32, {batch, s_.vocab}, copies));
      std::vector<int32_t> ids, counts, start, banned, banned_start;
      for (int64_t r = 0; r < batch; ++r) {
        start.push_back(static_cast<int32_t>(ids.size()));
        banned_start.push_back(static_cast<int32_t>(banned.size()));
        for (int64_t i = 0; i < per_row; ++i) {  // spread over the vocabulary, distinct
          ids.push_back(static_cast<int32_t>((i * s_.vocab) / per_row));
          counts.push_back(static_cast<int32_t>(i % 3));
        }
        for (int64_t i = 0; i < bans; ++i) banned.push_back(static_cast<int32_t>(s_.vocab - 1 - i));
      }
      start.push_back(static_cast<int32_t>(ids.size()));
      banned_start.push_back(static_cast<int32_t>(banned.size()));
      const auto entries = static_cast<int64_t>(ids.size());
      const auto n_bans = static_cast<int64_t>(banned.size());
      TESSERA_ASSIGN_OR_RETURN(auto id_view, arena->Values(DataType::kI32, ids, {entries}));
      TESSERA_ASSIGN_OR_RETURN(auto count_view, arena->Values(DataType::kI32, counts, {entries}));
      TESSERA_ASSIGN_OR_RETURN(auto start_view, arena->Values(DataType::kI32, start, {batch + 1}));
      TESSERA_ASSIGN_OR_RETURN(auto banned_view, arena->Values(DataType::kI32, banned, {n_bans}));
      TESSERA_ASSIGN_OR_RETURN(auto banned_start_view,
                               arena->Values(DataType::kI32, banned_start, {batch + 1}));
      TESSERA_ASSIGN_OR_RETURN(auto repetition, arena->Filled(DataType::kF32, 1.1f, batch));
      TESSERA_ASSIGN_OR_RETURN(auto presence, arena->Filled(DataType::kF32, 0.5f, batch));
      TESSERA_ASSIGN_OR_RETURN(auto frequency, arena->Filled(DataType::kF32, 0.25f, batch));
      return Launch([this, arena, logits, id_view, count_view, start_view, banned_view,
                     banned_start_view, repetition, presence, frequency](int64_t i) {
        ApplyPenaltiesParams p;
        p.logits = CopyOf(logits, i);
        p.repetition_penalty = repetition;
        p.presence_penalty = presence;
        p.frequency_penalty = frequency;
        p.token_ids = id_view;
        p.output_counts = count_view;
        p.token_start = start_view;
        p.banned_ids = banned_view;
        p.banned_start = banned_start_view;
        return kernels::ApplyPenalties(backend_, p, stream_);
      });
    };
    return c;
  }

  Backend& backend_;
  Stream& stream_;
  const KernelBenchOptions& o_;
  const KernelShape& s_;
  const DataType act_, w_;
};

// The fastest per-call time of `launch` (copy i for the i-th call): one warm-up, one call to
// size a measurement, then `repeats` measurements of enough calls to last min_seconds.
absl::StatusOr<double> Time(const std::function<absl::Status(int64_t)>& launch, int64_t copies,
                            Stream& stream, const KernelBenchOptions& o) {
  TESSERA_RETURN_IF_ERROR(launch(0));
  TESSERA_RETURN_IF_ERROR(stream.Synchronize());
  auto start = SteadyClock::now();
  TESSERA_RETURN_IF_ERROR(launch(1 % copies));
  TESSERA_RETURN_IF_ERROR(stream.Synchronize());
  const double once = std::max(SecondsSince(start), 1e-7);
  const auto calls =
      static_cast<int64_t>(std::clamp(std::ceil(o.min_seconds / once), 1.0, 100000.0));
  double best = once;
  int64_t next = 2;
  for (int r = 0; r < o.repeats; ++r) {
    start = SteadyClock::now();
    for (int64_t j = 0; j < calls; ++j) TESSERA_RETURN_IF_ERROR(launch(next++ % copies));
    TESSERA_RETURN_IF_ERROR(stream.Synchronize());
    best = std::min(best, SecondsSince(start) / static_cast<double>(calls));
  }
  return best;
}

std::string GiB(double bytes) { return absl::StrFormat("%.2f GiB", bytes / (1 << 30)); }

const char* TargetName(Target::Kind kind) {
  switch (kind) {
    case Target::Kind::kBandwidth:
      return "copy";
    case Target::Kind::kCompute:
      return "gemm";
    case Target::Kind::kNone:
      break;
  }
  return "";
}

}  // namespace

bool KernelResult::meets_target() const {
  switch (target.kind) {
    case Target::Kind::kBandwidth:
      return bandwidth_ratio >= target.ratio;
    case Target::Kind::kCompute:
      return compute_ratio >= target.ratio;
    case Target::Kind::kNone:
      break;
  }
  return true;
}

const std::vector<std::string>& KernelOpNames() {
  static const std::vector<std::string> names = {
      "embedding",        "add_rms_norm",      "rope",
      "swiglu",           "kv_write",          "matmul",
      "decode_attention", "prefill_attention", "sample_greedy",
      "sample_top_p",     "apply_penalties"};
  return names;
}

absl::Status ValidateKernelBenchOptions(const KernelBenchOptions& o) {
  const KernelShape& s = o.shape;
  if (s.hidden <= 0 || s.q_heads <= 0 || s.kv_heads <= 0 || s.head_dim <= 0 ||
      s.intermediate <= 0 || s.vocab <= 0) {
    return absl::InvalidArgumentError("every dimension of the shape must be positive");
  }
  if (s.q_heads % s.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "query heads (", s.q_heads, ") must be a multiple of KV heads (", s.kv_heads, ")"));
  }
  if (s.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim must be even for RoPE, got ", s.head_dim));
  }
  for (const auto& [name, list] :
       {std::pair<const char*, const std::vector<int64_t>*>{"batch sizes", &o.batch_sizes},
        {"contexts", &o.contexts},
        {"prefill tokens", &o.prefill_tokens}}) {
    for (int64_t v : *list) {
      if (v <= 0) return absl::InvalidArgumentError(absl::StrCat(name, " must be positive"));
    }
  }
  if (o.block_size <= 0 || o.gemm_size <= 0 || o.copy_bytes == 0 || o.repeats <= 0 ||
      !(o.min_seconds >= 0) || !(o.max_case_seconds > 0)) {
    return absl::InvalidArgumentError(
        "block size, GEMM size, copy bytes, repeats and max case seconds must be positive");
  }
  for (const std::string& op : o.ops) {
    const auto& names = KernelOpNames();
    if (std::find(names.begin(), names.end(), op) == names.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown op '", op, "'; the ops are ", absl::StrJoin(names, ", ")));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Peaks> MeasurePeaks(Backend& backend, const KernelBenchOptions& o) {
  TESSERA_RETURN_IF_ERROR(ValidateKernelBenchOptions(o));
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Stream> stream, backend.CreateStream());
  Peaks peaks;
  {
    TESSERA_ASSIGN_OR_RETURN(DeviceBuffer src, backend.Allocate(o.copy_bytes));
    TESSERA_ASSIGN_OR_RETURN(DeviceBuffer dst, backend.Allocate(o.copy_bytes));
    TESSERA_RETURN_IF_ERROR(backend.Memset(src.data(), 1, o.copy_bytes, *stream));
    TESSERA_RETURN_IF_ERROR(backend.Memset(dst.data(), 0, o.copy_bytes, *stream));
    double best = 1e30;
    for (int i = 0; i < 6; ++i) {  // the first is a warm-up
      TESSERA_RETURN_IF_ERROR(stream->Synchronize());
      const auto start = SteadyClock::now();
      TESSERA_RETURN_IF_ERROR(backend.CopyOnDevice(src.data(), dst.data(), o.copy_bytes, *stream));
      TESSERA_RETURN_IF_ERROR(stream->Synchronize());
      if (i > 0) best = std::min(best, SecondsSince(start));
    }
    peaks.copy_bytes_per_second = 2.0 * static_cast<double>(o.copy_bytes) / best;
    peaks.copy_what = absl::StrCat("CopyOnDevice of ", GiB(static_cast<double>(o.copy_bytes)),
                                   ", read + written");
  }
  {
    const int64_t g = o.gemm_size;
    Arena arena(backend, *stream);
    TESSERA_ASSIGN_OR_RETURN(auto input, arena.Floats(o.activation_dtype, {g, g}, 1));
    TESSERA_ASSIGN_OR_RETURN(auto weight, arena.Floats(o.dtype, {g, g}, 1));
    TESSERA_ASSIGN_OR_RETURN(auto out, arena.Floats(o.activation_dtype, {g, g}, 1));
    MatmulParams p;
    p.input = CopyOf(input, 0);
    p.weight = CopyOf(weight, 0);
    p.output = CopyOf(out, 0);
    double best = 1e30;
    for (int i = 0; i < 4; ++i) {  // the first is a warm-up
      const auto start = SteadyClock::now();
      TESSERA_RETURN_IF_ERROR(kernels::Matmul(backend, p, *stream));
      TESSERA_RETURN_IF_ERROR(stream->Synchronize());
      if (i > 0) best = std::min(best, SecondsSince(start));
    }
    peaks.gemm_flops_per_second = 2.0 * static_cast<double>(g) * g * g / best;
    peaks.gemm_what =
        absl::StrCat("Matmul ", g, "x", g, "x", g, ", weights ", DataTypeName(o.dtype),
                     ", activations ", DataTypeName(o.activation_dtype));
  }
  return peaks;
}

absl::StatusOr<KernelBenchReport> RunKernelBench(
    Backend& backend, const KernelBenchOptions& options, const Peaks& peaks,
    const std::function<void(const KernelResult&)>& on_result) {
  TESSERA_RETURN_IF_ERROR(ValidateKernelBenchOptions(options));
  KernelBenchReport report;
  report.device = backend.Describe();
  report.backend = std::string(backend.name());
  report.dtype = options.dtype;
  report.activation_dtype = options.activation_dtype;
  report.shape = options.shape;
  if (!(peaks.copy_bytes_per_second > 0) || !(peaks.gemm_flops_per_second > 0)) {
    return absl::InvalidArgumentError("RunKernelBench: the peaks must be positive");
  }
  report.peaks = peaks;
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Stream> stream, backend.CreateStream());
  CaseBuilder builder(backend, *stream, options);
  for (Case& c : builder.Build()) {
    const double need = c.rotating_bytes + c.fixed_bytes;
    if (need > static_cast<double>(options.max_case_bytes)) {
      report.skipped.push_back({c.op, c.shape,
                                absl::StrCat("needs ", GiB(need), ", more than the cap of ",
                                             GiB(static_cast<double>(options.max_case_bytes)))});
      continue;
    }
    // At least three calls run (warm-up, sizing, one measurement), each no faster than the
    // peaks allow.
    const double floor_seconds = std::max(c.bytes / report.peaks.copy_bytes_per_second,
                                          c.flops / report.peaks.gemm_flops_per_second);
    if (floor_seconds * (2 + options.repeats) > options.max_case_seconds) {
      report.skipped.push_back(
          {c.op, c.shape,
           absl::StrFormat(
               "would take at least %.1f s at the measured peaks, over the cap of %.1f s",
               floor_seconds * (2 + options.repeats), options.max_case_seconds)});
      continue;
    }
    const double room = static_cast<double>(options.max_case_bytes) - c.fixed_bytes;
    int64_t copies = 1;
    if (c.rotating_bytes > 0) {
      copies = static_cast<int64_t>(
          std::ceil(static_cast<double>(options.rotate_bytes) / c.rotating_bytes));
      copies = std::clamp<int64_t>(copies, 1, int64_t{1} << 16);
      copies =
          std::max<int64_t>(1, std::min(copies, static_cast<int64_t>(room / c.rotating_bytes)));
    }
    auto status_of = [&c](const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat(c.op, " ", c.shape, ": ", s.message()));
    };
    auto launch = c.prepare(copies);
    if (!launch.ok()) return status_of(launch.status());
    auto seconds = Time(*launch, copies, *stream, options);
    if (!seconds.ok()) return status_of(seconds.status());
    KernelResult r;
    r.op = c.op;
    r.shape = c.shape;
    r.seconds = *seconds;
    r.bytes = c.bytes;
    r.flops = c.flops;
    r.bandwidth_ratio = c.bytes / r.seconds / report.peaks.copy_bytes_per_second;
    r.compute_ratio = c.flops / r.seconds / report.peaks.gemm_flops_per_second;
    r.target = c.target;
    report.results.push_back(r);
    if (on_result) on_result(r);
  }
  return report;
}

std::string FormatHeader() {
  return absl::StrFormat("%-18s %-42s %11s %9s %9s %7s %7s  %s", "op", "shape", "us/call", "GB/s",
                         "TFLOP/s", "%copy", "%gemm", "target");
}

std::string FormatResultLine(const KernelResult& r) {
  std::string target;
  if (r.target.kind != Target::Kind::kNone) {
    target = absl::StrFormat(">=%.0f%% %s: %s", 100 * r.target.ratio, TargetName(r.target.kind),
                             r.meets_target() ? "met" : "BELOW");
  }
  return absl::StrFormat("%-18s %-42s %11.2f %9.1f %9.3f %6.1f%% %6.1f%%  %s", r.op, r.shape,
                         r.seconds * 1e6, r.bytes / r.seconds / 1e9, r.flops / r.seconds / 1e12,
                         100 * r.bandwidth_ratio, 100 * r.compute_ratio, target);
}

std::string FormatPeaks(const Peaks& peaks) {
  return absl::StrFormat("peak copy: %.1f GB/s (%s)\npeak GEMM: %.2f TFLOP/s (%s)",
                         peaks.copy_bytes_per_second / 1e9, peaks.copy_what,
                         peaks.gemm_flops_per_second / 1e12, peaks.gemm_what);
}

std::string FormatSkippedLine(const SkippedCase& skipped) {
  return absl::StrFormat("%-18s %-42s skipped: %s", skipped.op, skipped.shape, skipped.reason);
}

std::string ReportToJson(const KernelBenchReport& report) {
  nlohmann::json j;
  j["device"] = report.device;
  j["backend"] = report.backend;
  j["dtype"] = std::string(DataTypeName(report.dtype));
  j["activation_dtype"] = std::string(DataTypeName(report.activation_dtype));
  const KernelShape& s = report.shape;
  j["shape"] = {
      {"hidden", s.hidden},     {"q_heads", s.q_heads},           {"kv_heads", s.kv_heads},
      {"head_dim", s.head_dim}, {"intermediate", s.intermediate}, {"vocab", s.vocab}};
  j["peaks"] = {{"copy_bytes_per_second", report.peaks.copy_bytes_per_second},
                {"copy", report.peaks.copy_what},
                {"gemm_flops_per_second", report.peaks.gemm_flops_per_second},
                {"gemm", report.peaks.gemm_what}};
  j["results"] = nlohmann::json::array();
  for (const KernelResult& r : report.results) {
    nlohmann::json e = {{"op", r.op},
                        {"shape", r.shape},
                        {"seconds", r.seconds},
                        {"bytes", r.bytes},
                        {"flops", r.flops},
                        {"bandwidth_ratio", r.bandwidth_ratio},
                        {"compute_ratio", r.compute_ratio}};
    if (r.target.kind != Target::Kind::kNone) {
      e["target"] = {
          {"of", TargetName(r.target.kind)}, {"ratio", r.target.ratio}, {"met", r.meets_target()}};
    }
    j["results"].push_back(std::move(e));
  }
  j["skipped"] = nlohmann::json::array();
  for (const SkippedCase& k : report.skipped) {
    j["skipped"].push_back({{"op", k.op}, {"shape", k.shape}, {"reason", k.reason}});
  }
  return j.dump(2);
}

}  // namespace tessera::kernels::bench
