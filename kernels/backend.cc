#include "kernels/backend.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace tessera::kernels {

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr && free_fn_) free_fn_(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    device_ = std::exchange(other.device_, Device{});
    free_fn_ = std::exchange(other.free_fn_, nullptr);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr && free_fn_) free_fn_(data_);
}

MutableTensorView DeviceBuffer::View(DataType dtype, Shape shape) const {
  const int64_t elements = NumElements(shape);
  TESSERA_CHECK(elements >= 0 && static_cast<size_t>(elements) * DataTypeSize(dtype) <= size_)
      << "View " << DataTypeName(dtype) << ShapeToString(shape) << " of a buffer of " << size_
      << " bytes";
  return MutableTensorView(data_, dtype, std::move(shape), device_);
}

absl::StatusOr<DeviceBuffer> Backend::AllocateHost(size_t /*bytes*/) {
  return absl::UnimplementedError(
      absl::StrCat("the ", name(), " backend has no host memory for staging"));
}

absl::StatusOr<std::unique_ptr<Graph>> Backend::CaptureGraph(Stream& /*stream*/,
                                                             const GraphBody& /*body*/) {
  return absl::UnimplementedError(
      absl::StrCat("the ", name(), " backend records no graphs: run the work eagerly"));
}

}  // namespace tessera::kernels
