// Element types of tensors, with their sizes, names and the f32 <-> f16/bf16 conversions the CPU
// code uses. Pure functions; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace tessera {

enum class DataType : uint8_t { kF32, kF16, kBF16, kI8, kI32, kI64 };

// Bytes per element.
size_t DataTypeSize(DataType dtype);
// Short lower-case name: "f32", "f16", "bf16", "i8", "i32", "i64".
absl::string_view DataTypeName(DataType dtype);
// Parses safetensors' dtype tags ("F32", "F16", "BF16", "I8", "I32", "I64"); other tags are
// kInvalidArgument naming the tag.
absl::StatusOr<DataType> DataTypeFromSafetensors(absl::string_view tag);
absl::string_view DataTypeToSafetensors(DataType dtype);
// Parses torch dtype names as config.json spells them ("float32", "bfloat16", "float16", "half",
// "float", with or without a "torch." prefix) and our short names.
absl::StatusOr<DataType> DataTypeFromName(absl::string_view name);
bool IsFloatingPoint(DataType dtype);

// bf16 is the upper half of an IEEE f32; conversion to bf16 rounds to nearest even.
inline float BF16ToF32(uint16_t bits) {
  const uint32_t word = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
}

inline uint16_t F32ToBF16(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  if ((word & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((word >> 16) | 0x40u);  // NaN
  const uint32_t rounding = 0x7fffu + ((word >> 16) & 1u);
  return static_cast<uint16_t>((word + rounding) >> 16);
}

// IEEE binary16 <-> binary32, round to nearest even, with subnormals, infinities and NaN.
float F16ToF32(uint16_t bits);
uint16_t F32ToF16(float value);

// Converts `count` elements of `src` (f32, f16 or bf16) into f32 `dst`.
void ConvertToF32(DataType src_dtype, const void* src, float* dst, size_t count);
// Converts `count` f32 elements into `dst` of `dst_dtype` (f32, f16 or bf16).
void ConvertFromF32(const float* src, DataType dst_dtype, void* dst, size_t count);

}  // namespace tessera
