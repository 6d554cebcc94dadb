#include "kernels/validate.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tessera::kernels::internal {
namespace {

constexpr DataType kAllTypes[] = {DataType::kF32, DataType::kF16, DataType::kBF16,
                                  DataType::kI8,  DataType::kI32, DataType::kI64};

std::string Describe(const TensorView& view) {
  std::string text = view.DebugString();
  if (!view.is_contiguous()) absl::StrAppend(&text, " strides ", ShapeToString(view.strides()));
  return text;
}

struct ByteRange {
  uintptr_t begin = 0;
  uintptr_t end = 0;  // exclusive
};

// Strides are validated non-negative before any overlap check.
ByteRange Range(const TensorView& view) {
  const auto begin = reinterpret_cast<uintptr_t>(view.data());
  int64_t last = 0;
  for (int i = 0; i < view.rank(); ++i) last += (view.dim(i) - 1) * view.stride(i);
  const auto elem = static_cast<int64_t>(view.element_size());
  return {begin, begin + static_cast<uintptr_t>((last + 1) * elem)};
}

// A view seen as `rows` rows of `inner` contiguous bytes, `pitch` bytes apart.
struct RowForm {
  int64_t inner = 0;
  int64_t pitch = 0;
};

bool AsRows(const TensorView& view, RowForm* form) {
  const auto elem = static_cast<int64_t>(view.element_size());
  int64_t inner = elem;
  int i = view.rank() - 1;
  for (; i >= 0; --i) {
    if (view.dim(i) == 1) continue;
    if (view.stride(i) * elem != inner) break;
    inner *= view.dim(i);
  }
  int64_t pitch = 0;
  for (; i >= 0; --i) {
    if (view.dim(i) == 1) continue;
    if (pitch != 0) return false;  // more than one strided outer dimension
    pitch = view.stride(i) * elem;
  }
  if (pitch == 0 || pitch < inner) return false;
  *form = {inner, pitch};
  return true;
}

}  // namespace

std::string DataTypeSetToString(DataTypeSet set) {
  std::vector<std::string> names;
  for (DataType dtype : kAllTypes) {
    if (set & DataTypeBit(dtype)) names.emplace_back(DataTypeName(dtype));
  }
  if (names.empty()) return "none";
  if (names.size() == 1) return names[0];
  const std::string last = names.back();
  names.pop_back();
  return absl::StrCat(absl::StrJoin(names, ", "), " or ", last);
}

bool MayOverlap(const TensorView& a, const TensorView& b) {
  if (a.numel() == 0 || b.numel() == 0 || a.data() == nullptr || b.data() == nullptr) return false;
  const ByteRange ra = Range(a);
  const ByteRange rb = Range(b);
  if (ra.end <= rb.begin || rb.end <= ra.begin) return false;
  RowForm fa, fb;
  if (AsRows(a, &fa) && AsRows(b, &fb) && fa.pitch == fb.pitch) {
    // Both are rows on the same pitch: disjoint iff b's columns lie outside a's in every row.
    const int64_t delta = static_cast<int64_t>(rb.begin - ra.begin);
    const int64_t offset = ((delta % fa.pitch) + fa.pitch) % fa.pitch;
    if (offset >= fa.inner && offset + fb.inner <= fa.pitch) return false;
  }
  return true;
}

bool SameView(const TensorView& a, const TensorView& b) {
  return a.data() == b.data() && a.dtype() == b.dtype() && a.shape() == b.shape() &&
         a.strides() == b.strides();
}

DataTypeSet OpValidator::activation_types() const {
  return backend_.device().type == DeviceType::kCpu ? DataTypeBit(DataType::kF32) : kFloatTypes;
}

absl::Status OpValidator::Error(absl::string_view message) const {
  return absl::InvalidArgumentError(absl::StrCat(op_, ": ", message));
}

absl::Status OpValidator::TensorRanks(absl::string_view field, const TensorView& view, int min_rank,
                                      int max_rank, DataTypeSet dtypes) const {
  if (view.data() == nullptr && (view.rank() == 0 || view.numel() != 0)) {
    return Error(absl::StrCat("field ", field, " expected a tensor, got an empty view"));
  }
  if (view.rank() < min_rank || view.rank() > max_rank) {
    const std::string expected = min_rank == max_rank
                                     ? absl::StrCat("rank ", min_rank)
                                     : absl::StrCat("rank ", min_rank, " to ", max_rank);
    return Error(absl::StrCat("field ", field, " expected ", expected, ", got rank ", view.rank(),
                              " (", Describe(view), ")"));
  }
  if ((dtypes & DataTypeBit(view.dtype())) == 0) {
    return Error(absl::StrCat("field ", field, " expected dtype ", DataTypeSetToString(dtypes),
                              ", got ", DataTypeName(view.dtype()), " (", Describe(view), ")"));
  }
  if (!(view.device() == backend_.device())) {
    return Error(absl::StrCat("field ", field, " expected device ", backend_.device().ToString(),
                              " (backend ", backend_.name(), "), got ", view.device().ToString(),
                              " (", Describe(view), ")"));
  }
  if (view.strides().size() != view.shape().size()) {
    return Error(absl::StrCat("field ", field, " expected one stride per dimension, got strides ",
                              ShapeToString(view.strides()), " (", Describe(view), ")"));
  }
  for (int i = 0; i < view.rank(); ++i) {
    if (view.dim(i) < 0 || view.stride(i) < 0) {
      return Error(
          absl::StrCat("field ", field, " expected non-negative sizes and strides, got shape ",
                       ShapeToString(view.shape()), " strides ", ShapeToString(view.strides())));
    }
  }
  if (view.rank() >= 1 && view.dim(-1) > 1 && view.stride(-1) != 1) {
    return Error(absl::StrCat("field ", field,
                              " expected a contiguous last dimension (stride 1), got strides ",
                              ShapeToString(view.strides()), " (", Describe(view), ")"));
  }
  return absl::OkStatus();
}

absl::Status OpValidator::Tensor(absl::string_view field, const TensorView& view, int rank,
                                 DataTypeSet dtypes) const {
  return TensorRanks(field, view, rank, rank, dtypes);
}

absl::Status OpValidator::OptionalTensor(absl::string_view field, const TensorView& view, int rank,
                                         DataTypeSet dtypes) const {
  if (view.empty()) return absl::OkStatus();
  return Tensor(field, view, rank, dtypes);
}

absl::Status OpValidator::Shape(absl::string_view field, const TensorView& view,
                                const tessera::Shape& expected, absl::string_view why) const {
  if (view.shape() == expected) return absl::OkStatus();
  return Error(absl::StrCat("field ", field, " expected shape ", ShapeToString(expected), " (", why,
                            "), got ", ShapeToString(view.shape())));
}

absl::Status OpValidator::SameDataType(absl::string_view field, const TensorView& view,
                                       absl::string_view other_field,
                                       const TensorView& other) const {
  if (view.dtype() == other.dtype()) return absl::OkStatus();
  return Error(absl::StrCat("field ", field, " expected dtype ", DataTypeName(other.dtype()),
                            " (that of ", other_field, "), got ", DataTypeName(view.dtype())));
}

absl::Status OpValidator::Contiguous(absl::string_view field, const TensorView& view) const {
  if (view.is_contiguous()) return absl::OkStatus();
  return Error(absl::StrCat("field ", field, " expected a contiguous tensor (strides ",
                            ShapeToString(ContiguousStrides(view.shape())), "), got strides ",
                            ShapeToString(view.strides()), " (", Describe(view), ")"));
}

absl::Status OpValidator::NotSelfOverlapping(absl::string_view field,
                                             const TensorView& view) const {
  // Dimensions from the smallest stride up: each stride must step past everything below it.
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (int i = 0; i < view.rank(); ++i) {
    if (view.dim(i) > 1) dims.emplace_back(view.stride(i), view.dim(i));
  }
  std::sort(dims.begin(), dims.end());
  int64_t extent = 1;  // elements spanned by the dimensions seen so far
  for (const auto& [stride, size] : dims) {
    if (stride < extent) {
      return Error(absl::StrCat("field ", field,
                                " expected a layout whose elements do not overlap, got strides ",
                                ShapeToString(view.strides()), " (", Describe(view), ")"));
    }
    extent = stride * (size - 1) + extent;
  }
  return absl::OkStatus();
}

absl::Status OpValidator::Disjoint(absl::string_view field, const TensorView& view,
                                   absl::string_view other_field, const TensorView& other) const {
  if (!MayOverlap(view, other)) return absl::OkStatus();
  return Error(absl::StrCat("field ", field, " expected memory disjoint from ", other_field,
                            ", got overlapping views (", Describe(view), " and ", Describe(other),
                            ")"));
}

absl::Status OpValidator::StreamDevice(const Stream& stream) const {
  if (stream.device() == backend_.device()) return absl::OkStatus();
  return Error(absl::StrCat("stream expected device ", backend_.device().ToString(), ", got ",
                            stream.device().ToString()));
}

}  // namespace tessera::kernels::internal
