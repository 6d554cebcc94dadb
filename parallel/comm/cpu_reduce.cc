#include "parallel/comm/cpu_reduce.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "common/check.h"

namespace tessera::parallel {
namespace {

// Elements per block: the accumulator lives on the stack and stays in L1.
constexpr int64_t kBlock = 1024;

template <typename T>
inline T Combine(ReduceOp op, T a, T b) {
  switch (op) {
    case ReduceOp::kSum:
      if constexpr (std::is_integral_v<T>) {
        using U = std::make_unsigned_t<T>;
        return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));  // wraps, no UB
      } else {
        return a + b;
      }
    case ReduceOp::kMax:
      return std::max(a, b);
    case ReduceOp::kMin:
      return std::min(a, b);
  }
  return a;
}

template <typename T, ReduceOp kOp>
void CombineBlock(T* acc, const T* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] = Combine(kOp, acc[i], src[i]);
}

template <typename T>
void CombineBlock(ReduceOp op, T* acc, const T* src, int64_t n) {
  switch (op) {
    case ReduceOp::kSum:
      return CombineBlock<T, ReduceOp::kSum>(acc, src, n);
    case ReduceOp::kMax:
      return CombineBlock<T, ReduceOp::kMax>(acc, src, n);
    case ReduceOp::kMin:
      return CombineBlock<T, ReduceOp::kMin>(acc, src, n);
  }
}

template <typename T>
void ReduceNative(ReduceOp op, absl::Span<const void* const> srcs, void* dst, int64_t count) {
  T acc[kBlock];
  for (int64_t begin = 0; begin < count; begin += kBlock) {
    const int64_t n = std::min(kBlock, count - begin);
    std::memcpy(acc, static_cast<const T*>(srcs[0]) + begin, n * sizeof(T));
    for (size_t s = 1; s < srcs.size(); ++s) {
      CombineBlock(op, acc, static_cast<const T*>(srcs[s]) + begin, n);
    }
    std::memcpy(static_cast<T*>(dst) + begin, acc, n * sizeof(T));
  }
}

void ReduceHalf(DataType dtype, ReduceOp op, absl::Span<const void* const> srcs, void* dst,
                int64_t count) {
  float acc[kBlock];
  float tmp[kBlock];
  for (int64_t begin = 0; begin < count; begin += kBlock) {
    const int64_t n = std::min(kBlock, count - begin);
    ConvertToF32(dtype, static_cast<const uint16_t*>(srcs[0]) + begin, acc, n);
    for (size_t s = 1; s < srcs.size(); ++s) {
      ConvertToF32(dtype, static_cast<const uint16_t*>(srcs[s]) + begin, tmp, n);
      CombineBlock(op, acc, tmp, n);
    }
    ConvertFromF32(acc, dtype, static_cast<uint16_t*>(dst) + begin, n);
  }
}

}  // namespace

void ReduceCpu(DataType dtype, ReduceOp op, absl::Span<const void* const> srcs, void* dst,
               int64_t count) {
  TESSERA_CHECK(!srcs.empty()) << "ReduceCpu without sources";
  switch (dtype) {
    case DataType::kF32:
      return ReduceNative<float>(op, srcs, dst, count);
    case DataType::kI32:
      return ReduceNative<int32_t>(op, srcs, dst, count);
    case DataType::kI64:
      return ReduceNative<int64_t>(op, srcs, dst, count);
    case DataType::kF16:
    case DataType::kBF16:
      return ReduceHalf(dtype, op, srcs, dst, count);
    case DataType::kI8:
      break;
  }
  TESSERA_CHECK(false) << "ReduceCpu of non-reducible dtype " << DataTypeName(dtype);
}

}  // namespace tessera::parallel
