#include "model/weights.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tessera::model {

std::vector<TensorSpec> LlamaTensorSpecs(const ModelConfig& config) {
  const int64_t hidden = config.hidden_size;
  const int64_t q_size = config.q_size();
  const int64_t kv_size = config.kv_size();
  const int64_t inter = config.intermediate_size;
  std::vector<TensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {config.vocab_size, hidden}});
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const std::string layer = absl::StrCat("model.layers.", i, ".");
    const std::string attn = absl::StrCat(layer, "self_attn.");
    specs.push_back({layer + "input_layernorm.weight", {hidden}});
    specs.push_back({attn + "q_proj.weight", {q_size, hidden}});
    if (config.attention_bias) specs.push_back({attn + "q_proj.bias", {q_size}});
    specs.push_back({attn + "k_proj.weight", {kv_size, hidden}});
    if (config.attention_bias) specs.push_back({attn + "k_proj.bias", {kv_size}});
    specs.push_back({attn + "v_proj.weight", {kv_size, hidden}});
    if (config.attention_bias) specs.push_back({attn + "v_proj.bias", {kv_size}});
    specs.push_back({attn + "o_proj.weight", {hidden, q_size}});
    if (config.qk_norm) {
      specs.push_back({attn + "q_norm.weight", {config.head_dim}});
      specs.push_back({attn + "k_norm.weight", {config.head_dim}});
    }
    specs.push_back({layer + "post_attention_layernorm.weight", {hidden}});
    specs.push_back({layer + "mlp.gate_proj.weight", {inter, hidden}});
    specs.push_back({layer + "mlp.up_proj.weight", {inter, hidden}});
    specs.push_back({layer + "mlp.down_proj.weight", {hidden, inter}});
  }
  specs.push_back({"model.norm.weight", {hidden}});
  if (!config.tie_word_embeddings) specs.push_back({"lm_head.weight", {config.vocab_size, hidden}});
  return specs;
}

absl::Status ValidateWeights(const ModelConfig& config, const WeightSource& source) {
  // Reports the first problem and how many more there are, so one run shows the extent.
  absl::Status first;
  int64_t problems = 0;
  auto record = [&](absl::Status status) {
    if (problems++ == 0) first = std::move(status);
  };
  for (const TensorSpec& spec : LlamaTensorSpecs(config)) {
    absl::StatusOr<TensorView> view = source.Get(spec.name);
    if (absl::IsNotFound(view.status())) {
      record(absl::NotFoundError(
          absl::StrCat(source.Describe(), ": missing tensor \"", spec.name, "\"")));
      continue;
    }
    if (!view.ok()) {
      record(absl::Status(view.status().code(),
                          absl::StrCat(source.Describe(), ": cannot read tensor \"", spec.name,
                                       "\": ", view.status().message())));
      continue;
    }
    if (view->shape() != spec.shape) {
      record(absl::InvalidArgumentError(
          absl::StrCat(source.Describe(), ": tensor \"", spec.name, "\" has shape ",
                       ShapeToString(view->shape()), ", expected ", ShapeToString(spec.shape),
                       " for ", ArchitectureName(config.architecture), " with this config")));
      continue;
    }
    if (!IsFloatingPoint(view->dtype())) {
      record(absl::InvalidArgumentError(absl::StrCat(source.Describe(), ": tensor \"", spec.name,
                                                     "\" has dtype ", DataTypeName(view->dtype()),
                                                     ", expected f32, f16 or bf16")));
    }
  }
  if (problems <= 1) return first;
  return absl::Status(first.code(), absl::StrCat(first.message(), " (and ", problems - 1,
                                                 " more problems with the weights)"));
}

void* InMemoryWeights::AddUninitialized(std::string name, DataType dtype, Shape shape) {
  const size_t nbytes = static_cast<size_t>(NumElements(shape)) * DataTypeSize(dtype);
  // At least one byte, so that even an empty tensor has a non-null view.
  // Not value-initialised: random weights of a large model would pay for zeroing gigabytes.
  std::unique_ptr<char[]> data(new char[std::max<size_t>(nbytes, 1)]);
  void* raw = data.get();
  Entry entry{std::move(name), dtype, std::move(shape), std::move(data)};
  for (Entry& existing : entries_) {
    if (existing.name == entry.name) {
      existing = std::move(entry);
      return raw;
    }
  }
  entries_.push_back(std::move(entry));
  return raw;
}

void InMemoryWeights::Add(std::string name, DataType dtype, Shape shape, const void* data) {
  const size_t nbytes = static_cast<size_t>(NumElements(shape)) * DataTypeSize(dtype);
  void* dst = AddUninitialized(std::move(name), dtype, std::move(shape));
  if (nbytes > 0) std::memcpy(dst, data, nbytes);
}

absl::StatusOr<TensorView> InMemoryWeights::Get(absl::string_view name) const {
  for (const Entry& entry : entries_) {
    if (entry.name == name) return TensorView(entry.data.get(), entry.dtype, entry.shape);
  }
  return absl::NotFoundError(absl::StrCat(description_, ": no tensor \"", name, "\""));
}

std::vector<std::string> InMemoryWeights::Names() const {
  std::vector<std::string> names;
  names.reserve(entries_.size());
  for (const Entry& entry : entries_) names.push_back(entry.name);
  return names;
}

namespace {

// FNV-1a, 64 bit: a fixed hash, the same everywhere (unlike std::hash).
uint64_t Fnv1a64(absl::string_view text) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (char c : text) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 0x100000001b3ull;
  }
  return hash;
}

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t state) : state_(state) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

 private:
  uint64_t state_;
};

// Box-Muller needs log, sin and cos. libm's may differ in the last bit between machines and are
// slow; these use only IEEE-exact f32 operations (+ - * / sqrt) in simple loops the compiler can
// pipeline, so the same seed gives the same bytes everywhere, at a few ns per value. Their error
// (< 1e-6) does not matter for random weights.

// ln(u) for a normal u > 0.
inline float Log(float u) {
  uint32_t bits;
  std::memcpy(&bits, &u, sizeof(bits));
  int32_t exponent = static_cast<int32_t>((bits >> 23) & 0xff) - 127;
  bits = (bits & 0x7fffffu) | (127u << 23);
  float m;  // in [1, 2), then [sqrt(1/2), sqrt(2))
  std::memcpy(&m, &bits, sizeof(m));
  const bool high = m > 1.41421356f;
  m = high ? m * 0.5f : m;
  exponent += high ? 1 : 0;
  // ln(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172.
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  const float series = 1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9))));
  return static_cast<float>(exponent) * 0.693147181f + 2.0f * s * series;
}

// sin(2 pi t) and cos(2 pi t) for t in [0, 1).
inline void SinCosTwoPi(float t, float& sin_out, float& cos_out) {
  const float quarter = t * 4.0f;  // exact
  // 0..4: the nearest quarter turn (quarter >= 0, so adding 0.5 and truncating rounds).
  const int32_t q = static_cast<int32_t>(quarter + 0.5f);  // NOLINT(bugprone-incorrect-roundings)
  const float x = (quarter - static_cast<float>(q)) * 1.57079633f;  // [-pi/4, pi/4]
  const float x2 = x * x;
  const float s =
      x *
      (1.0f + x2 * (-1.0f / 6 + x2 * (1.0f / 120 + x2 * (-1.0f / 5040 + x2 * (1.0f / 362880)))));
  const float c =
      1.0f + x2 * (-0.5f + x2 * (1.0f / 24 + x2 * (-1.0f / 720 +
                                                   x2 * (1.0f / 40320 + x2 * (-1.0f / 3628800)))));
  // sin(q pi/2 + x), cos(q pi/2 + x) from sin x and cos x, with bit operations rather than
  // branches (q is random: branches would be mispredicted half the time).
  uint32_t s_bits;
  uint32_t c_bits;
  std::memcpy(&s_bits, &s, sizeof(s_bits));
  std::memcpy(&c_bits, &c, sizeof(c_bits));
  const uint32_t swap = 0u - static_cast<uint32_t>(q & 1);  // all ones for odd q
  const uint32_t sin_bits =
      ((c_bits & swap) | (s_bits & ~swap)) ^ (static_cast<uint32_t>(q & 2) << 30);
  const uint32_t cos_bits =
      ((s_bits & swap) | (c_bits & ~swap)) ^ (static_cast<uint32_t>((q + 1) & 2) << 30);
  std::memcpy(&sin_out, &sin_bits, sizeof(sin_out));
  std::memcpy(&cos_out, &cos_bits, sizeof(cos_out));
}

// Fills `out[0, count)` with mean + std * N(0, 1) by Box-Muller, one SplitMix64 output per pair:
// 24 bits for each uniform (so |N| <= 5.77, which random weights do not miss).
void FillNormal(SplitMix64& rng, float mean, float std, float* out, size_t count) {
  constexpr size_t kBlock = 256;
  constexpr float kUnit = 1.0f / 16777216.0f;  // 2^-24
  float radius[kBlock];
  float turn[kBlock];
  for (size_t start = 0; start < count; start += 2 * kBlock) {
    const size_t pairs = std::min(kBlock, (count - start + 1) / 2);
    for (size_t j = 0; j < pairs; ++j) {
      const uint64_t bits = rng.Next();
      radius[j] = static_cast<float>((bits >> 40) + 1) * kUnit;  // (0, 1]
      turn[j] = static_cast<float>(bits & 0xffffff) * kUnit;     // [0, 1)
    }
    for (size_t j = 0; j < pairs; ++j) radius[j] = std::sqrt(-2.0f * Log(radius[j]));
    float* dst = out + start;
    const size_t full_pairs = std::min(pairs, (count - start) / 2);
    for (size_t j = 0; j < full_pairs; ++j) {
      float sin_value;
      float cos_value;
      SinCosTwoPi(turn[j], sin_value, cos_value);
      dst[2 * j] = mean + std * (radius[j] * cos_value);
      dst[2 * j + 1] = mean + std * (radius[j] * sin_value);
    }
    if (full_pairs < pairs) {  // an odd count: the last value alone
      float sin_value;
      float cos_value;
      SinCosTwoPi(turn[full_pairs], sin_value, cos_value);
      dst[2 * full_pairs] = mean + std * (radius[full_pairs] * cos_value);
    }
  }
}

bool IsNormWeight(absl::string_view name) { return absl::EndsWith(name, "norm.weight"); }

}  // namespace

std::unique_ptr<InMemoryWeights> MakeRandomWeights(const ModelConfig& config, DataType dtype,
                                                   uint64_t seed, float init_std) {
  auto weights = std::make_unique<InMemoryWeights>(
      absl::StrCat("random weights (seed ", seed, ", ", DataTypeName(dtype), ")"));
  constexpr size_t kChunk = size_t{1} << 14;
  const size_t element_size = DataTypeSize(dtype);
  // Tensors are allocated here, then filled by a few threads, a tensor at a time: each tensor's
  // stream depends only on the seed and its name, so the result does not depend on the threads
  // (an 8B-shaped model is 8e9 draws: minutes on one core).
  struct Job {
    TensorSpec spec;
    char* out;
  };
  std::vector<Job> jobs;
  for (TensorSpec& spec : LlamaTensorSpecs(config)) {
    auto* out = static_cast<char*>(weights->AddUninitialized(spec.name, dtype, spec.shape));
    jobs.push_back({std::move(spec), out});
  }
  std::atomic<size_t> next{0};
  auto fill = [&] {
    std::vector<float> chunk(kChunk);
    for (size_t j = next++; j < jobs.size(); j = next++) {
      const TensorSpec& spec = jobs[j].spec;
      const size_t numel = static_cast<size_t>(NumElements(spec.shape));
      const float mean = IsNormWeight(spec.name) ? 1.0f : 0.0f;
      SplitMix64 rng(seed ^ Fnv1a64(spec.name));
      for (size_t done = 0; done < numel; done += kChunk) {
        const size_t count = std::min(kChunk, numel - done);
        FillNormal(rng, mean, init_std, chunk.data(), count);
        ConvertFromF32(chunk.data(), dtype, jobs[j].out + done * element_size, count);
      }
    }
  };
  const size_t threads =
      std::max<size_t>(1, std::min<size_t>({std::thread::hardware_concurrency(), 16, jobs.size()}));
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(fill);
  fill();
  for (std::thread& t : pool) t.join();
  return weights;
}

}  // namespace tessera::model
