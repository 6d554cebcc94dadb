#include "parallel/comm/validation.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace tessera::parallel {
namespace {

absl::string_view DeviceTypeName(DeviceType type) {
  return type == DeviceType::kCpu ? "cpu" : "cuda";
}

absl::Status SameDtype(absl::string_view call, const TensorView& send, const TensorView& recv) {
  if (send.dtype() != recv.dtype()) {
    return absl::InvalidArgumentError(
        absl::StrCat(call, ": send is ", send.DebugString(), " but recv is ", recv.DebugString()));
  }
  return absl::OkStatus();
}

absl::Status Reducible(absl::string_view call, DataType dtype) {
  if (!IsReducible(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(call, ": dtype ", DataTypeName(dtype), " cannot be reduced"));
  }
  return absl::OkStatus();
}

// `inner` must be exactly `outer` + offset_bytes, or not overlap it at all.
absl::Status InPlaceOrDisjoint(absl::string_view call, const TensorView& inner,
                               const TensorView& outer, size_t offset_bytes) {
  const char* expected = static_cast<const char*>(outer.data()) + offset_bytes;
  if (inner.data() != expected &&
      Overlaps(inner.data(), inner.nbytes(), outer.data(), outer.nbytes())) {
    return absl::InvalidArgumentError(
        absl::StrCat(call, ": send and recv overlap but are not in place"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateView(absl::string_view call, absl::string_view what, const TensorView& view,
                          DeviceType device_type) {
  if (view.device().type != device_type) {
    return absl::InvalidArgumentError(absl::StrCat(call, ": ", what, " ", view.DebugString(),
                                                   " is not in ", DeviceTypeName(device_type),
                                                   " memory, which this communicator needs"));
  }
  if (!view.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(call, ": ", what, " ", view.DebugString(), " is not contiguous"));
  }
  if (view.numel() > 0 && view.data() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(call, ": ", what, " ", view.DebugString(), " has no data"));
  }
  return absl::OkStatus();
}

absl::Status ValidateAllReduce(const TensorView& send, const TensorView& recv,
                               DeviceType device_type) {
  TESSERA_RETURN_IF_ERROR(ValidateView("AllReduce", "send", send, device_type));
  TESSERA_RETURN_IF_ERROR(ValidateView("AllReduce", "recv", recv, device_type));
  TESSERA_RETURN_IF_ERROR(SameDtype("AllReduce", send, recv));
  TESSERA_RETURN_IF_ERROR(Reducible("AllReduce", send.dtype()));
  if (send.numel() != recv.numel()) {
    return absl::InvalidArgumentError(absl::StrCat("AllReduce: send ", send.DebugString(),
                                                   " and recv ", recv.DebugString(),
                                                   " differ in element count"));
  }
  return InPlaceOrDisjoint("AllReduce", recv, send, 0);
}

absl::Status ValidateAllGather(const TensorView& send, const TensorView& recv, int rank,
                               int group_size, DeviceType device_type) {
  TESSERA_RETURN_IF_ERROR(ValidateView("AllGather", "send", send, device_type));
  TESSERA_RETURN_IF_ERROR(ValidateView("AllGather", "recv", recv, device_type));
  TESSERA_RETURN_IF_ERROR(SameDtype("AllGather", send, recv));
  if (recv.numel() != send.numel() * group_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AllGather: recv ", recv.DebugString(), " must hold ", group_size, " times send ",
        send.DebugString(), " (", send.numel() * group_size, " elements)"));
  }
  return InPlaceOrDisjoint("AllGather", send, recv, static_cast<size_t>(rank) * send.nbytes());
}

absl::Status ValidateReduceScatter(const TensorView& send, const TensorView& recv, int rank,
                                   int group_size, DeviceType device_type) {
  TESSERA_RETURN_IF_ERROR(ValidateView("ReduceScatter", "send", send, device_type));
  TESSERA_RETURN_IF_ERROR(ValidateView("ReduceScatter", "recv", recv, device_type));
  TESSERA_RETURN_IF_ERROR(SameDtype("ReduceScatter", send, recv));
  TESSERA_RETURN_IF_ERROR(Reducible("ReduceScatter", send.dtype()));
  if (send.numel() != recv.numel() * group_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ReduceScatter: send ", send.DebugString(), " must hold ", group_size, " times recv ",
        recv.DebugString(), " (", recv.numel() * group_size, " elements)"));
  }
  return InPlaceOrDisjoint("ReduceScatter", recv, send, static_cast<size_t>(rank) * recv.nbytes());
}

absl::Status ValidateBroadcast(const TensorView& data, int root, int group_size,
                               DeviceType device_type) {
  TESSERA_RETURN_IF_ERROR(ValidateView("Broadcast", "data", data, device_type));
  if (root < 0 || root >= group_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("Broadcast: root ", root, " is not a rank of a group of ", group_size));
  }
  return absl::OkStatus();
}

absl::Status ValidatePointToPoint(absl::string_view call, const TensorView& data, int peer,
                                  int rank, int group_size, DeviceType device_type) {
  TESSERA_RETURN_IF_ERROR(ValidateView(call, "data", data, device_type));
  if (peer < 0 || peer >= group_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(call, ": peer ", peer, " is not a rank of a group of ", group_size));
  }
  if (peer == rank) {
    return absl::InvalidArgumentError(absl::StrCat(call, ": peer ", peer, " is this rank"));
  }
  return absl::OkStatus();
}

bool Overlaps(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  if (a_bytes == 0 || b_bytes == 0) return false;
  const auto a0 = reinterpret_cast<uintptr_t>(a);
  const auto b0 = reinterpret_cast<uintptr_t>(b);
  return a0 < b0 + b_bytes && b0 < a0 + a_bytes;
}

}  // namespace tessera::parallel
