// Non-owning tensor views: a pointer, a dtype, a device, a shape and strides (in elements).
// Views never own memory; whoever made the buffer keeps it alive for as long as a view is used.
// Copyable and cheap; safe to share across threads as long as the memory is.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "common/check.h"
#include "common/dtype.h"

namespace tessera {

enum class DeviceType : uint8_t { kCpu, kCuda };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;

  static Device Cpu() { return Device{}; }
  static Device Cuda(int index) { return Device{DeviceType::kCuda, index}; }
  bool operator==(const Device&) const = default;
  std::string ToString() const;
};

using Shape = absl::InlinedVector<int64_t, 4>;

// Number of elements of `shape` (1 for a scalar, rank 0).
int64_t NumElements(const Shape& shape);
std::string ShapeToString(const Shape& shape);
Shape ContiguousStrides(const Shape& shape);

namespace internal {
// Shared implementation of TensorView and MutableTensorView.
template <typename Pointer>
class TensorViewBase {
 public:
  TensorViewBase() = default;
  TensorViewBase(Pointer data, DataType dtype, Shape shape, Device device = Device::Cpu())
      : data_(data),
        dtype_(dtype),
        device_(device),
        shape_(std::move(shape)),
        strides_(ContiguousStrides(shape_)) {}
  // A read-only view of a writable one (MutableTensorView -> TensorView).
  template <typename Other,
            typename = std::enable_if_t<std::is_const_v<std::remove_pointer_t<Pointer>> &&
                                        !std::is_same_v<Other, Pointer>>>
  TensorViewBase(const TensorViewBase<Other>& other)  // NOLINT: implicit by design
      : TensorViewBase(other.data(), other.dtype(), other.shape(), other.strides(),
                       other.device()) {}
  TensorViewBase(Pointer data, DataType dtype, Shape shape, Shape strides, Device device)
      : data_(data),
        dtype_(dtype),
        device_(device),
        shape_(std::move(shape)),
        strides_(std::move(strides)) {}

  Pointer data() const { return data_; }
  template <typename T>
  auto* data_as() const {
    if constexpr (std::is_const_v<std::remove_pointer_t<Pointer>>) {
      return static_cast<const T*>(data_);
    } else {
      return static_cast<T*>(data_);
    }
  }
  DataType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  // Size of dimension `i`; negative `i` counts from the end.
  int64_t dim(int i) const {
    const int index = i < 0 ? rank() + i : i;
    TESSERA_CHECK(index >= 0 && index < rank()) << "dim " << i << " of rank " << rank();
    return shape_[index];
  }
  int64_t stride(int i) const {
    const int index = i < 0 ? rank() + i : i;
    TESSERA_CHECK(index >= 0 && index < rank()) << "stride " << i << " of rank " << rank();
    return strides_[index];
  }
  int64_t numel() const { return NumElements(shape_); }
  size_t element_size() const { return DataTypeSize(dtype_); }
  // Bytes spanned by a contiguous view (numel * element size).
  size_t nbytes() const { return static_cast<size_t>(numel()) * element_size(); }
  bool empty() const { return data_ == nullptr; }
  bool is_contiguous() const { return strides_ == ContiguousStrides(shape_); }

  // Rows [begin, end) of dimension 0. Checks bounds (a bug if violated).
  TensorViewBase Rows(int64_t begin, int64_t end) const {
    TESSERA_CHECK(rank() >= 1 && begin >= 0 && begin <= end && end <= shape_[0])
        << "Rows(" << begin << ", " << end << ") of " << ShapeToString(shape_);
    Shape shape = shape_;
    shape[0] = end - begin;
    auto* base = static_cast<CharPointer>(static_cast<Pointer>(data_));
    return TensorViewBase(base + begin * strides_[0] * static_cast<int64_t>(element_size()), dtype_,
                          std::move(shape), strides_, device_);
  }
  // The same memory with another shape; the view must be contiguous and the sizes must agree.
  TensorViewBase Reshape(Shape shape) const {
    TESSERA_CHECK(is_contiguous()) << "Reshape of a strided view";
    for (int64_t d : shape) TESSERA_CHECK(d >= 0) << "Reshape to " << ShapeToString(shape);
    TESSERA_CHECK_EQ(NumElements(shape), numel());
    return TensorViewBase(data_, dtype_, std::move(shape), device_);
  }

  std::string DebugString() const {
    return std::string(DataTypeName(dtype_)) + ShapeToString(shape_) + "@" + device_.ToString();
  }

 private:
  using CharPointer =
      std::conditional_t<std::is_const_v<std::remove_pointer_t<Pointer>>, const char*, char*>;
  Pointer data_ = nullptr;
  DataType dtype_ = DataType::kF32;
  Device device_;
  Shape shape_;
  Shape strides_;
};
}  // namespace internal

using TensorView = internal::TensorViewBase<const void*>;

// A view through which the memory may be written. Converts implicitly to a TensorView.
class MutableTensorView : public internal::TensorViewBase<void*> {
 public:
  using Base = internal::TensorViewBase<void*>;
  using Base::Base;
  MutableTensorView(const Base& base) : Base(base) {}  // NOLINT: implicit from Rows()/Reshape()
};

}  // namespace tessera
