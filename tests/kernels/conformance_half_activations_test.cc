// Conformance of the ops with f16 and bf16 activations (inputs and outputs), which backends
// other than the CPU accept (the CPU backend's activations are f32: these tests skip there).
// Inputs are rounded to the activation type first, so the double-precision references see
// exactly what the backend sees; the tolerance adds one rounding of the output.
#include <cmath>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"
#include "tests/kernels/test_backends.h"

namespace tessera::kernels {
namespace {

using testing::BackendTest;
using testing::RandomFloats;
using testing::Rounding;
using testing::RoundTo;

constexpr DataType kHalfTypes[] = {DataType::kBF16, DataType::kF16};

class HalfActivationConformance : public BackendTest {
 protected:
  void SetUp() override {
    BackendTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    if (backend().device().type == DeviceType::kCpu) {
      GTEST_SKIP() << "the " << backend().name() << " backend takes f32 activations only";
    }
  }
};

TEST_P(HalfActivationConformance, EmbeddingWritesTheActivationType) {
  TESSERA_SEEDED_RNG(rng, 1101);
  const int64_t rows = 9, hidden = 24;
  const std::vector<int32_t> ids = {3, 0, 8, 42, 5};
  const auto tokens = static_cast<int64_t>(ids.size());
  for (DataType dtype : kHalfTypes) {
    SCOPED_TRACE(DataTypeName(dtype));
    const std::vector<float> table = RandomFloats(rng, rows * hidden);  // f32 table
    EmbeddingParams params;
    params.ids = UploadI32(ids, {tokens});
    params.table = Upload(table, DataType::kF32, {rows, hidden});
    params.output = Uninitialized(dtype, {tokens, hidden});
    ASSERT_TRUE(Embedding(backend(), params, stream()).ok());
    const std::vector<float> got = Download(params.output);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t c = 0; c < hidden; ++c) {
        const float want = ids[t] < rows ? table[ids[t] * hidden + c] : 0.0f;
        ASSERT_EQ(got[t * hidden + c], RoundTo(dtype, {want})[0]) << "token " << t;
      }
    }
  }
}

TEST_P(HalfActivationConformance, RmsNormFusedResidual) {
  TESSERA_SEEDED_RNG(rng, 1102);
  const int64_t rows = 5, hidden = 96;
  for (DataType dtype : kHalfTypes) {
    SCOPED_TRACE(DataTypeName(dtype));
    const std::vector<float> input = RoundTo(dtype, RandomFloats(rng, rows * hidden, -3, 3));
    const std::vector<float> residual = RoundTo(dtype, RandomFloats(rng, rows * hidden));
    const std::vector<float> weight = RoundTo(DataType::kBF16, RandomFloats(rng, hidden, 0.5, 1.5));
    RmsNormParams params;
    params.input = Upload(input, dtype, {rows, hidden});
    params.residual = Upload(residual, dtype, {rows, hidden});
    params.weight = Upload(weight, DataType::kBF16, {hidden});
    params.output = Uninitialized(dtype, {rows, hidden});
    ASSERT_TRUE(RmsNorm(backend(), params, stream()).ok());
    const std::vector<float> got = Download(params.output);
    const std::vector<float> got_residual = Download(params.residual);
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<float> sum(hidden);
      double squares = 0;
      for (int64_t c = 0; c < hidden; ++c) {
        sum[c] = RoundTo(dtype, {input[r * hidden + c] + residual[r * hidden + c]})[0];
        squares += static_cast<double>(sum[c]) * sum[c];
        ASSERT_EQ(got_residual[r * hidden + c], sum[c]) << "row " << r << " col " << c;
      }
      const double inv = 1.0 / std::sqrt(squares / hidden + 1e-6);
      for (int64_t c = 0; c < hidden; ++c) {
        const double want = sum[c] * inv * weight[c];
        ASSERT_NEAR(got[r * hidden + c], want, Rounding(dtype) * std::abs(want) + 1e-5)
            << "row " << r << " col " << c;
      }
    }
  }
}

TEST_P(HalfActivationConformance, RopeAndSwiglu) {
  TESSERA_SEEDED_RNG(rng, 1103);
  const int64_t tokens = 4, q_heads = 2, kv_heads = 1, dim = 16, half = 8;
  const std::vector<int32_t> positions = {0, 3, 100, 2047};
  std::vector<float> inv_freq(half);
  for (int64_t j = 0; j < half; ++j) inv_freq[j] = std::pow(10000.0f, -2.0f * j / (2 * half));
  for (DataType dtype : kHalfTypes) {
    SCOPED_TRACE(DataTypeName(dtype));
    const std::vector<float> q = RoundTo(dtype, RandomFloats(rng, tokens * q_heads * dim));
    const std::vector<float> k = RoundTo(dtype, RandomFloats(rng, tokens * kv_heads * dim));
    RopeParams rope;
    rope.query = Upload(q, dtype, {tokens, q_heads, dim});
    rope.key = Upload(k, dtype, {tokens, kv_heads, dim});
    rope.positions = UploadI32(positions, {tokens});
    rope.inv_freq = Upload(inv_freq, DataType::kF32, {half});
    ASSERT_TRUE(Rope(backend(), rope, stream()).ok());
    const std::vector<float> got_q = Download(rope.query);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t h = 0; h < q_heads; ++h) {
        const float* x = &q[(t * q_heads + h) * dim];
        for (int64_t j = 0; j < dim; ++j) {
          const double angle = static_cast<float>(positions[t]) * inv_freq[j % half];
          const double want = j < half ? x[j] * std::cos(angle) - x[j + half] * std::sin(angle)
                                       : x[j] * std::cos(angle) + x[j - half] * std::sin(angle);
          ASSERT_NEAR(got_q[(t * q_heads + h) * dim + j], want,
                      Rounding(dtype) * std::abs(want) + 1e-5);
        }
      }
    }

    const int64_t inter = 19;
    const std::vector<float> gate_up = RoundTo(dtype, RandomFloats(rng, tokens * 2 * inter, -6, 6));
    SwigluParams swiglu;
    swiglu.gate_up = Upload(gate_up, dtype, {tokens, 2 * inter});
    swiglu.output = Uninitialized(dtype, {tokens, inter});
    ASSERT_TRUE(Swiglu(backend(), swiglu, stream()).ok());
    const std::vector<float> got = Download(swiglu.output);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t j = 0; j < inter; ++j) {
        const double g = gate_up[t * 2 * inter + j];
        const double want = g / (1.0 + std::exp(-g)) * gate_up[t * 2 * inter + inter + j];
        ASSERT_NEAR(got[t * inter + j], want, Rounding(dtype) * std::abs(want) + 1e-5);
      }
    }
  }
}

TEST_P(HalfActivationConformance, MatmulWithEqualAndMixedWeightTypes) {
  struct Case {
    int64_t m, k, n;
    DataType input_dtype, weight_dtype;
    bool bias;
  };
  const std::vector<Case> cases = {
      {1, 64, 50, DataType::kBF16, DataType::kBF16, true},
      {33, 67, 130, DataType::kBF16, DataType::kBF16, false},
      {70, 96, 65, DataType::kF16, DataType::kF16, true},
      {3, 40, 29, DataType::kF16, DataType::kF32, true},
      {65, 129, 70, DataType::kBF16, DataType::kF32, false},
      {9, 64, 33, DataType::kBF16, DataType::kF16, true},
  };
  uint64_t seed = 1110;
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat("m=", c.m, " k=", c.k, " n=", c.n, " input ",
                              DataTypeName(c.input_dtype), " weight ", DataTypeName(c.weight_dtype),
                              c.bias ? " bias" : ""));
    TESSERA_SEEDED_RNG(rng, ++seed);
    const std::vector<float> x = RoundTo(c.input_dtype, RandomFloats(rng, c.m * c.k));
    const std::vector<float> w = RoundTo(c.weight_dtype, RandomFloats(rng, c.n * c.k));
    const std::vector<float> bias = RoundTo(c.weight_dtype, RandomFloats(rng, c.n));
    MatmulParams params;
    params.input = Upload(x, c.input_dtype, {c.m, c.k});
    params.weight = Upload(w, c.weight_dtype, {c.n, c.k});
    if (c.bias) params.bias = Upload(bias, c.weight_dtype, {c.n});
    params.output = Uninitialized(c.input_dtype, {c.m, c.n});
    const absl::Status status = Matmul(backend(), params, stream());
    ASSERT_TRUE(status.ok()) << status;
    const std::vector<float> got = Download(params.output);
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t j = 0; j < c.n; ++j) {
        double want = c.bias ? bias[j] : 0.0;
        double magnitude = std::abs(want);
        for (int64_t t = 0; t < c.k; ++t) {
          const double product = static_cast<double>(x[i * c.k + t]) * w[j * c.k + t];
          want += product;
          magnitude += std::abs(product);
        }
        ASSERT_NEAR(got[i * c.n + j], want,
                    1e-5 * magnitude + Rounding(c.input_dtype) * std::abs(want) + 1e-6)
            << "row " << i << " col " << j;
      }
    }
  }
}

// KvWrite from half activations into a cache of another type, then decode attention over it
// with half queries and outputs.
TEST_P(HalfActivationConformance, KvWriteAndPagedAttention) {
  TESSERA_SEEDED_RNG(rng, 1120);
  const int64_t q_heads = 4, kv_heads = 2, dim = 32, block_size = 4, seq_len = 11;
  const int64_t num_blocks = 4;
  const std::vector<int32_t> table = {2, 0, 3};
  std::vector<int64_t> slots;
  for (int64_t pos = 0; pos < seq_len; ++pos) {
    slots.push_back(table[pos / block_size] * block_size + pos % block_size);
  }
  for (DataType dtype : kHalfTypes) {
    for (DataType cache_dtype : {DataType::kF32, DataType::kBF16}) {
      SCOPED_TRACE(
          absl::StrCat(DataTypeName(dtype), " activations, ", DataTypeName(cache_dtype), " cache"));
      const std::vector<float> keys = RoundTo(dtype, RandomFloats(rng, seq_len * kv_heads * dim));
      const std::vector<float> values = RoundTo(dtype, RandomFloats(rng, seq_len * kv_heads * dim));
      const Shape cache_shape = {num_blocks, kv_heads, block_size, dim};
      KvWriteParams write;
      write.key = Upload(keys, dtype, {seq_len, kv_heads, dim});
      write.value = Upload(values, dtype, {seq_len, kv_heads, dim});
      write.slot_mapping = UploadI64(slots, {seq_len});
      write.key_cache =
          Upload(std::vector<float>(NumElements(cache_shape), 0.0f), cache_dtype, cache_shape);
      write.value_cache =
          Upload(std::vector<float>(NumElements(cache_shape), 0.0f), cache_dtype, cache_shape);
      ASSERT_TRUE(KvWrite(backend(), write, stream()).ok());
      const std::vector<float> rounded_keys = RoundTo(cache_dtype, keys);
      const std::vector<float> rounded_values = RoundTo(cache_dtype, values);

      const std::vector<float> q = RoundTo(dtype, RandomFloats(rng, q_heads * dim, -2, 2));
      PagedAttentionParams params;
      params.query = Upload(q, dtype, {1, q_heads, dim});
      params.key_cache = write.key_cache;
      params.value_cache = write.value_cache;
      params.block_tables = UploadI32(table, {1, 3});
      params.query_start = UploadI32({0, 1}, {2});
      params.seq_lens = UploadI32({static_cast<int32_t>(seq_len)}, {1});
      params.output = Uninitialized(dtype, {1, q_heads, dim});
      params.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
      const absl::Status status = PagedAttention(backend(), params, stream());
      ASSERT_TRUE(status.ok()) << status;
      const std::vector<float> got = Download(params.output);
      for (int64_t h = 0; h < q_heads; ++h) {
        const int64_t kvh = h / (q_heads / kv_heads);
        std::vector<double> scores(seq_len);
        double max = -INFINITY;
        for (int64_t j = 0; j < seq_len; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < dim; ++d) {
            dot +=
                static_cast<double>(q[h * dim + d]) * rounded_keys[(j * kv_heads + kvh) * dim + d];
          }
          scores[j] = dot * params.scale;
          max = std::max(max, scores[j]);
        }
        double sum = 0;
        for (double& s : scores) sum += (s = std::exp(s - max));
        for (int64_t d = 0; d < dim; ++d) {
          double want = 0;
          for (int64_t j = 0; j < seq_len; ++j) {
            want += scores[j] / sum * rounded_values[(j * kv_heads + kvh) * dim + d];
          }
          ASSERT_NEAR(got[h * dim + d], want, Rounding(dtype) * std::abs(want) + 2e-5)
              << "head " << h << " dim " << d;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, HalfActivationConformance,
                         ::testing::ValuesIn(testing::BackendNames()), testing::BackendParamName());

}  // namespace
}  // namespace tessera::kernels
