#include "common/dtype.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace tessera {
namespace {

using ::testing::HasSubstr;

uint32_t Bits(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  return word;
}

float FromBits(uint32_t word) {
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
}

// Independent decoding of an IEEE binary16 pattern with ldexp (no bit tricks).
double F16Value(uint16_t bits) {
  const int sign = (bits & 0x8000) ? -1 : 1;
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  if (exponent == 0x1f) {
    return mantissa == 0 ? sign * std::numeric_limits<double>::infinity()
                         : std::numeric_limits<double>::quiet_NaN();
  }
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

// Reference f32 -> f16 rounding: nearest representable binary16, ties to the even pattern,
// magnitudes >= 65520 (halfway between 65504 and 2^16) to infinity.
uint16_t F32ToF16Oracle(float value) {
  const uint16_t sign = std::signbit(value) ? 0x8000 : 0;
  if (std::isnan(value)) return sign | 0x7e00;
  const double a = std::fabs(static_cast<double>(value));
  if (a >= 65520.0) return sign | 0x7c00;
  // Positive finite patterns 0x0000..0x7bff are increasing in value: binary search.
  uint32_t lo = 0, hi = 0x7bff;
  while (lo < hi) {  // largest pattern with value <= a
    const uint32_t mid = (lo + hi + 1) / 2;
    if (F16Value(static_cast<uint16_t>(mid)) <= a) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const double below = F16Value(static_cast<uint16_t>(lo));
  if (below == a) return sign | static_cast<uint16_t>(lo);
  const double above = lo == 0x7bff ? 65536.0 : F16Value(static_cast<uint16_t>(lo + 1));
  const double down = a - below, up = above - a;  // exact in double
  uint32_t result = lo;
  if (up < down || (up == down && (lo & 1u))) result = lo + 1;
  return sign | static_cast<uint16_t>(result);
}

TEST(DtypeTest, Sizes) {
  EXPECT_EQ(DataTypeSize(DataType::kF32), 4u);
  EXPECT_EQ(DataTypeSize(DataType::kF16), 2u);
  EXPECT_EQ(DataTypeSize(DataType::kBF16), 2u);
  EXPECT_EQ(DataTypeSize(DataType::kI8), 1u);
  EXPECT_EQ(DataTypeSize(DataType::kI32), 4u);
  EXPECT_EQ(DataTypeSize(DataType::kI64), 8u);
}

TEST(DtypeTest, Names) {
  EXPECT_EQ(DataTypeName(DataType::kF32), "f32");
  EXPECT_EQ(DataTypeName(DataType::kF16), "f16");
  EXPECT_EQ(DataTypeName(DataType::kBF16), "bf16");
  EXPECT_EQ(DataTypeName(DataType::kI8), "i8");
  EXPECT_EQ(DataTypeName(DataType::kI32), "i32");
  EXPECT_EQ(DataTypeName(DataType::kI64), "i64");
}

TEST(DtypeTest, IsFloatingPoint) {
  EXPECT_TRUE(IsFloatingPoint(DataType::kF32));
  EXPECT_TRUE(IsFloatingPoint(DataType::kF16));
  EXPECT_TRUE(IsFloatingPoint(DataType::kBF16));
  EXPECT_FALSE(IsFloatingPoint(DataType::kI8));
  EXPECT_FALSE(IsFloatingPoint(DataType::kI32));
  EXPECT_FALSE(IsFloatingPoint(DataType::kI64));
}

const DataType kAllTypes[] = {DataType::kF32, DataType::kF16, DataType::kBF16,
                              DataType::kI8,  DataType::kI32, DataType::kI64};

TEST(DtypeTest, SafetensorsTagsRoundTrip) {
  EXPECT_EQ(DataTypeToSafetensors(DataType::kF32), "F32");
  EXPECT_EQ(DataTypeToSafetensors(DataType::kF16), "F16");
  EXPECT_EQ(DataTypeToSafetensors(DataType::kBF16), "BF16");
  EXPECT_EQ(DataTypeToSafetensors(DataType::kI8), "I8");
  EXPECT_EQ(DataTypeToSafetensors(DataType::kI32), "I32");
  EXPECT_EQ(DataTypeToSafetensors(DataType::kI64), "I64");
  for (DataType dtype : kAllTypes) {
    auto parsed = DataTypeFromSafetensors(DataTypeToSafetensors(dtype));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, dtype);
  }
}

TEST(DtypeTest, SafetensorsTagErrorsNameTheTag) {
  // Tags are case-sensitive upper case; everything else (F64, U8, BOOL, F8_E4M3...) is rejected.
  for (const char* tag : {"F64", "U8", "BOOL", "F8_E4M3", "f32", "bf16", "", " F32"}) {
    auto parsed = DataTypeFromSafetensors(tag);
    ASSERT_FALSE(parsed.ok()) << tag;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << tag;
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("'" + std::string(tag) + "'"));
  }
}

TEST(DtypeTest, FromNameAcceptsConfigSpellings) {
  struct Case {
    const char* name;
    DataType want;
  };
  const Case cases[] = {
      {"float32", DataType::kF32},
      {"float", DataType::kF32},
      {"torch.float32", DataType::kF32},
      {"f32", DataType::kF32},
      {"fp32", DataType::kF32},
      {"FLOAT32", DataType::kF32},
      {"float16", DataType::kF16},
      {"half", DataType::kF16},
      {"torch.float16", DataType::kF16},
      {"f16", DataType::kF16},
      {"fp16", DataType::kF16},
      {"bfloat16", DataType::kBF16},
      {"torch.bfloat16", DataType::kBF16},
      {"bf16", DataType::kBF16},
      {"BF16", DataType::kBF16},
      {"Torch.BFloat16", DataType::kBF16},
      {"int8", DataType::kI8},
      {"i8", DataType::kI8},
      {"int32", DataType::kI32},
      {"i32", DataType::kI32},
      {"int64", DataType::kI64},
      {"i64", DataType::kI64},
  };
  for (const Case& c : cases) {
    auto parsed = DataTypeFromName(c.name);
    ASSERT_TRUE(parsed.ok()) << c.name << ": " << parsed.status();
    EXPECT_EQ(*parsed, c.want) << c.name;
  }
  // Our own short names parse back.
  for (DataType dtype : kAllTypes) {
    auto parsed = DataTypeFromName(DataTypeName(dtype));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, dtype);
  }
}

TEST(DtypeTest, FromNameErrors) {
  for (const char* name : {"float64", "torch.float64", "double", "int16", "uint8", "", "torch.",
                           "float8_e4m3fn", " float32"}) {
    auto parsed = DataTypeFromName(name);
    ASSERT_FALSE(parsed.ok()) << name;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("'" + std::string(name) + "'"));
  }
}

// ---------------------------------------------------------------------------------------------
// bf16

TEST(DtypeTest, BF16KnownValues) {
  EXPECT_EQ(BF16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(BF16ToF32(0xc000), -2.0f);
  EXPECT_EQ(BF16ToF32(0x0000), 0.0f);
  EXPECT_TRUE(std::signbit(BF16ToF32(0x8000)));
  EXPECT_EQ(BF16ToF32(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(BF16ToF32(0xff80), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(BF16ToF32(0x7fc0)));
  EXPECT_EQ(BF16ToF32(0x7f7f), FromBits(0x7f7f0000u));  // largest finite bf16
  EXPECT_EQ(BF16ToF32(0x0001), FromBits(0x00010000u));  // smallest subnormal bf16

  EXPECT_EQ(F32ToBF16(1.0f), 0x3f80);
  EXPECT_EQ(F32ToBF16(-2.0f), 0xc000);
  EXPECT_EQ(F32ToBF16(0.0f), 0x0000);
  EXPECT_EQ(F32ToBF16(-0.0f), 0x8000);
  EXPECT_EQ(F32ToBF16(3.140625f), 0x4049);  // exactly representable
}

TEST(DtypeTest, BF16RoundsToNearestEven) {
  // bf16 keeps 7 mantissa bits: the ulp at 1.0 is 2^-7.
  EXPECT_EQ(F32ToBF16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);      // tie, 0x3f80 is even: down
  EXPECT_EQ(F32ToBF16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);  // tie, 0x3f81 odd: up
  EXPECT_EQ(F32ToBF16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3f81);  // above
  EXPECT_EQ(F32ToBF16(1.0f + std::ldexp(1.0f, -8) - std::ldexp(1.0f, -20)), 0x3f80);  // below
  EXPECT_EQ(F32ToBF16(-(1.0f + 3 * std::ldexp(1.0f, -8))), 0xbf82);
  // Mantissa carry into the exponent: the largest value below 2 rounds up to 2.
  EXPECT_EQ(F32ToBF16(std::nextafter(2.0f, 0.0f)), 0x4000);
  // Overflow: FLT_MAX is above the midpoint between the largest bf16 and 2^128, so infinity.
  EXPECT_EQ(F32ToBF16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(F32ToBF16(-std::numeric_limits<float>::max()), 0xff80);
  EXPECT_EQ(F32ToBF16(FromBits(0x7f7f7fffu)), 0x7f7f);  // just below that midpoint
}

TEST(DtypeTest, BF16EveryMidpoint) {
  // For every finite bf16 b, the f32 exactly halfway to b+1 rounds to the even one of the two,
  // and one f32 ulp either side rounds to the nearer one.
  for (uint32_t b = 0; b < 0x7f80u; ++b) {
    for (uint32_t sign : {0u, 0x8000u}) {
      const uint32_t mid = ((sign | b) << 16) | 0x8000u;
      const uint16_t even = static_cast<uint16_t>(sign | ((b & 1u) ? b + 1 : b));
      ASSERT_EQ(F32ToBF16(FromBits(mid)), even) << std::hex << b;
      ASSERT_EQ(F32ToBF16(FromBits(mid - 1)), static_cast<uint16_t>(sign | b)) << std::hex << b;
      ASSERT_EQ(F32ToBF16(FromBits(mid + 1)), static_cast<uint16_t>(sign | (b + 1)))
          << std::hex << b;
    }
  }
}

TEST(DtypeTest, BF16SubnormalsInfNaN) {
  // f32 subnormals below half the smallest bf16 subnormal flush to (signed) zero.
  EXPECT_EQ(F32ToBF16(FromBits(0x00000001u)), 0x0000);
  EXPECT_EQ(F32ToBF16(FromBits(0x80000001u)), 0x8000);
  EXPECT_EQ(F32ToBF16(FromBits(0x00008000u)), 0x0000);  // tie with 0: even
  EXPECT_EQ(F32ToBF16(FromBits(0x00008001u)), 0x0001);
  EXPECT_EQ(F32ToBF16(FromBits(0x00018000u)), 0x0002);  // tie, 1 is odd: up
  EXPECT_EQ(F32ToBF16(FromBits(0x007fffffu)), 0x0080);  // largest f32 subnormal -> min normal
  EXPECT_EQ(F32ToBF16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(F32ToBF16(-std::numeric_limits<float>::infinity()), 0xff80);
  // NaNs stay NaN (even ones whose payload lives only in the dropped low bits) and keep the sign.
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0x7f80ffffu, 0x7fffffffu, 0xff800001u}) {
    const uint16_t out = F32ToBF16(FromBits(nan));
    EXPECT_EQ(out & 0x7f80u, 0x7f80u) << std::hex << nan;
    EXPECT_NE(out & 0x007fu, 0u) << std::hex << nan;
    EXPECT_EQ(out & 0x8000u, (nan >> 16) & 0x8000u) << std::hex << nan;
    EXPECT_TRUE(std::isnan(BF16ToF32(out)));
  }
}

TEST(DtypeTest, BF16ExhaustiveRoundTrip) {
  for (uint32_t bits = 0; bits <= 0xffffu; ++bits) {
    const float value = BF16ToF32(static_cast<uint16_t>(bits));
    EXPECT_EQ(Bits(value), bits << 16);
    if (std::isnan(value)) {
      ASSERT_TRUE(std::isnan(BF16ToF32(F32ToBF16(value)))) << std::hex << bits;
    } else {
      ASSERT_EQ(F32ToBF16(value), bits) << std::hex << bits;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// f16

TEST(DtypeTest, F16KnownValues) {
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0xc000), -2.0f);
  EXPECT_EQ(F16ToF32(0x3555), 0.333251953125f);
  EXPECT_EQ(F16ToF32(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToF32(0x0400), std::ldexp(1.0f, -14));         // smallest normal
  EXPECT_EQ(F16ToF32(0x03ff), 1023 * std::ldexp(1.0f, -24));  // largest subnormal
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));         // smallest subnormal
  EXPECT_EQ(F16ToF32(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToF32(0x0000), 0.0f);
  EXPECT_TRUE(std::signbit(F16ToF32(0x8000)));
  EXPECT_EQ(F16ToF32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16ToF32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(F16ToF32(0x7e00)));
  EXPECT_TRUE(std::isnan(F16ToF32(0x7c01)));

  EXPECT_EQ(F32ToF16(1.0f), 0x3c00);
  EXPECT_EQ(F32ToF16(-2.0f), 0xc000);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);
  EXPECT_EQ(F32ToF16(0.0f), 0x0000);
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -14)), 0x0400);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -24)), 0x0001);
}

TEST(DtypeTest, F16ExhaustiveDecodeMatchesIeee) {
  for (uint32_t bits = 0; bits <= 0xffffu; ++bits) {
    const double want = F16Value(static_cast<uint16_t>(bits));
    const float got = F16ToF32(static_cast<uint16_t>(bits));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << bits;
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << std::hex << bits;
      ASSERT_EQ(std::signbit(got), (bits & 0x8000u) != 0) << std::hex << bits;
    }
  }
}

TEST(DtypeTest, F16ExhaustiveRoundTrip) {
  for (uint32_t bits = 0; bits <= 0xffffu; ++bits) {
    const float value = F16ToF32(static_cast<uint16_t>(bits));
    if (std::isnan(value)) {
      const uint16_t back = F32ToF16(value);
      ASSERT_TRUE(std::isnan(F16ToF32(back))) << std::hex << bits;
      ASSERT_EQ(back & 0x8000u, bits & 0x8000u) << std::hex << bits;
    } else {
      ASSERT_EQ(F32ToF16(value), bits) << std::hex << bits;
    }
  }
}

TEST(DtypeTest, F16RoundsToNearestEven) {
  // The ulp at 1.0 is 2^-10.
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie, even: down
  EXPECT_EQ(F32ToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie, odd: up
  EXPECT_EQ(F32ToF16(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)), 0x3c01);
  EXPECT_EQ(F32ToF16(std::nextafter(1.0f + std::ldexp(1.0f, -11), 0.0f)), 0x3c00);
  EXPECT_EQ(F32ToF16(std::nextafter(2.0f, 0.0f)), 0x4000);  // carry into the exponent
  // Overflow boundary: 65520 is the tie between 65504 (odd mantissa) and 2^16, so infinity.
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);
  EXPECT_EQ(F32ToF16(-65520.0f), 0xfc00);
  EXPECT_EQ(F32ToF16(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(F32ToF16(1e6f), 0x7c00);
  EXPECT_EQ(F32ToF16(std::numeric_limits<float>::max()), 0x7c00);
}

TEST(DtypeTest, F16Subnormals) {
  const float tiny = std::ldexp(1.0f, -24);  // smallest f16 subnormal
  EXPECT_EQ(F32ToF16(tiny / 2), 0x0000);     // tie with zero: even
  EXPECT_EQ(F32ToF16(std::nextafter(tiny / 2, 1.0f)), 0x0001);
  EXPECT_EQ(F32ToF16(-std::nextafter(tiny / 2, 1.0f)), 0x8001);
  EXPECT_EQ(F32ToF16(1.5f * tiny), 0x0002);     // tie, 1 is odd: up
  EXPECT_EQ(F32ToF16(2.5f * tiny), 0x0002);     // tie, 2 is even: down
  EXPECT_EQ(F32ToF16(1023.5f * tiny), 0x0400);  // largest subnormal rounds up into the normals
  EXPECT_EQ(F32ToF16(1023.25f * tiny), 0x03ff);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(F32ToF16(-std::ldexp(1.0f, -30)), 0x8000);
  EXPECT_EQ(F32ToF16(FromBits(0x00000001u)), 0x0000);  // f32 subnormal
}

TEST(DtypeTest, F16InfNaN) {
  EXPECT_EQ(F32ToF16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(F32ToF16(-std::numeric_limits<float>::infinity()), 0xfc00);
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0x7fffffffu, 0xffc00000u, 0xff800001u}) {
    const uint16_t out = F32ToF16(FromBits(nan));
    EXPECT_EQ(out & 0x7c00u, 0x7c00u) << std::hex << nan;
    EXPECT_NE(out & 0x03ffu, 0u) << std::hex << nan;
    EXPECT_EQ(out & 0x8000u, (nan >> 16) & 0x8000u) << std::hex << nan;
  }
}

TEST(DtypeTest, F16EveryMidpointMatchesOracle) {
  // Midpoints between consecutive f16 values (exact in f32) and their f32 neighbours cover every
  // rounding decision; compare against the search-based oracle.
  for (uint32_t b = 0; b < 0x7bffu; ++b) {
    const double mid =
        (F16Value(static_cast<uint16_t>(b)) + F16Value(static_cast<uint16_t>(b + 1))) / 2;
    const float m = static_cast<float>(mid);
    ASSERT_EQ(static_cast<double>(m), mid);
    for (float x : {m, std::nextafter(m, 0.0f), std::nextafter(m, 1e9f), -m}) {
      ASSERT_EQ(F32ToF16(x), F32ToF16Oracle(x)) << "x=" << x << " b=" << std::hex << b;
    }
  }
}

TEST(DtypeTest, F16SampledF32MatchesOracle) {
  // ~1M f32 bit patterns spread over the whole range, both signs.
  for (uint64_t word = 0; word <= 0xffffffffull; word += 4093) {
    const float x = FromBits(static_cast<uint32_t>(word));
    const uint16_t got = F32ToF16(x);
    const uint16_t want = F32ToF16Oracle(x);
    if (std::isnan(x)) {
      ASSERT_TRUE(std::isnan(F16ToF32(got))) << std::hex << word;
    } else {
      ASSERT_EQ(got, want) << "bits " << std::hex << word;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Bulk conversion

TEST(DtypeTest, ConvertArrays) {
  const std::vector<float> src = {0.0f, -1.5f, 3.140625f, 65504.0f, 1e-3f, -7.0f};
  std::vector<uint16_t> half(src.size()), brain(src.size());
  ConvertFromF32(src.data(), DataType::kF16, half.data(), src.size());
  ConvertFromF32(src.data(), DataType::kBF16, brain.data(), src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    EXPECT_EQ(half[i], F32ToF16(src[i])) << i;
    EXPECT_EQ(brain[i], F32ToBF16(src[i])) << i;
  }
  std::vector<float> back(src.size());
  ConvertToF32(DataType::kF16, half.data(), back.data(), src.size());
  for (size_t i = 0; i < src.size(); ++i) EXPECT_EQ(back[i], F16ToF32(half[i])) << i;
  ConvertToF32(DataType::kBF16, brain.data(), back.data(), src.size());
  for (size_t i = 0; i < src.size(); ++i) EXPECT_EQ(back[i], BF16ToF32(brain[i])) << i;

  std::vector<float> copy(src.size());
  ConvertToF32(DataType::kF32, src.data(), copy.data(), src.size());
  EXPECT_EQ(copy, src);
  ConvertFromF32(src.data(), DataType::kF32, copy.data(), src.size());
  EXPECT_EQ(copy, src);
  // count 0 touches nothing (and null pointers are fine).
  ConvertToF32(DataType::kF16, nullptr, nullptr, 0);
}

TEST(DtypeDeathTest, ConvertRejectsIntegerTypes) {
  int32_t ints[2] = {1, 2};
  float out[2];
  EXPECT_DEATH(ConvertToF32(DataType::kI32, ints, out, 2), "ConvertToF32 from i32");
  EXPECT_DEATH(ConvertFromF32(out, DataType::kI8, ints, 2), "ConvertFromF32 to i8");
}

}  // namespace
}  // namespace tessera
