// Helpers for the validation that kernels/ops.cc runs once per op before it dispatches to a
// backend: each check returns OK or kInvalidArgument with a message of the form
//   "<Op>: field <name> expected <what>, got <what> (<dtype>[shape]@device)".
// Internal to kernels/; backends do not need them (their params arrive validated).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/tensor.h"
#include "kernels/backend.h"

namespace tessera::kernels::internal {

// A set of DataTypes as a bit mask.
using DataTypeSet = uint32_t;
constexpr DataTypeSet DataTypeBit(DataType dtype) { return 1u << static_cast<unsigned>(dtype); }
inline constexpr DataTypeSet kFloatTypes =
    DataTypeBit(DataType::kF32) | DataTypeBit(DataType::kF16) | DataTypeBit(DataType::kBF16);
// "f32", "f32 or bf16", "f32, f16 or bf16".
std::string DataTypeSetToString(DataTypeSet set);

// The byte ranges of two views may intersect in a way that makes them share elements. Exact for
// disjoint ranges and for views that interleave as column ranges of the same rows (q, k and v
// slices of one fused buffer); conservative (true) otherwise.
bool MayOverlap(const TensorView& a, const TensorView& b);
// Same memory, dtype, shape and strides.
bool SameView(const TensorView& a, const TensorView& b);

// The checks of one op call. Not thread-safe; cheap to construct.
class OpValidator {
 public:
  OpValidator(absl::string_view op, const Backend& backend) : op_(op), backend_(backend) {}

  // The dtypes activations and outputs may have on this backend: f32 on the CPU, f32/f16/bf16
  // elsewhere.
  DataTypeSet activation_types() const;

  // A required view: present (non-null unless it has no elements), of rank `rank`, of one of
  // `dtypes`, on the backend's device, with non-negative strides and a contiguous last dimension.
  absl::Status Tensor(absl::string_view field, const TensorView& view, int rank,
                      DataTypeSet dtypes) const;
  // As Tensor() with rank min_rank..max_rank.
  absl::Status TensorRanks(absl::string_view field, const TensorView& view, int min_rank,
                           int max_rank, DataTypeSet dtypes) const;
  // An optional view: OK when absent (empty()), else as Tensor().
  absl::Status OptionalTensor(absl::string_view field, const TensorView& view, int rank,
                              DataTypeSet dtypes) const;
  // `view` has exactly `expected`; `why` says where the expectation comes from.
  absl::Status Shape(absl::string_view field, const TensorView& view,
                     const tessera::Shape& expected, absl::string_view why) const;
  // `view` has the dtype of `other_field`.
  absl::Status SameDataType(absl::string_view field, const TensorView& view,
                            absl::string_view other_field, const TensorView& other) const;
  absl::Status Contiguous(absl::string_view field, const TensorView& view) const;
  // No two elements of the view share memory (for outputs).
  absl::Status NotSelfOverlapping(absl::string_view field, const TensorView& view) const;
  // The two views share no element.
  absl::Status Disjoint(absl::string_view field, const TensorView& view,
                        absl::string_view other_field, const TensorView& other) const;
  // The stream belongs to the backend's device.
  absl::Status StreamDevice(const Stream& stream) const;
  // kInvalidArgument "<Op>: <message>".
  absl::Status Error(absl::string_view message) const;

 private:
  absl::string_view op_;
  const Backend& backend_;
};

}  // namespace tessera::kernels::internal
