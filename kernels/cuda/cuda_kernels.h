// The launchers of the CUDA backend's kernels, one group per .cu file. Plain structs of device
// pointers, sizes and strides (in elements): this header is shared by the host glue (compiled as
// C++, cuda_ops.cc) and the .cu files (compiled by nvcc), so it includes neither Abseil nor
// tessera's tensor types. Every launcher enqueues on `stream` and returns the launch error (or
// cudaSuccess); errors of the running kernels surface from the stream.
//
// Arguments arrive validated by kernels/ops.cc; values held in device memory (ids, slots, block
// tables) are not checked here: the kernels skip what would address memory out of bounds (see
// the README for what each one does then).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/cuda/attention_kernel.h"

namespace tessera::kernels::cuda {

// Floating-point element types of activations, weights and caches.
enum class ElemType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// ---- cuda_elementwise.cu ------------------------------------------------------------------

struct EmbeddingArgs {
  const int32_t* ids;
  int64_t tokens;
  const void* table;
  ElemType table_type;
  int64_t rows, hidden, table_stride;
  void* output;
  ElemType output_type;
  int64_t output_stride;
  int64_t row_offset;
};
cudaError_t LaunchEmbedding(const EmbeddingArgs& args, cudaStream_t stream);

// A [rows, hidden] or [rows / inner, inner, hidden] view: row r sits at
// (r / inner) * stride0 + (r % inner) * stride1 (inner = 1 for rank 2).
struct RowLayout {
  int64_t inner = 1;
  int64_t stride0 = 0;
  int64_t stride1 = 0;
};

struct RmsNormArgs {
  const void* input;
  RowLayout input_layout;
  void* residual;  // nullptr when not fused
  RowLayout residual_layout;
  void* output;
  RowLayout output_layout;
  ElemType type;  // of input, residual and output
  const void* weight;
  ElemType weight_type;
  int64_t rows, hidden;
  float epsilon;
};
cudaError_t LaunchRmsNorm(const RmsNormArgs& args, cudaStream_t stream);

struct RopeArgs {
  void* query;
  int64_t q_heads, query_stride0, query_stride1;
  void* key;
  int64_t kv_heads, key_stride0, key_stride1;
  ElemType type;
  int64_t tokens, head_dim;
  const int32_t* positions;
  const float* inv_freq;
  int64_t half;  // rotary_dim / 2
};
cudaError_t LaunchRope(const RopeArgs& args, cudaStream_t stream);

struct SwigluArgs {
  const void* gate_up;
  int64_t gate_up_stride;
  void* output;
  int64_t output_stride;
  ElemType type;
  int64_t tokens, inter;
};
cudaError_t LaunchSwiglu(const SwigluArgs& args, cudaStream_t stream);

// Strides of a [num_blocks, kv_heads, block_size, head_dim] cache.
struct CacheLayout {
  int64_t stride0, stride1, stride2;
};

struct KvWriteArgs {
  const void* key;
  int64_t key_stride0, key_stride1;
  const void* value;
  int64_t value_stride0, value_stride1;
  ElemType type;
  int64_t tokens, kv_heads, head_dim;
  const int64_t* slot_mapping;
  void* key_cache;
  CacheLayout key_layout;
  void* value_cache;
  CacheLayout value_layout;
  ElemType cache_type;
  int64_t num_blocks, block_size;
};
cudaError_t LaunchKvWrite(const KvWriteArgs& args, cudaStream_t stream);

// ---- cuda_attention.cu --------------------------------------------------------------------

struct PagedAttentionArgs {
  const void* query;
  int64_t query_stride0, query_stride1;
  void* output;
  int64_t output_stride0, output_stride1;
  ElemType type;  // of query and output
  const void* key_cache;
  CacheLayout key_layout;
  const void* value_cache;
  CacheLayout value_layout;
  ElemType cache_type;
  const int32_t* block_tables;
  int64_t block_tables_stride, max_blocks_per_seq;
  const int32_t* query_start;
  const int32_t* seq_lens;
  int64_t num_seqs, tokens, q_heads, kv_heads, head_dim, block_size, num_blocks;
  float scale;
};
// Device properties the attention launch plans with (queried once by the backend), and the
// backend's kernel choice.
struct DeviceLimits {
  int multiprocessors = 1;
  int max_shared_bytes = 48 * 1024;  // per block, with the opt-in
  int compute_major = 0;             // compute capability: tensor-core tiles need 8 or more
  CudaAttentionKernel attention = CudaAttentionKernel::kAuto;
};
// Shared memory the smallest tile needs: a device offering less cannot run head_dim.
size_t PagedAttentionMinSharedBytes(int64_t head_dim);
cudaError_t LaunchPagedAttention(const PagedAttentionArgs& args, const DeviceLimits& limits,
                                 cudaStream_t stream);
// Lets the attention kernels use more than the default 48 KiB of shared memory on the current
// device (the tensor-core tiles what they need, the SIMT kernel up to the device's limit): once
// per device, when the backend is made, not on every launch.
cudaError_t PrepareAttentionKernels(const DeviceLimits& limits);
// Whether LaunchPagedAttention takes the tensor-core tile (mma_attention.h) for `args`, or the
// SIMT kernel: host logic only, so testable without a GPU.
bool PagedAttentionTakesTensorCores(const PagedAttentionArgs& args, const DeviceLimits& limits);

// ---- cuda_sample.cu -----------------------------------------------------------------------

struct SampleArgs {
  const float* logits;
  int64_t logits_stride;
  int64_t rows, vocab;
  const float* temperature;
  const int32_t* top_k;
  const float* top_p;
  const int64_t* seeds;
  const int64_t* steps;
  const float* min_p;       // nullable
  const float* raw_logits;  // nullable
  int64_t raw_stride;
  int32_t* output_ids;
  float* output_logprobs;  // nullable
  int32_t* top_ids;        // nullable (with top_logprobs)
  int64_t top_ids_stride;
  float* top_logprobs;
  int64_t top_logprobs_stride;
  int64_t top_n;
};
cudaError_t LaunchSample(const SampleArgs& args, cudaStream_t stream);

struct ApplyPenaltiesArgs {
  float* logits;
  int64_t logits_stride;
  int64_t rows, vocab;
  const float* repetition;
  const float* presence;
  const float* frequency;
  const int32_t* token_ids;
  const int32_t* output_counts;
  const int32_t* token_start;
  const int32_t* banned_ids;     // nullable
  const int32_t* banned_start;   // nullable
  const int32_t* bias_ids;       // nullable: logit bias, added before the penalties
  const float* bias_values;      // with bias_ids
  const int32_t* bias_start;     // with bias_ids
  const uint32_t* allowed_mask;  // nullable: [rows, mask_stride] bits, applied last
  int64_t mask_stride;
};
cudaError_t LaunchApplyPenalties(const ApplyPenaltiesArgs& args, cudaStream_t stream);

// ---- cuda_matmul.cu -----------------------------------------------------------------------

// output[m, n] = sum_k input[m, k] * weight[n, k] + bias[n] with f32 accumulation, for any mix
// of element types (cuBLAS covers equal input and weight types; this covers the rest).
struct MatmulArgs {
  const void* input;
  int64_t input_stride;
  ElemType input_type;
  const void* weight;  // contiguous [n, k]
  ElemType weight_type;
  const void* bias;  // nullable
  ElemType bias_type;
  void* output;
  int64_t output_stride;
  ElemType output_type;
  int64_t m, n, k;
};
cudaError_t LaunchMatmul(const MatmulArgs& args, cudaStream_t stream);

// output[i, j] = accumulator[i, j] + bias[j] (bias nullable), converted to output_type.
// `accumulator` is a contiguous f32 [m, n]; it may be the output itself (f32, same layout).
struct BiasEpilogueArgs {
  const float* accumulator;
  const void* bias;
  ElemType bias_type;
  void* output;
  int64_t output_stride;
  ElemType output_type;
  int64_t accumulator_stride;
  int64_t m, n;
};
cudaError_t LaunchBiasEpilogue(const BiasEpilogueArgs& args, cudaStream_t stream);

}  // namespace tessera::kernels::cuda
