// The backend-neutral ops a Llama-family forward pass needs. Each call validates its params once
// (ranks, shapes, dtypes, devices, strides: kInvalidArgument naming the op and the field) and
// then dispatches through backend.ops(). OK means the work was enqueued on `stream` (on the CPU
// backend: done). Parameter semantics are in kernels/op_params.h.
#pragma once

#include "absl/status/status.h"
#include "common/stream.h"
#include "kernels/backend.h"
#include "kernels/op_params.h"

namespace tessera::kernels {

absl::Status Embedding(Backend& backend, const EmbeddingParams& params, Stream& stream);
absl::Status RmsNorm(Backend& backend, const RmsNormParams& params, Stream& stream);
absl::Status Matmul(Backend& backend, const MatmulParams& params, Stream& stream);
absl::Status Rope(Backend& backend, const RopeParams& params, Stream& stream);
absl::Status Swiglu(Backend& backend, const SwigluParams& params, Stream& stream);
absl::Status KvWrite(Backend& backend, const KvWriteParams& params, Stream& stream);
absl::Status PagedAttention(Backend& backend, const PagedAttentionParams& params, Stream& stream);
absl::Status Sample(Backend& backend, const SampleParams& params, Stream& stream);
absl::Status ApplyPenalties(Backend& backend, const ApplyPenaltiesParams& params, Stream& stream);

}  // namespace tessera::kernels
