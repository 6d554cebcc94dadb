// Conformance of Matmul on every backend against a double-precision reference: f32, bf16 and
// f16 weights, decode-sized and prefill-sized m, odd k (SIMD tails), bias, strided input.
#include <cmath>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"
#include "tests/kernels/test_backends.h"

namespace tessera::kernels {
namespace {

using testing::BackendTest;
using testing::RandomFloats;
using testing::RoundTo;

class MatmulConformance : public BackendTest {};

struct MatmulCase {
  int64_t m, k, n;
  DataType weight_dtype;
  bool bias;
  bool strided_input;
};

// |got - want| <= 1e-5 * sum |x * w| + 1e-6 per element: f32 accumulation, any order.
void ExpectMatchesReference(const MatmulCase& c, const std::vector<float>& x,
                            const std::vector<float>& w, const std::vector<float>& bias,
                            const std::vector<float>& got) {
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < c.n; ++j) {
      double want = c.bias ? bias[j] : 0.0;
      double magnitude = std::abs(want);
      for (int64_t t = 0; t < c.k; ++t) {
        const double product = static_cast<double>(x[i * c.k + t]) * w[j * c.k + t];
        want += product;
        magnitude += std::abs(product);
      }
      ASSERT_NEAR(got[i * c.n + j], want, 1e-5 * magnitude + 1e-6) << "row " << i << " col " << j;
    }
  }
}

TEST_P(MatmulConformance, MatchesReference) {
  const std::vector<MatmulCase> cases = {
      {1, 64, 50, DataType::kF32, false, false},   {1, 67, 130, DataType::kBF16, true, true},
      {1, 256, 97, DataType::kF16, false, false},  {2, 40, 29, DataType::kBF16, false, true},
      {3, 67, 61, DataType::kF16, true, false},    {4, 64, 50, DataType::kF32, true, true},
      {5, 31, 77, DataType::kBF16, false, false},  {8, 64, 130, DataType::kF16, false, true},
      {9, 67, 130, DataType::kBF16, true, true},   {33, 64, 50, DataType::kF32, false, false},
      {40, 129, 300, DataType::kF16, true, false}, {64, 96, 257, DataType::kBF16, false, true},
      {17, 1, 5, DataType::kF32, true, false},     {70, 67, 130, DataType::kBF16, true, true},
      {65, 64, 33, DataType::kF16, false, false},
  };
  uint64_t seed = 500;
  for (const MatmulCase& c : cases) {
    SCOPED_TRACE(absl::StrCat("m=", c.m, " k=", c.k, " n=", c.n, " weight ",
                              DataTypeName(c.weight_dtype), c.bias ? " bias" : "",
                              c.strided_input ? " strided input" : ""));
    TESSERA_SEEDED_RNG(rng, ++seed);
    const std::vector<float> x = RandomFloats(rng, c.m * c.k);
    const std::vector<float> w = RoundTo(c.weight_dtype, RandomFloats(rng, c.n * c.k));
    const std::vector<float> bias = RoundTo(c.weight_dtype, RandomFloats(rng, c.n));
    MatmulParams params;
    if (c.strided_input) {  // columns [3, 3 + k) of a wider buffer
      std::vector<float> wide(c.m * (c.k + 5), 7.0f);
      for (int64_t i = 0; i < c.m; ++i) {
        std::copy(&x[i * c.k], &x[i * c.k] + c.k, &wide[i * (c.k + 5) + 3]);
      }
      params.input =
          SubView(Upload(wide, DataType::kF32, {c.m, c.k + 5}), 3, {c.m, c.k}, {c.k + 5, 1});
    } else {
      params.input = Upload(x, DataType::kF32, {c.m, c.k});
    }
    params.weight = Upload(w, c.weight_dtype, {c.n, c.k});
    if (c.bias) params.bias = Upload(bias, c.weight_dtype, {c.n});
    params.output = Uninitialized(DataType::kF32, {c.m, c.n});
    ASSERT_TRUE(Matmul(backend(), params, stream()).ok());
    ExpectMatchesReference(c, x, w, bias, Download(params.output));
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, MatmulConformance, ::testing::ValuesIn(testing::BackendNames()),
                         testing::BackendParamName());

}  // namespace
}  // namespace tessera::kernels
