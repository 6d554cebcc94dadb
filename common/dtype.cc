#include "common/dtype.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace tessera {

size_t DataTypeSize(DataType dtype) {
  switch (dtype) {
    case DataType::kF32:
      return 4;
    case DataType::kF16:
    case DataType::kBF16:
      return 2;
    case DataType::kI8:
      return 1;
    case DataType::kI32:
      return 4;
    case DataType::kI64:
      return 8;
  }
  TESSERA_CHECK(false) << "bad DataType " << static_cast<int>(dtype);
  return 0;
}

absl::string_view DataTypeName(DataType dtype) {
  switch (dtype) {
    case DataType::kF32:
      return "f32";
    case DataType::kF16:
      return "f16";
    case DataType::kBF16:
      return "bf16";
    case DataType::kI8:
      return "i8";
    case DataType::kI32:
      return "i32";
    case DataType::kI64:
      return "i64";
  }
  return "invalid";
}

absl::string_view DataTypeToSafetensors(DataType dtype) {
  switch (dtype) {
    case DataType::kF32:
      return "F32";
    case DataType::kF16:
      return "F16";
    case DataType::kBF16:
      return "BF16";
    case DataType::kI8:
      return "I8";
    case DataType::kI32:
      return "I32";
    case DataType::kI64:
      return "I64";
  }
  return "invalid";
}

absl::StatusOr<DataType> DataTypeFromSafetensors(absl::string_view tag) {
  if (tag == "F32") return DataType::kF32;
  if (tag == "F16") return DataType::kF16;
  if (tag == "BF16") return DataType::kBF16;
  if (tag == "I8") return DataType::kI8;
  if (tag == "I32") return DataType::kI32;
  if (tag == "I64") return DataType::kI64;
  return absl::InvalidArgumentError(absl::StrCat("unsupported safetensors dtype '", tag,
                                                 "' (supported: F32, F16, BF16, I8, I32, I64)"));
}

absl::StatusOr<DataType> DataTypeFromName(absl::string_view name) {
  std::string lower = absl::AsciiStrToLower(name);
  if (absl::StartsWith(lower, "torch.")) lower = lower.substr(6);
  if (lower == "float32" || lower == "float" || lower == "f32" || lower == "fp32") {
    return DataType::kF32;
  }
  if (lower == "float16" || lower == "half" || lower == "f16" || lower == "fp16") {
    return DataType::kF16;
  }
  if (lower == "bfloat16" || lower == "bf16") return DataType::kBF16;
  if (lower == "int8" || lower == "i8") return DataType::kI8;
  if (lower == "int32" || lower == "i32") return DataType::kI32;
  if (lower == "int64" || lower == "i64") return DataType::kI64;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown dtype '", name, "' (expected float32, float16, bfloat16, int8, int32 or int64)"));
}

bool IsFloatingPoint(DataType dtype) {
  return dtype == DataType::kF32 || dtype == DataType::kF16 || dtype == DataType::kBF16;
}

float F16ToF32(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  uint32_t word;
  if (exponent == 0) {
    if (mantissa == 0) {
      word = sign;
    } else {  // subnormal: normalise
      exponent = 127 - 15 + 1;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        --exponent;
      }
      mantissa &= 0x3ffu;
      word = sign | (exponent << 23) | (mantissa << 13);
    }
  } else if (exponent == 0x1f) {
    word = sign | 0x7f800000u | (mantissa << 13);
  } else {
    word = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
}

uint16_t F32ToF16(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  const uint32_t sign = (word >> 16) & 0x8000u;
  const uint32_t abs = word & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {                                               // subnormal or zero
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);           // rounds to zero
    const uint32_t exponent = abs >> 23;                                 // 102..112
    const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;             // with the implicit bit
    const uint32_t shift = 126 - exponent;                               // 14..24
    const uint32_t rem = mantissa & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1);
    uint32_t result = mantissa >> shift;
    if (rem > halfway || (rem == halfway && (result & 1u))) ++result;  // nearest even
    return static_cast<uint16_t>(sign | result);
  }
  // Normal: rebias exponent and round mantissa to 10 bits.
  uint32_t rebased = abs - ((127u - 15u) << 23);
  const uint32_t rounding = 0xfffu + ((rebased >> 13) & 1u);
  rebased += rounding;
  return static_cast<uint16_t>(sign | (rebased >> 13));
}

void ConvertToF32(DataType src_dtype, const void* src, float* dst, size_t count) {
  switch (src_dtype) {
    case DataType::kF32:
      std::memcpy(dst, src, count * sizeof(float));
      return;
    case DataType::kBF16: {
      const auto* in = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = BF16ToF32(in[i]);
      return;
    }
    case DataType::kF16: {
      const auto* in = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = F16ToF32(in[i]);
      return;
    }
    default:
      TESSERA_CHECK(false) << "ConvertToF32 from " << DataTypeName(src_dtype);
  }
}

void ConvertFromF32(const float* src, DataType dst_dtype, void* dst, size_t count) {
  switch (dst_dtype) {
    case DataType::kF32:
      std::memcpy(dst, src, count * sizeof(float));
      return;
    case DataType::kBF16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < count; ++i) out[i] = F32ToBF16(src[i]);
      return;
    }
    case DataType::kF16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < count; ++i) out[i] = F32ToF16(src[i]);
      return;
    }
    default:
      TESSERA_CHECK(false) << "ConvertFromF32 to " << DataTypeName(dst_dtype);
  }
}

}  // namespace tessera
