// The CPU backend's AVX2 inner loops against the portable ones (cpu_simd.h): conversions bit for
// bit on the values where rounding has choices to make, SwiGLU within a few ulp.
#include "kernels/cpu/cpu_simd.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "common/dtype.h"

namespace tessera::kernels::cpu {
namespace {

float FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Values where rounding to bf16 or f16 must choose: ties, one ulp either side of them,
// subnormals of both types, f16's overflow edge, zeros, infinities and NaNs with payloads; then
// random values over the whole exponent range.
std::vector<float> HardValues() {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          65504.0f,
                          65519.0f,
                          65520.0f,
                          65536.0f,
                          -65520.0f,
                          6.1035156e-05f,
                          5.9604645e-08f,
                          2.9802322e-08f,
                          2.9802326e-08f,
                          1e-45f,
                          std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(),
                          FromBits(0x7f800001u),
                          FromBits(0xffc12345u),
                          FromBits(0x7fbfffffu)};
  for (uint32_t base : {0x3f800000u, 0x40490fdbu, 0x00012345u, 0x477fe000u, 0x38800000u}) {
    for (uint32_t low : {0x7fffu, 0x8000u, 0x8001u, 0x17fffu, 0x18000u, 0x18001u, 0x0fffu, 0x1000u,
                         0x1001u, 0x2fffu, 0x3000u, 0x3001u}) {
      v.push_back(FromBits((base & ~0x1ffffu) | low));
      v.push_back(-FromBits((base & ~0x1ffffu) | low));
    }
  }
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 20000; ++i) v.push_back(FromBits(bits(rng)));
  v.push_back(1.5f);  // an odd count: the tail runs too
  return v;
}

TEST(CpuSimdTest, Avx2FromF32IsBitForBitConvertFromF32) {
  const SimdKernels* avx2 = Avx2Kernels();
  if (avx2 == nullptr) GTEST_SKIP() << "no AVX2/FMA/F16C on this CPU";
  const std::vector<float> values = HardValues();
  for (DataType dtype : {DataType::kBF16, DataType::kF16, DataType::kF32}) {
    SCOPED_TRACE(DataTypeName(dtype));
    const size_t bytes = values.size() * DataTypeSize(dtype);
    std::vector<uint8_t> want(bytes), got(bytes, 0xab);
    ConvertFromF32(values.data(), dtype, want.data(), values.size());
    avx2->from_f32(values.data(), dtype, got.data(), static_cast<int64_t>(values.size()));
    for (size_t i = 0; i < values.size(); ++i) {
      ASSERT_EQ(std::memcmp(&want[i * DataTypeSize(dtype)], &got[i * DataTypeSize(dtype)],
                            DataTypeSize(dtype)),
                0)
          << "element " << i << " = " << values[i];
    }
  }
}

TEST(CpuSimdTest, Avx2SwigluMatchesPortableAndStaysFinite) {
  const SimdKernels* avx2 = Avx2Kernels();
  if (avx2 == nullptr) GTEST_SKIP() << "no AVX2/FMA/F16C on this CPU";
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> wide(-120.0f, 120.0f);
  std::vector<float> gate(1003), up(1003);
  for (size_t i = 0; i < gate.size(); ++i) {
    gate[i] = i % 3 == 0 ? wide(rng) : wide(rng) / 20.0f;
    up[i] = wide(rng) / 10.0f;
  }
  gate[0] = std::numeric_limits<float>::max();   // silu(g) = g: times 0.5, still finite
  gate[1] = -std::numeric_limits<float>::max();  // silu(g) = -0
  up[0] = up[1] = 0.5f;
  std::vector<float> want(gate.size()), got(gate.size());
  PortableKernels().swiglu(gate.data(), up.data(), want.data(), static_cast<int64_t>(gate.size()));
  avx2->swiglu(gate.data(), up.data(), got.data(), static_cast<int64_t>(gate.size()));
  for (size_t i = 0; i < gate.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << "gate " << gate[i];
    EXPECT_NEAR(got[i], want[i], 4e-7 * std::abs(want[i]) + 1e-30) << "gate " << gate[i];
  }
  // In place: out is gate.
  avx2->swiglu(gate.data(), up.data(), gate.data(), static_cast<int64_t>(gate.size()));
  EXPECT_EQ(gate, got);
}

}  // namespace
}  // namespace tessera::kernels::cpu
