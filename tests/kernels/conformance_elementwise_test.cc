// Conformance of the row-wise ops (Embedding, RmsNorm, Rope, Swiglu) on every backend, against
// double-precision references written here.
#include <cmath>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/ops.h"
#include "tests/kernels/test_backends.h"

namespace tessera::kernels {
namespace {

using testing::BackendTest;
using testing::RandomFloats;
using testing::RoundTo;

class ElementwiseConformance : public BackendTest {};

TEST_P(ElementwiseConformance, EmbeddingGathersRowsAndZeroesOtherShards) {
  TESSERA_SEEDED_RNG(rng, 101);
  const int64_t rows = 11, hidden = 20, row_offset = 7;
  for (DataType dtype : {DataType::kF32, DataType::kBF16, DataType::kF16}) {
    SCOPED_TRACE(DataTypeName(dtype));
    const std::vector<float> table = RoundTo(dtype, RandomFloats(rng, rows * hidden));
    const std::vector<int32_t> ids = {7, 17, 6, 0, 12, 18, 100, 9};
    const auto tokens = static_cast<int64_t>(ids.size());
    // The output is a column range of a wider buffer.
    MutableTensorView wide = Uninitialized(DataType::kF32, {tokens, hidden + 5});
    EmbeddingParams params;
    params.ids = UploadI32(ids, {tokens});
    params.table = Upload(table, dtype, {rows, hidden});
    params.output = SubView(wide, 3, {tokens, hidden}, {hidden + 5, 1});
    params.row_offset = row_offset;
    ASSERT_TRUE(Embedding(backend(), params, stream()).ok());
    const std::vector<float> got = Download(params.output);
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t row = ids[t] - row_offset;
      for (int64_t c = 0; c < hidden; ++c) {
        const float want = (row >= 0 && row < rows) ? table[row * hidden + c] : 0.0f;
        ASSERT_EQ(got[t * hidden + c], want) << "token " << t << " col " << c;
      }
    }
  }
}

// Reference RMSNorm of one row in double.
std::vector<double> RmsNormRow(const float* x, const float* weight, int64_t hidden, float epsilon) {
  double sum = 0;
  for (int64_t c = 0; c < hidden; ++c) sum += static_cast<double>(x[c]) * x[c];
  const double inv = 1.0 / std::sqrt(sum / hidden + epsilon);
  std::vector<double> out(hidden);
  for (int64_t c = 0; c < hidden; ++c) out[c] = x[c] * inv * weight[c];
  return out;
}

TEST_P(ElementwiseConformance, RmsNormMatchesReferenceForEveryWeightType) {
  TESSERA_SEEDED_RNG(rng, 202);
  const int64_t rows = 9, hidden = 70;
  for (DataType dtype : {DataType::kF32, DataType::kBF16, DataType::kF16}) {
    SCOPED_TRACE(DataTypeName(dtype));
    const std::vector<float> input = RandomFloats(rng, rows * hidden, -3.0f, 3.0f);
    const std::vector<float> weight = RoundTo(dtype, RandomFloats(rng, hidden, 0.5f, 1.5f));
    RmsNormParams params;
    params.input = Upload(input, DataType::kF32, {rows, hidden});
    params.weight = Upload(weight, dtype, {hidden});
    params.output = Uninitialized(DataType::kF32, {rows, hidden});
    params.epsilon = 1e-5f;
    ASSERT_TRUE(RmsNorm(backend(), params, stream()).ok());
    const std::vector<float> got = Download(params.output);
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<double> want =
          RmsNormRow(&input[r * hidden], weight.data(), hidden, params.epsilon);
      for (int64_t c = 0; c < hidden; ++c) {
        ASSERT_NEAR(got[r * hidden + c], want[c], 1e-5 * std::abs(want[c]) + 1e-6)
            << "row " << r << " col " << c;
      }
    }
  }
}

TEST_P(ElementwiseConformance, RmsNormFusedResidualInPlace) {
  TESSERA_SEEDED_RNG(rng, 203);
  const int64_t rows = 4, hidden = 33;
  const std::vector<float> input = RandomFloats(rng, rows * hidden);
  const std::vector<float> residual = RandomFloats(rng, rows * hidden);
  const std::vector<float> weight = RoundTo(DataType::kBF16, RandomFloats(rng, hidden));
  RmsNormParams params;
  MutableTensorView in = Upload(input, DataType::kF32, {rows, hidden});
  params.input = in;
  params.output = in;  // in place
  params.residual = Upload(residual, DataType::kF32, {rows, hidden});
  params.weight = Upload(weight, DataType::kBF16, {hidden});
  ASSERT_TRUE(RmsNorm(backend(), params, stream()).ok());
  const std::vector<float> got = Download(params.output);
  const std::vector<float> got_residual = Download(params.residual);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> sum(hidden);
    for (int64_t c = 0; c < hidden; ++c) sum[c] = input[r * hidden + c] + residual[r * hidden + c];
    const std::vector<double> want = RmsNormRow(sum.data(), weight.data(), hidden, 1e-6f);
    for (int64_t c = 0; c < hidden; ++c) {
      ASSERT_EQ(got_residual[r * hidden + c], sum[c]);
      ASSERT_NEAR(got[r * hidden + c], want[c], 1e-5 * std::abs(want[c]) + 1e-6);
    }
  }
}

// Per-head norm (Qwen3's q_norm) on the query heads of a fused QKV buffer, in place.
TEST_P(ElementwiseConformance, RmsNormPerHeadOnStridedView) {
  TESSERA_SEEDED_RNG(rng, 204);
  const int64_t tokens = 3, heads = 4, kv = 2, dim = 16;
  const int64_t width = (heads + 2 * kv) * dim;
  const std::vector<float> qkv = RandomFloats(rng, tokens * width);
  const std::vector<float> weight = RoundTo(DataType::kF16, RandomFloats(rng, dim));
  MutableTensorView fused = Upload(qkv, DataType::kF32, {tokens, width});
  MutableTensorView q = SubView(fused, 0, {tokens, heads, dim}, {width, dim, 1});
  RmsNormParams params;
  params.input = q;
  params.output = q;
  params.weight = Upload(weight, DataType::kF16, {dim});
  ASSERT_TRUE(RmsNorm(backend(), params, stream()).ok());
  const std::vector<float> got = Download(fused);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      const float* x = &qkv[t * width + h * dim];
      const std::vector<double> want = RmsNormRow(x, weight.data(), dim, 1e-6f);
      for (int64_t c = 0; c < dim; ++c) {
        ASSERT_NEAR(got[t * width + h * dim + c], want[c], 1e-5 * std::abs(want[c]) + 1e-6);
      }
    }
    for (int64_t c = heads * dim; c < width; ++c) {  // k and v untouched
      ASSERT_EQ(got[t * width + c], qkv[t * width + c]);
    }
  }
}

TEST_P(ElementwiseConformance, RopeRotatesHalvesOfStridedQueryAndKey) {
  TESSERA_SEEDED_RNG(rng, 305);
  const int64_t tokens = 5, q_heads = 4, kv_heads = 2, dim = 24, half = 8;  // partial rotary
  const int64_t width = (q_heads + 2 * kv_heads) * dim;
  const std::vector<float> qkv = RandomFloats(rng, tokens * width);
  const std::vector<int32_t> positions = {0, 1, 17, 1000, 4095};
  std::vector<float> inv_freq(half);
  for (int64_t j = 0; j < half; ++j) {
    inv_freq[j] = static_cast<float>(1.0 / std::pow(10000.0, 2.0 * j / (2 * half)));
  }
  MutableTensorView fused = Upload(qkv, DataType::kF32, {tokens, width});
  RopeParams params;
  params.query = SubView(fused, 0, {tokens, q_heads, dim}, {width, dim, 1});
  params.key = SubView(fused, q_heads * dim, {tokens, kv_heads, dim}, {width, dim, 1});
  params.positions = UploadI32(positions, {tokens});
  params.inv_freq = Upload(inv_freq, DataType::kF32, {half});
  ASSERT_TRUE(Rope(backend(), params, stream()).ok());
  const std::vector<float> got = Download(fused);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < q_heads + 2 * kv_heads; ++h) {
      const float* x = &qkv[t * width + h * dim];
      const float* y = &got[t * width + h * dim];
      const bool rotated = h < q_heads + kv_heads;  // v is untouched
      for (int64_t j = 0; j < dim; ++j) {
        double want = x[j];
        if (rotated && j < 2 * half) {
          const int64_t f = j % half;
          // The angle is an f32 product, as in HF; cos/sin of it in double.
          const double angle = static_cast<float>(positions[t]) * inv_freq[f];
          want = j < half ? x[j] * std::cos(angle) - x[j + half] * std::sin(angle)
                          : x[j] * std::cos(angle) + x[j - half] * std::sin(angle);
        }
        ASSERT_NEAR(y[j], want, 2e-6) << "token " << t << " head " << h << " dim " << j;
      }
    }
  }
}

TEST_P(ElementwiseConformance, SwigluMatchesReferenceAndWorksInPlace) {
  TESSERA_SEEDED_RNG(rng, 406);
  const int64_t tokens = 6, inter = 37;
  std::vector<float> gate_up = RandomFloats(rng, tokens * 2 * inter, -8.0f, 8.0f);
  // Gates far out on both sides, where exp(-g) overflows or vanishes (silu(g) -> g or -> 0).
  const float extremes[] = {-1000.0f, -100.0f, -88.5f, 88.5f, 100.0f, 1000.0f, 0.0f, -0.0f};
  for (size_t i = 0; i < std::size(extremes); ++i)
    gate_up[(i % tokens) * 2 * inter + 3 + i] = extremes[i];
  for (bool in_place : {false, true}) {
    SCOPED_TRACE(in_place ? "in place" : "separate output");
    SwigluParams params;
    MutableTensorView input = Upload(gate_up, DataType::kF32, {tokens, 2 * inter});
    params.gate_up = input;
    params.output = in_place ? SubView(input, 0, {tokens, inter}, {2 * inter, 1})
                             : Uninitialized(DataType::kF32, {tokens, inter});
    ASSERT_TRUE(Swiglu(backend(), params, stream()).ok());
    const std::vector<float> got = Download(params.output);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t j = 0; j < inter; ++j) {
        const double g = gate_up[t * 2 * inter + j];
        const double u = gate_up[t * 2 * inter + inter + j];
        const double want = g / (1.0 + std::exp(-g)) * u;
        ASSERT_NEAR(got[t * inter + j], want, 1e-5 * std::abs(want) + 1e-6);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, ElementwiseConformance,
                         ::testing::ValuesIn(testing::BackendNames()), testing::BackendParamName());

}  // namespace
}  // namespace tessera::kernels
