// ValidateBackend: what a replica on each kernels backend can run, refused up front with the
// reason (a build without the CUDA backend, or several ranks without NCCL).
#include "launch/engine_setup.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "launch/model_flags.h"

namespace tessera::launch {
namespace {

using ::testing::HasSubstr;

TEST(ValidateBackendTest, CpuRunsEverything) {
  EngineFlags flags;
  EXPECT_TRUE(ValidateBackend(flags, 4).ok());
}

TEST(ValidateBackendTest, UnknownBackendsAreRefused) {
  EngineFlags flags;
  flags.backend = "rocm";
  const absl::Status s = ValidateBackend(flags, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("'rocm' is not cpu or cuda"));
}

TEST(ValidateBackendTest, AttentionKernelsAreNamedOrRefused) {
  EngineFlags flags;
  CLI::App app;
  AddEngineFlags(app, flags);
  app.parse("--attention-kernel simt", /*program_name_included=*/false);
  EXPECT_EQ(flags.attention_kernel, "simt");
  EXPECT_TRUE(ValidateBackend(flags, 1).ok());
  EXPECT_THROW(app.parse("--attention-kernel fast", /*program_name_included=*/false),
               CLI::ParseError);
  flags.attention_kernel = "fast";  // a caller that fills the struct itself
  const absl::Status s = ValidateBackend(flags, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(),
              HasSubstr("--attention-kernel: 'fast' is not auto, simt or tensor-cores"));
}

TEST(ValidateBackendTest, CudaRefusesWhatThisBuildLacksNamingIt) {
  EngineFlags flags;
  flags.backend = "cuda";
  const absl::Status one = ValidateBackend(flags, 1);
  if (absl::IsFailedPrecondition(one)) {  // a build without the CUDA backend
    EXPECT_THAT(one.message(), HasSubstr("built without the CUDA backend"));
    GTEST_SKIP() << one;
  }
  EXPECT_TRUE(one.ok()) << one;  // a one-rank mixed replica
  // Several ranks need NCCL for their TP/PP groups: accepted where it is built, else refused.
  const absl::Status tp = ValidateBackend(flags, 2);
  if (!tp.ok()) {
    EXPECT_EQ(tp.code(), absl::StatusCode::kFailedPrecondition) << tp;
    EXPECT_THAT(tp.message(), HasSubstr("built without it (TESSERA_WITH_NCCL=OFF)"));
  }
  flags.device = -1;
  const absl::Status device = ValidateBackend(flags, 1);
  EXPECT_EQ(device.code(), absl::StatusCode::kInvalidArgument) << device;
  EXPECT_THAT(device.message(), HasSubstr("--device -1 is negative"));
  flags.device = 0;
  // Making it where there is no GPU says so instead of failing later.
  auto backend = MakeRankBackend(flags, 1, 0);
  if (!backend.ok()) {
    EXPECT_EQ(backend.status().code(), absl::StatusCode::kUnavailable) << backend.status();
  }
}

// --cuda-graph-sizes and --enforce-eager as vLLM reads them.
TEST(GraphBatchSizesTest, OneSizeIsALadderSeveralAreTheListEagerIsNone) {
  EngineFlags flags;
  flags.max_num_seqs = 40;
  EXPECT_EQ(GraphBatchSizes(flags), (std::vector<int32_t>{1, 2, 4, 8, 16, 24, 32, 40}));
  flags.cuda_graph_sizes = {20};
  EXPECT_EQ(GraphBatchSizes(flags), (std::vector<int32_t>{1, 2, 4, 8, 16}));
  flags.cuda_graph_sizes = {3};
  EXPECT_EQ(GraphBatchSizes(flags), (std::vector<int32_t>{1, 2}));
  flags.cuda_graph_sizes = {64, 6, 6, 1};  // past --max-num-seqs dropped, sorted, once each
  EXPECT_EQ(GraphBatchSizes(flags), (std::vector<int32_t>{1, 6}));
  flags.max_num_batched_tokens = 4;  // a step holds at most this many decodes too
  flags.cuda_graph_sizes = {512};
  EXPECT_EQ(GraphBatchSizes(flags), (std::vector<int32_t>{1, 2, 4}));
  flags.enforce_eager = true;
  EXPECT_TRUE(GraphBatchSizes(flags).empty());
}

// Activations: f32 on the CPU always; on a GPU the weights' half type (the --dtype flag's, else
// the checkpoint's), f32 for f32 weights; the KV cache follows them unless --kv-cache-dtype says.
TEST(ComputeEngineLimitsTest, AGpuComputesInTheWeightsHalfTypeTheCpuInF32) {
  absl::StatusOr<model::ModelConfig> tiny = ModelConfigFromFlags(ModelShapeFlags{});
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  model::ModelConfig config = *tiny;
  config.torch_dtype = DataType::kBF16;
  EngineFlags flags;
  auto limits = ComputeEngineLimits(config, flags);
  ASSERT_TRUE(limits.ok()) << limits.status();
  EXPECT_EQ(limits->model.activation_dtype, DataType::kF32);
  EXPECT_EQ(limits->kv_cache_dtype, DataType::kF32);
  flags.backend = "cuda";
  limits = ComputeEngineLimits(config, flags);
  ASSERT_TRUE(limits.ok()) << limits.status();
  EXPECT_EQ(limits->model.activation_dtype, DataType::kBF16);
  EXPECT_EQ(limits->kv_cache_dtype, DataType::kBF16);
  flags.dtype = "float16";
  EXPECT_EQ(ComputeEngineLimits(config, flags)->model.activation_dtype, DataType::kF16);
  flags.dtype = "float32";
  EXPECT_EQ(ComputeEngineLimits(config, flags)->model.activation_dtype, DataType::kF32);
  flags.dtype = "auto";
  flags.kv_cache_dtype = "float32";
  limits = ComputeEngineLimits(config, flags);
  EXPECT_EQ(limits->model.activation_dtype, DataType::kBF16);
  EXPECT_EQ(limits->kv_cache_dtype, DataType::kF32);
}

// bench-kernels and bench-engine start from the same settings for a backend.
TEST(KernelBenchDefaultsTest, TheCpuComputesActivationsInF32AndRunsASmallerGrid) {
  const kernels::bench::KernelBenchOptions cpu = KernelBenchDefaults("cpu", DataType::kBF16);
  const kernels::bench::KernelBenchOptions gpu = KernelBenchDefaults("cuda", DataType::kBF16);
  EXPECT_EQ(cpu.dtype, DataType::kBF16);
  EXPECT_EQ(cpu.activation_dtype, DataType::kF32);
  EXPECT_EQ(gpu.activation_dtype, DataType::kBF16);
  EXPECT_LT(cpu.gemm_size, gpu.gemm_size);
  EXPECT_LT(cpu.copy_bytes, gpu.copy_bytes);
  // The grid on a GPU: batch 1 to 256, contexts 1k to 32k, a 4k-token prefill.
  EXPECT_EQ(gpu.batch_sizes.back(), 256);
  EXPECT_EQ(gpu.contexts.back(), 32768);
  EXPECT_EQ(gpu.prefill_tokens, std::vector<int64_t>{4096});
  EXPECT_LT(cpu.batch_sizes.back(), gpu.batch_sizes.back());
  EXPECT_TRUE(kernels::bench::ValidateKernelBenchOptions(cpu).ok());
  EXPECT_TRUE(kernels::bench::ValidateKernelBenchOptions(gpu).ok());
}

}  // namespace
}  // namespace tessera::launch
