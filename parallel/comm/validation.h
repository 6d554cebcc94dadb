// Argument checks shared by every Communicator implementation, so each op rejects bad input with
// the same kInvalidArgument message whatever the backend. Each function names the call in its
// message ("AllReduce: ..."). Pure functions; thread-safe.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/tensor.h"
#include "parallel/comm/communicator.h"

namespace tessera::parallel {

// The view is contiguous, lives on a device of `device_type`, and has data unless it is empty.
absl::Status ValidateView(absl::string_view call, absl::string_view what, const TensorView& view,
                          DeviceType device_type);

// send and recv: same dtype and element count, reducible dtype; recv is send (in place) or does
// not overlap it.
absl::Status ValidateAllReduce(const TensorView& send, const TensorView& recv,
                               DeviceType device_type);
// recv holds `group_size` times send's elements, same dtype; send is the slice of recv at `rank`
// (in place, as NCCL defines it) or does not overlap recv.
absl::Status ValidateAllGather(const TensorView& send, const TensorView& recv, int rank,
                               int group_size, DeviceType device_type);
// send holds `group_size` times recv's elements, same dtype, reducible; recv is the slice of send
// at `rank` (in place) or does not overlap send.
absl::Status ValidateReduceScatter(const TensorView& send, const TensorView& recv, int rank,
                                   int group_size, DeviceType device_type);
// root in [0, group_size).
absl::Status ValidateBroadcast(const TensorView& data, int root, int group_size,
                               DeviceType device_type);
// peer in [0, group_size) and not `rank` itself. `call` is "Send" or "Recv".
absl::Status ValidatePointToPoint(absl::string_view call, const TensorView& data, int peer,
                                  int rank, int group_size, DeviceType device_type);

// True when the byte ranges [a, a + a_bytes) and [b, b + b_bytes) overlap.
bool Overlaps(const void* a, size_t a_bytes, const void* b, size_t b_bytes);

}  // namespace tessera::parallel
