#include "model/rope.h"

#include <cmath>
#include <vector>

#include <gtest/gtest.h>

namespace tessera::model {
namespace {

// The expectations are computed here independently, in double precision, from the formulas of
// transformers' modeling_rope_utils (the implementation under test works in f32).

std::vector<double> DefaultInvFreq(double theta, int64_t dim) {
  std::vector<double> out;
  for (int64_t i = 0; i < dim; i += 2) out.push_back(1.0 / std::pow(theta, double(i) / dim));
  return out;
}

std::vector<double> Llama3InvFreq(double theta, int64_t dim, double factor, double low, double high,
                                  double old_context) {
  std::vector<double> out;
  const double low_wavelen = old_context / low;
  const double high_wavelen = old_context / high;
  for (double f : DefaultInvFreq(theta, dim)) {
    const double wavelen = 2 * M_PI / f;
    if (wavelen < high_wavelen) {
      out.push_back(f);  // high frequency: kept
    } else if (wavelen > low_wavelen) {
      out.push_back(f / factor);  // low frequency: scaled
    } else {
      const double smooth = (old_context / wavelen - low) / (high - low);
      out.push_back((1 - smooth) * f / factor + smooth * f);
    }
  }
  return out;
}

ModelConfig Config(int64_t head_dim, double theta) {
  ModelConfig config;
  config.hidden_size = head_dim * 4;
  config.num_attention_heads = 4;
  config.head_dim = head_dim;
  config.rope_theta = theta;
  return config;
}

// The implementation rounds every step to f32 as torch does; the double-precision formula agrees
// to this relative tolerance.
constexpr double kRelativeTolerance = 1e-6;

void ExpectNear(const std::vector<float>& actual, const std::vector<double>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    EXPECT_NEAR(actual[i], expected[i], std::abs(expected[i]) * kRelativeTolerance) << "j=" << i;
  }
}

TEST(RopeTest, DefaultMatchesFormula) {
  const ModelConfig config = Config(128, 10000.0);
  const std::vector<float> inv_freq = RopeInvFreq(config);
  ASSERT_EQ(inv_freq.size(), 64u);
  EXPECT_EQ(inv_freq[0], 1.0f);
  ExpectNear(inv_freq, DefaultInvFreq(10000.0, 128));
}

TEST(RopeTest, LinearDividesByFactor) {
  ModelConfig config = Config(64, 10000.0);
  config.rope_scaling.type = RopeScaling::Type::kLinear;
  config.rope_scaling.factor = 4.0;
  std::vector<double> expected = DefaultInvFreq(10000.0, 64);
  for (double& f : expected) f /= 4.0;
  ExpectNear(RopeInvFreq(config), expected);
}

TEST(RopeTest, Llama31ScalingMatchesFormula) {
  ModelConfig config = Config(128, 500000.0);
  config.rope_scaling = {RopeScaling::Type::kLlama3, 8.0, 1.0, 4.0, 8192};
  const std::vector<float> inv_freq = RopeInvFreq(config);
  const std::vector<double> expected = Llama3InvFreq(500000.0, 128, 8.0, 1.0, 4.0, 8192);
  ExpectNear(inv_freq, expected);
  // All three regimes occur: kept, blended, divided by the factor.
  const std::vector<double> plain = DefaultInvFreq(500000.0, 128);
  EXPECT_EQ(inv_freq[0], 1.0f);
  EXPECT_NEAR(inv_freq[63], plain[63] / 8.0, plain[63] / 8.0 * kRelativeTolerance);
  int blended = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    const double ratio = expected[i] / plain[i];
    if (ratio < 1.0 - 1e-9 && ratio > 1.0 / 8.0 + 1e-9) ++blended;
  }
  EXPECT_GT(blended, 0);
}

TEST(RopeTest, Llama32ScalingKnownValues) {
  ModelConfig config = Config(64, 500000.0);
  config.rope_scaling = {RopeScaling::Type::kLlama3, 32.0, 1.0, 4.0, 8192};
  const std::vector<float> inv_freq = RopeInvFreq(config);
  ExpectNear(inv_freq, Llama3InvFreq(500000.0, 64, 32.0, 1.0, 4.0, 8192));
  // j = 31: 500000^(-62/64) / 32, a low frequency divided by the factor.
  const double last = std::pow(500000.0, -62.0 / 64.0) / 32.0;
  EXPECT_NEAR(inv_freq[31], last, last * kRelativeTolerance);
}

}  // namespace
}  // namespace tessera::model
