// Element-wise reduction of several CPU buffers, shared by the CPU communicators. f16 and bf16
// are accumulated in f32 and rounded once at the end; sources are combined in the order given, so
// every rank that reduces the same sources gets bit-identical results. Integer sums wrap.
// Thread-safe (no shared state).
#pragma once

#include <cstdint>

#include "absl/types/span.h"
#include "common/dtype.h"
#include "parallel/comm/communicator.h"

namespace tessera::parallel {

// dst[i] = op(srcs[0][i], srcs[1][i], ...) for i in [0, count). `dst` may alias any source
// exactly (in-place); every source element is read before the same index of dst is written.
// Requires IsReducible(dtype) and at least one source (checked: a bug otherwise).
void ReduceCpu(DataType dtype, ReduceOp op, absl::Span<const void* const> srcs, void* dst,
               int64_t count);

}  // namespace tessera::parallel
