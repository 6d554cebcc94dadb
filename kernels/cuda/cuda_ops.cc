// The CUDA backend's op functions: unpack validated params into the launchers' plain arguments
// (kernels/cuda/cuda_kernels.h), run Matmul through cuBLAS where it applies, and convert every
// return code into a Status.
#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_internal.h"

namespace tessera::kernels::cuda {
namespace {

ElemType ElemTypeOf(DataType dtype) {
  switch (dtype) {
    case DataType::kF16:
      return ElemType::kF16;
    case DataType::kBF16:
      return ElemType::kBF16;
    default:
      return ElemType::kF32;
  }
}

cudaDataType_t CudaDataTypeOf(DataType dtype) {
  switch (dtype) {
    case DataType::kF16:
      return CUDA_R_16F;
    case DataType::kBF16:
      return CUDA_R_16BF;
    default:
      return CUDA_R_32F;
  }
}

// The native stream, after making the backend's device current.
absl::StatusOr<cudaStream_t> Prepare(const Backend& backend, const Stream& stream) {
  TESSERA_RETURN_IF_ERROR(CudaBackend::From(backend).Activate());
  return static_cast<cudaStream_t>(stream.native_handle());
}

// The stride of a leading dimension, or `fallback` where the dimension has one element (its
// stride is then arbitrary).
int64_t LeadingStride(const TensorView& view, int64_t fallback) {
  return view.dim(0) <= 1 ? fallback : view.stride(0);
}

RowLayout RowLayoutOf(const TensorView& view) {
  if (view.rank() == 2) return {1, view.stride(0), 0};
  return {view.dim(1), view.stride(0), view.stride(1)};
}

CacheLayout CacheLayoutOf(const TensorView& cache) {
  return {cache.stride(0), cache.stride(1), cache.stride(2)};
}

template <typename T>
absl::Status CopyVectorToHost(const TensorView& view, std::vector<T>* host, cudaStream_t stream) {
  host->resize(static_cast<size_t>(view.numel()));
  if (host->empty()) return absl::OkStatus();
  return CudaStatus("cudaMemcpyAsync",
                    cudaMemcpyAsync(host->data(), view.data(), host->size() * sizeof(T),
                                    cudaMemcpyDeviceToHost, stream));
}

// As the CPU backend checks them: offsets non-decreasing from 0 to the list's size, ids inside
// the vocabulary.
absl::Status CheckRanges(const char* field, const std::vector<int32_t>& start,
                         const std::vector<int32_t>& ids, int64_t vocab) {
  const auto rows = static_cast<int64_t>(start.size()) - 1;
  const auto total = static_cast<int64_t>(ids.size());
  for (int64_t r = 0; r <= rows; ++r) {
    const bool ok =
        (r == 0 ? start[0] == 0 : start[r] >= start[r - 1]) && (r < rows || start[rows] == total);
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat("ApplyPenalties: field ", field,
                                                     " expected non-decreasing offsets from 0 to ",
                                                     total, ", got ", start[r], " at ", r));
    }
  }
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("ApplyPenalties: token id ", id,
                                                     " outside the vocabulary [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

// output = input * weight^T (+ bias) through cublasGemmEx, for equal input and weight types.
// Column-major, cuBLAS sees output^T[n, m] = weight[n, k] * input^T[k, m]. With a bias or an
// output type cuBLAS cannot write directly, the product goes to an f32 scratch and the epilogue
// adds the bias and converts.
absl::Status CublasMatmul(const MatmulParams& p, CudaStream& cuda_stream) {
  const int64_t m = p.input.dim(0);
  const int64_t k = p.input.dim(1);
  const int64_t n = p.weight.dim(0);
  TESSERA_ASSIGN_OR_RETURN(cublasHandle_t handle, cuda_stream.Cublas());
  const cudaStream_t stream = cuda_stream.stream();
  const bool f32_output = p.output.dtype() == DataType::kF32;
  const bool direct = f32_output || p.bias.empty();
  const int64_t out_stride = LeadingStride(p.output, n);
  void* product = p.output.data();
  int64_t product_stride = out_stride;
  cudaDataType_t product_type = CudaDataTypeOf(p.output.dtype());
  if (!direct) {
    TESSERA_RETURN_IF_ERROR(
        CudaStatus("cudaMallocAsync",
                   cudaMallocAsync(&product, static_cast<size_t>(m * n) * sizeof(float), stream)));
    product_stride = n;
    product_type = CUDA_R_32F;
  }
  const float alpha = 1.0f;
  const float beta = 0.0f;
  absl::Status status = CublasStatus(
      "cublasGemmEx",
      cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                   static_cast<int>(k), &alpha, p.weight.data(), CudaDataTypeOf(p.weight.dtype()),
                   static_cast<int>(k), p.input.data(), CudaDataTypeOf(p.input.dtype()),
                   static_cast<int>(LeadingStride(p.input, k)), &beta, product, product_type,
                   static_cast<int>(product_stride), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  if (status.ok() && !p.bias.empty()) {
    BiasEpilogueArgs args{};
    args.accumulator = static_cast<const float*>(product);
    args.accumulator_stride = product_stride;
    args.bias = p.bias.data();
    args.bias_type = ElemTypeOf(p.bias.dtype());
    args.output = p.output.data();
    args.output_stride = out_stride;
    args.output_type = ElemTypeOf(p.output.dtype());
    args.m = m;
    args.n = n;
    status = CudaStatus("LaunchBiasEpilogue", LaunchBiasEpilogue(args, stream));
  }
  if (!direct) {
    const absl::Status freed = CudaStatus("cudaFreeAsync", cudaFreeAsync(product, stream));
    if (status.ok()) status = freed;
  }
  return status;
}

}  // namespace

absl::Status CudaEmbedding(Backend& backend, const EmbeddingParams& p, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t native, Prepare(backend, stream));
  EmbeddingArgs args{};
  args.ids = p.ids.data_as<int32_t>();
  args.tokens = p.ids.dim(0);
  args.table = p.table.data();
  args.table_type = ElemTypeOf(p.table.dtype());
  args.rows = p.table.dim(0);
  args.hidden = p.table.dim(1);
  args.table_stride = p.table.stride(0);
  args.output = p.output.data();
  args.output_type = ElemTypeOf(p.output.dtype());
  args.output_stride = p.output.stride(0);
  args.row_offset = p.row_offset;
  return CudaStatus("LaunchEmbedding", LaunchEmbedding(args, native));
}

absl::Status CudaRmsNorm(Backend& backend, const RmsNormParams& p, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t native, Prepare(backend, stream));
  RmsNormArgs args{};
  args.input = p.input.data();
  args.input_layout = RowLayoutOf(p.input);
  if (!p.residual.empty()) {
    args.residual = p.residual.data();
    args.residual_layout = RowLayoutOf(p.residual);
  }
  args.output = p.output.data();
  args.output_layout = RowLayoutOf(p.output);
  args.type = ElemTypeOf(p.input.dtype());
  args.weight = p.weight.data();
  args.weight_type = ElemTypeOf(p.weight.dtype());
  args.hidden = p.input.dim(-1);
  args.rows = p.input.numel() / args.hidden;
  args.epsilon = p.epsilon;
  return CudaStatus("LaunchRmsNorm", LaunchRmsNorm(args, native));
}

absl::Status CudaMatmul(Backend& backend, const MatmulParams& p, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t native, Prepare(backend, stream));
  const int64_t m = p.input.dim(0);
  const int64_t k = p.input.dim(1);
  const int64_t n = p.weight.dim(0);
  if (m == 0 || n == 0) return absl::OkStatus();
  constexpr int64_t kIntMax = 0x7fffffff;
  const bool cublas_sizes = m <= kIntMax && n <= kIntMax && k <= kIntMax &&
                            LeadingStride(p.input, k) <= kIntMax &&
                            LeadingStride(p.output, n) <= kIntMax;
  // cuBLAS wants ldb >= k: rows that share elements (a broadcast input, stride 0) go to the
  // kernels of cuda_matmul.cu, which take any stride.
  const bool cublas_layout = LeadingStride(p.input, k) >= k;
  if (p.input.dtype() == p.weight.dtype() && k > 0 && cublas_sizes && cublas_layout) {
    auto* cuda_stream = dynamic_cast<CudaStream*>(&stream);
    if (cuda_stream == nullptr) {
      return absl::InvalidArgumentError(
          "Matmul: the stream was not made by a CUDA backend (cuBLAS needs its handle)");
    }
    return CublasMatmul(p, *cuda_stream);
  }
  MatmulArgs args{};
  args.input = p.input.data();
  args.input_stride = LeadingStride(p.input, k);
  args.input_type = ElemTypeOf(p.input.dtype());
  args.weight = p.weight.data();
  args.weight_type = ElemTypeOf(p.weight.dtype());
  if (!p.bias.empty()) {
    args.bias = p.bias.data();
    args.bias_type = ElemTypeOf(p.bias.dtype());
  }
  args.output = p.output.data();
  args.output_stride = LeadingStride(p.output, n);
  args.output_type = ElemTypeOf(p.output.dtype());
  args.m = m;
  args.n = n;
  args.k = k;
  return CudaStatus("LaunchMatmul", LaunchMatmul(args, native));
}

absl::Status CudaRope(Backend& backend, const RopeParams& p, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t native, Prepare(backend, stream));
  RopeArgs args{};
  args.query = p.query.data();
  args.q_heads = p.query.dim(1);
  args.query_stride0 = p.query.stride(0);
  args.query_stride1 = p.query.stride(1);
  args.key = p.key.data();
  args.kv_heads = p.key.dim(1);
  args.key_stride0 = p.key.stride(0);
  args.key_stride1 = p.key.stride(1);
  args.type = ElemTypeOf(p.query.dtype());
  args.tokens = p.query.dim(0);
  args.head_dim = p.query.dim(2);
  args.positions = p.positions.data_as<int32_t>();
  args.inv_freq = p.inv_freq.data_as<float>();
  args.half = p.inv_freq.dim(0);
  return CudaStatus("LaunchRope", LaunchRope(args, native));
}

absl::Status CudaSwiglu(Backend& backend, const SwigluParams& p, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t native, Prepare(backend, stream));
  SwigluArgs args{};
  args.gate_up = p.gate_up.data();
  args.gate_up_stride = p.gate_up.stride(0);
  args.output = p.output.data();
  args.output_stride = p.output.stride(0);
  args.type = ElemTypeOf(p.output.dtype());
  args.tokens = p.gate_up.dim(0);
  args.inter = p.output.dim(1);
  return CudaStatus("LaunchSwiglu", LaunchSwiglu(args, native));
}

absl::Status CudaKvWrite(Backend& backend, const KvWriteParams& p, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t native, Prepare(backend, stream));
  KvWriteArgs args{};
  args.key = p.key.data();
  args.key_stride0 = p.key.stride(0);
  args.key_stride1 = p.key.stride(1);
  args.value = p.value.data();
  args.value_stride0 = p.value.stride(0);
  args.value_stride1 = p.value.stride(1);
  args.type = ElemTypeOf(p.key.dtype());
  args.tokens = p.key.dim(0);
  args.kv_heads = p.key.dim(1);
  args.head_dim = p.key.dim(2);
  args.slot_mapping = p.slot_mapping.data_as<int64_t>();
  args.key_cache = p.key_cache.data();
  args.key_layout = CacheLayoutOf(p.key_cache);
  args.value_cache = p.value_cache.data();
  args.value_layout = CacheLayoutOf(p.value_cache);
  args.cache_type = ElemTypeOf(p.key_cache.dtype());
  args.num_blocks = p.key_cache.dim(0);
  args.block_size = p.key_cache.dim(2);
  return CudaStatus("LaunchKvWrite", LaunchKvWrite(args, native));
}

absl::Status CudaPagedAttention(Backend& backend, const PagedAttentionParams& p, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t native, Prepare(backend, stream));
  const CudaBackend& cuda = CudaBackend::From(backend);
  const int64_t head_dim = p.query.dim(2);
  const size_t needed = PagedAttentionMinSharedBytes(head_dim);
  if (needed > static_cast<size_t>(cuda.limits().max_shared_bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PagedAttention: head_dim ", head_dim, " needs ", needed,
        " bytes of shared memory per block, device allows ", cuda.limits().max_shared_bytes));
  }
  PagedAttentionArgs args{};
  args.query = p.query.data();
  args.query_stride0 = p.query.stride(0);
  args.query_stride1 = p.query.stride(1);
  args.output = p.output.data();
  args.output_stride0 = p.output.stride(0);
  args.output_stride1 = p.output.stride(1);
  args.type = ElemTypeOf(p.query.dtype());
  args.key_cache = p.key_cache.data();
  args.key_layout = CacheLayoutOf(p.key_cache);
  args.value_cache = p.value_cache.data();
  args.value_layout = CacheLayoutOf(p.value_cache);
  args.cache_type = ElemTypeOf(p.key_cache.dtype());
  args.block_tables = p.block_tables.data_as<int32_t>();
  args.block_tables_stride = p.block_tables.stride(0);
  args.max_blocks_per_seq = p.block_tables.dim(1);
  args.query_start = p.query_start.data_as<int32_t>();
  args.seq_lens = p.seq_lens.data_as<int32_t>();
  args.num_seqs = p.seq_lens.dim(0);
  args.tokens = p.query.dim(0);
  args.q_heads = p.query.dim(1);
  args.kv_heads = p.key_cache.dim(1);
  args.head_dim = head_dim;
  args.block_size = p.key_cache.dim(2);
  args.num_blocks = p.key_cache.dim(0);
  args.scale = p.scale;
  return CudaStatus("LaunchPagedAttention", LaunchPagedAttention(args, cuda.limits(), native));
}

absl::Status CudaSample(Backend& backend, const SampleParams& p, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t native, Prepare(backend, stream));
  SampleArgs args{};
  args.logits = p.logits.data_as<float>();
  args.rows = p.logits.dim(0);
  args.vocab = p.logits.dim(1);
  args.logits_stride = LeadingStride(p.logits, args.vocab);
  args.temperature = p.temperature.data_as<float>();
  args.top_k = p.top_k.data_as<int32_t>();
  args.top_p = p.top_p.data_as<float>();
  args.seeds = p.seeds.data_as<int64_t>();
  args.steps = p.steps.data_as<int64_t>();
  if (!p.min_p.empty()) args.min_p = p.min_p.data_as<float>();
  if (!p.raw_logits.empty()) {
    args.raw_logits = p.raw_logits.data_as<float>();
    args.raw_stride = LeadingStride(p.raw_logits, args.vocab);
  }
  args.output_ids = p.output_ids.data_as<int32_t>();
  if (!p.output_logprobs.empty()) args.output_logprobs = p.output_logprobs.data_as<float>();
  if (!p.output_top_ids.empty()) {
    args.top_n = p.output_top_ids.dim(1);
    args.top_ids = p.output_top_ids.data_as<int32_t>();
    args.top_ids_stride = LeadingStride(p.output_top_ids, args.top_n);
    args.top_logprobs = p.output_top_logprobs.data_as<float>();
    args.top_logprobs_stride = LeadingStride(p.output_top_logprobs, args.top_n);
  }
  return CudaStatus("LaunchSample", LaunchSample(args, native));
}

// The ids, offsets and penalties are checked on the host before anything is written, as the
// op's contract asks: this copies them (small: one entry per distinct token) and waits for the
// stream once.
absl::Status CudaApplyPenalties(Backend& backend, const ApplyPenaltiesParams& p, Stream& stream) {
  TESSERA_ASSIGN_OR_RETURN(cudaStream_t native, Prepare(backend, stream));
  const int64_t rows = p.logits.dim(0);
  const int64_t vocab = p.logits.dim(1);
  std::vector<int32_t> ids, start, banned, banned_start, bias_ids, bias_start;
  std::vector<float> repetition;
  TESSERA_RETURN_IF_ERROR(CopyVectorToHost(p.token_ids, &ids, native));
  TESSERA_RETURN_IF_ERROR(CopyVectorToHost(p.token_start, &start, native));
  TESSERA_RETURN_IF_ERROR(CopyVectorToHost(p.repetition_penalty, &repetition, native));
  if (!p.banned_ids.empty()) {
    TESSERA_RETURN_IF_ERROR(CopyVectorToHost(p.banned_ids, &banned, native));
    TESSERA_RETURN_IF_ERROR(CopyVectorToHost(p.banned_start, &banned_start, native));
  }
  if (!p.bias_ids.empty()) {
    TESSERA_RETURN_IF_ERROR(CopyVectorToHost(p.bias_ids, &bias_ids, native));
    TESSERA_RETURN_IF_ERROR(CopyVectorToHost(p.bias_start, &bias_start, native));
  }
  TESSERA_RETURN_IF_ERROR(CudaStatus("cudaStreamSynchronize", cudaStreamSynchronize(native)));
  TESSERA_RETURN_IF_ERROR(CheckRanges("token_start", start, ids, vocab));
  if (!p.banned_ids.empty()) {
    TESSERA_RETURN_IF_ERROR(CheckRanges("banned_start", banned_start, banned, vocab));
  }
  if (!p.bias_ids.empty()) {
    TESSERA_RETURN_IF_ERROR(CheckRanges("bias_start", bias_start, bias_ids, vocab));
  }
  for (const float penalty : repetition) {
    if (!(penalty > 0.0f) || !std::isfinite(penalty)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ApplyPenalties: repetition_penalty expected finite and > 0, got ", penalty));
    }
  }
  ApplyPenaltiesArgs args{};
  args.logits = p.logits.data_as<float>();
  args.logits_stride = LeadingStride(p.logits, vocab);
  args.rows = rows;
  args.vocab = vocab;
  args.repetition = p.repetition_penalty.data_as<float>();
  args.presence = p.presence_penalty.data_as<float>();
  args.frequency = p.frequency_penalty.data_as<float>();
  args.token_ids = p.token_ids.data_as<int32_t>();
  args.output_counts = p.output_counts.data_as<int32_t>();
  args.token_start = p.token_start.data_as<int32_t>();
  if (!p.banned_ids.empty()) {
    args.banned_ids = p.banned_ids.data_as<int32_t>();
    args.banned_start = p.banned_start.data_as<int32_t>();
  }
  if (!p.bias_ids.empty()) {
    args.bias_ids = p.bias_ids.data_as<int32_t>();
    args.bias_values = p.bias_values.data_as<float>();
    args.bias_start = p.bias_start.data_as<int32_t>();
  }
  if (!p.allowed_mask.empty()) {
    args.allowed_mask = reinterpret_cast<const uint32_t*>(p.allowed_mask.data_as<int32_t>());
    args.mask_stride = LeadingStride(p.allowed_mask, (vocab + 31) / 32);
  }
  return CudaStatus("LaunchApplyPenalties", LaunchApplyPenalties(args, native));
}

}  // namespace tessera::kernels::cuda
