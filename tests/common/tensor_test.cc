// Moving an empty Shape (rank-0 views) makes GCC 12 report -Werror=maybe-uninitialized inside
// Debian Abseil 20220623's InlinedVector move constructor (it memcpy's the whole, unset inline
// buffer: a false positive, silenced upstream in later Abseil). The pragma must precede the
// includes because the diagnostic is attributed to the Abseil header.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include "common/tensor.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <type_traits>
#include <vector>

#include "common/stream.h"

namespace tessera {
namespace {

TEST(TensorTest, NumElements) {
  EXPECT_EQ(NumElements({}), 1);  // scalar
  EXPECT_EQ(NumElements({7}), 7);
  EXPECT_EQ(NumElements({2, 3, 4}), 24);
  EXPECT_EQ(NumElements({2, 0, 4}), 0);
}

TEST(TensorTest, ShapeToString) {
  EXPECT_EQ(ShapeToString({}), "[]");
  EXPECT_EQ(ShapeToString({5}), "[5]");
  EXPECT_EQ(ShapeToString({2, 3, 4}), "[2, 3, 4]");
}

TEST(TensorTest, ContiguousStrides) {
  EXPECT_EQ(ContiguousStrides({}), Shape{});
  EXPECT_EQ(ContiguousStrides({5}), (Shape{1}));
  EXPECT_EQ(ContiguousStrides({2, 3, 4}), (Shape{12, 4, 1}));
  EXPECT_EQ(ContiguousStrides({2, 1, 4}), (Shape{4, 4, 1}));
  EXPECT_EQ(ContiguousStrides({3, 0, 2}), (Shape{0, 2, 1}));
  EXPECT_EQ(ContiguousStrides({2, 3, 4, 5, 6}), (Shape{360, 120, 30, 6, 1}));  // > inline size
}

TEST(TensorTest, Device) {
  EXPECT_EQ(Device::Cpu().ToString(), "cpu");
  EXPECT_EQ(Device::Cuda(0).ToString(), "cuda:0");
  EXPECT_EQ(Device::Cuda(3).ToString(), "cuda:3");
  EXPECT_EQ(Device::Cpu(), Device{});
  EXPECT_EQ(Device::Cuda(1), Device::Cuda(1));
  EXPECT_NE(Device::Cuda(1), Device::Cuda(2));
  EXPECT_NE(Device::Cuda(0), Device::Cpu());
}

TEST(TensorTest, DefaultViewIsEmpty) {
  TensorView view;
  EXPECT_TRUE(view.empty());
  EXPECT_EQ(view.rank(), 0);
  EXPECT_EQ(view.dtype(), DataType::kF32);
  EXPECT_EQ(view.device(), Device::Cpu());
}

TEST(TensorTest, ContiguousViewProperties) {
  std::vector<float> buffer(24);
  TensorView view(buffer.data(), DataType::kF32, {2, 3, 4});
  EXPECT_FALSE(view.empty());
  EXPECT_EQ(view.data(), buffer.data());
  EXPECT_EQ(view.data_as<float>(), buffer.data());
  EXPECT_EQ(view.rank(), 3);
  EXPECT_EQ(view.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(view.strides(), (Shape{12, 4, 1}));
  EXPECT_EQ(view.dim(0), 2);
  EXPECT_EQ(view.dim(2), 4);
  EXPECT_EQ(view.dim(-1), 4);
  EXPECT_EQ(view.dim(-3), 2);
  EXPECT_EQ(view.stride(0), 12);
  EXPECT_EQ(view.stride(-1), 1);
  EXPECT_EQ(view.numel(), 24);
  EXPECT_EQ(view.element_size(), 4u);
  EXPECT_EQ(view.nbytes(), 96u);
  EXPECT_TRUE(view.is_contiguous());
  EXPECT_EQ(view.device(), Device::Cpu());
  EXPECT_EQ(view.DebugString(), "f32[2, 3, 4]@cpu");
}

TEST(TensorTest, ScalarView) {
  float x = 3.0f;
  TensorView view(&x, DataType::kF32, {});
  EXPECT_EQ(view.rank(), 0);
  EXPECT_EQ(view.numel(), 1);
  EXPECT_EQ(view.nbytes(), 4u);
  EXPECT_TRUE(view.is_contiguous());
  EXPECT_EQ(view.DebugString(), "f32[]@cpu");
}

TEST(TensorTest, DeviceAndDtypeInDebugString) {
  uint16_t fake = 0;  // never dereferenced
  TensorView view(&fake, DataType::kBF16, {8, 2}, Device::Cuda(1));
  EXPECT_EQ(view.device(), Device::Cuda(1));
  EXPECT_EQ(view.element_size(), 2u);
  EXPECT_EQ(view.nbytes(), 32u);
  EXPECT_EQ(view.DebugString(), "bf16[8, 2]@cuda:1");
}

TEST(TensorTest, StridedViewIsNotContiguous) {
  std::vector<float> buffer(24);
  // Transposed view of a [4, 6] matrix: shape [6, 4], strides [1, 6].
  TensorView transposed(buffer.data(), DataType::kF32, {6, 4}, {1, 6}, Device::Cpu());
  EXPECT_FALSE(transposed.is_contiguous());
  EXPECT_EQ(transposed.strides(), (Shape{1, 6}));
  EXPECT_EQ(transposed.numel(), 24);
  // Every other row of a [4, 6] matrix.
  TensorView every_other(buffer.data(), DataType::kF32, {2, 6}, {12, 1}, Device::Cpu());
  EXPECT_FALSE(every_other.is_contiguous());
}

TEST(TensorTest, RowsOffsetsByElementSize) {
  std::vector<float> buffer(12);
  std::iota(buffer.begin(), buffer.end(), 0.0f);
  TensorView view(buffer.data(), DataType::kF32, {4, 3});
  TensorView rows = view.Rows(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 3}));
  EXPECT_EQ(rows.strides(), (Shape{3, 1}));
  EXPECT_EQ(rows.data_as<float>(), buffer.data() + 3);
  EXPECT_EQ(rows.data_as<float>()[0], 3.0f);
  EXPECT_TRUE(rows.is_contiguous());
  EXPECT_EQ(rows.dtype(), DataType::kF32);

  std::vector<uint16_t> halves(4 * 5);
  TensorView half(halves.data(), DataType::kF16, {4, 5}, Device::Cuda(2));
  TensorView last = half.Rows(3, 4);
  EXPECT_EQ(last.data_as<uint16_t>(), halves.data() + 15);
  EXPECT_EQ(last.device(), Device::Cuda(2));
  EXPECT_EQ(last.dtype(), DataType::kF16);

  std::vector<int64_t> longs(6);
  TensorView ints(longs.data(), DataType::kI64, {6});
  EXPECT_EQ(ints.Rows(5, 6).data_as<int64_t>(), longs.data() + 5);
}

TEST(TensorTest, RowsEdgesAndStrided) {
  std::vector<float> buffer(12);
  TensorView view(buffer.data(), DataType::kF32, {4, 3});
  EXPECT_EQ(view.Rows(0, 4).shape(), view.shape());
  EXPECT_EQ(view.Rows(0, 4).data(), view.data());
  TensorView none = view.Rows(4, 4);  // empty range at the end is allowed
  EXPECT_EQ(none.numel(), 0);
  EXPECT_EQ(none.shape(), (Shape{0, 3}));

  // Rows of a strided (transposed) view keep the strides and step by stride(0).
  TensorView transposed(buffer.data(), DataType::kF32, {3, 4}, {1, 3}, Device::Cpu());
  TensorView sub = transposed.Rows(1, 3);
  EXPECT_EQ(sub.data_as<float>(), buffer.data() + 1);
  EXPECT_EQ(sub.strides(), (Shape{1, 3}));
  EXPECT_EQ(sub.shape(), (Shape{2, 4}));
  EXPECT_FALSE(sub.is_contiguous());
}

TEST(TensorTest, Reshape) {
  std::vector<float> buffer(24);
  TensorView view(buffer.data(), DataType::kF32, {2, 3, 4}, Device::Cuda(0));
  TensorView flat = view.Reshape({24});
  EXPECT_EQ(flat.shape(), (Shape{24}));
  EXPECT_EQ(flat.strides(), (Shape{1}));
  EXPECT_EQ(flat.data(), view.data());
  EXPECT_EQ(flat.device(), Device::Cuda(0));
  TensorView matrix = view.Reshape({6, 4});
  EXPECT_EQ(matrix.strides(), (Shape{4, 1}));
  // Rows of a contiguous view stay reshapeable.
  TensorView reshaped = view.Reshape({6, 4}).Rows(2, 4).Reshape({8});
  EXPECT_EQ(reshaped.data_as<float>(), buffer.data() + 8);
  EXPECT_EQ(reshaped.numel(), 8);
}

TEST(TensorTest, MutableViewWritesAndConverts) {
  std::vector<float> buffer(6, 0.0f);
  MutableTensorView out(buffer.data(), DataType::kF32, {2, 3});
  static_assert(std::is_same_v<decltype(out.data_as<float>()), float*>);
  static_assert(std::is_same_v<decltype(out.data()), void*>);
  out.data_as<float>()[4] = 7.0f;
  EXPECT_EQ(buffer[4], 7.0f);

  // Rows / Reshape of a MutableTensorView are writable too.
  MutableTensorView row = out.Rows(1, 2);
  row.data_as<float>()[0] = 5.0f;
  EXPECT_EQ(buffer[3], 5.0f);
  MutableTensorView flat = out.Reshape({6});
  flat.data_as<float>()[5] = 9.0f;
  EXPECT_EQ(buffer[5], 9.0f);

  // Implicit conversion to a read-only view keeps everything.
  TensorView in = out;
  static_assert(std::is_same_v<decltype(in.data_as<float>()), const float*>);
  static_assert(std::is_same_v<decltype(in.data()), const void*>);
  EXPECT_EQ(in.data(), buffer.data());
  EXPECT_EQ(in.shape(), out.shape());
  EXPECT_EQ(in.strides(), out.strides());
  EXPECT_EQ(in.dtype(), out.dtype());
  EXPECT_EQ(in.data_as<float>()[4], 7.0f);

  MutableTensorView strided(buffer.data(), DataType::kF32, {3, 2}, {1, 3}, Device::Cuda(1));
  TensorView strided_in = strided;
  EXPECT_EQ(strided_in.strides(), (Shape{1, 3}));
  EXPECT_EQ(strided_in.device(), Device::Cuda(1));
  EXPECT_FALSE(strided_in.is_contiguous());

  // Passing a MutableTensorView where a TensorView is expected.
  auto numel_of = [](TensorView v) { return v.numel(); };
  EXPECT_EQ(numel_of(out), 6);
  EXPECT_EQ(numel_of(MutableTensorView(out.Rows(0, 1))), 3);
  EXPECT_EQ(numel_of(out.Rows(0, 1)), 3);
  TensorView second_row = out.Rows(1, 2);
  EXPECT_EQ(second_row.data_as<float>(), buffer.data() + 3);
  EXPECT_EQ(second_row.shape(), (Shape{1, 3}));
  static_assert(!std::is_convertible_v<TensorView, MutableTensorView>);
}

TEST(TensorTest, CpuStream) {
  CpuStream stream;
  Stream& base = stream;
  EXPECT_EQ(base.device(), Device::Cpu());
  EXPECT_TRUE(base.Synchronize().ok());
}

TEST(TensorDeathTest, BoundsAreChecked) {
  std::vector<float> buffer(12);
  TensorView view(buffer.data(), DataType::kF32, {4, 3});
  EXPECT_DEATH(view.Rows(2, 5), "Rows\\(2, 5\\) of \\[4, 3\\]");
  EXPECT_DEATH(view.Rows(3, 2), "Rows");
  EXPECT_DEATH(view.Rows(-1, 2), "Rows");
  EXPECT_DEATH(view.dim(2), "dim 2 of rank 2");
  EXPECT_DEATH(view.dim(-3), "dim -3 of rank 2");
  EXPECT_DEATH(view.stride(5), "stride 5 of rank 2");
  EXPECT_DEATH(view.Reshape({5, 3}), "Check failed");
  TensorView transposed(buffer.data(), DataType::kF32, {3, 4}, {1, 3}, Device::Cpu());
  EXPECT_DEATH(transposed.Reshape({12}), "Reshape of a strided view");
  float x = 0.0f;
  TensorView scalar(&x, DataType::kF32, {});
  EXPECT_DEATH(scalar.Rows(0, 0), "Rows");
}

}  // namespace
}  // namespace tessera
