// kernels/ops.cc rejects bad params before any backend runs: one test per class of mistake,
// each showing the message a caller gets. Runs on the CPU backend; the checks are shared.
#include <cstdint>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/ops.h"

namespace tessera::kernels {
namespace {

using ::testing::HasSubstr;

class OpsValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto backend = CreateCpuBackend({});
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
  }

  // Host memory is device memory on the CPU backend.
  MutableTensorView F32(Shape shape) { return Make(DataType::kF32, std::move(shape)); }
  MutableTensorView Make(DataType dtype, Shape shape) {
    storage_.emplace_back(static_cast<size_t>(NumElements(shape)) * DataTypeSize(dtype) + 64);
    return MutableTensorView(storage_.back().data(), dtype, std::move(shape));
  }

  MatmulParams GoodMatmul() {
    MatmulParams p;
    p.input = F32({3, 64});
    p.weight = Make(DataType::kBF16, {32, 64});
    p.output = F32({3, 32});
    return p;
  }

  PagedAttentionParams GoodAttention() {
    PagedAttentionParams p;
    p.query = F32({3, 8, 16});
    p.key_cache = Make(DataType::kBF16, {4, 2, 4, 16});
    p.value_cache = Make(DataType::kBF16, {4, 2, 4, 16});
    p.block_tables = Make(DataType::kI32, {2, 2});
    p.query_start = Make(DataType::kI32, {3});
    p.seq_lens = Make(DataType::kI32, {2});
    p.output = F32({3, 8, 16});
    p.scale = 0.25f;
    auto* tables = static_cast<int32_t*>(const_cast<void*>(p.block_tables.data()));
    tables[0] = 3, tables[1] = 1, tables[2] = 0, tables[3] = 2;
    auto* starts = static_cast<int32_t*>(const_cast<void*>(p.query_start.data()));
    starts[0] = 0, starts[1] = 2, starts[2] = 3;
    auto* lens = static_cast<int32_t*>(const_cast<void*>(p.seq_lens.data()));
    lens[0] = 6, lens[1] = 8;
    return p;
  }

  std::unique_ptr<Backend> backend_;
  CpuStream stream_;
  std::vector<std::vector<char>> storage_;
};

#define EXPECT_INVALID(expr, substring)                                     \
  do {                                                                      \
    const absl::Status status = (expr);                                     \
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status; \
    EXPECT_THAT(std::string(status.message()), HasSubstr(substring));       \
  } while (false)

TEST_F(OpsValidationTest, GoodParamsPass) {
  EXPECT_TRUE(Matmul(*backend_, GoodMatmul(), stream_).ok());
  const absl::Status status = PagedAttention(*backend_, GoodAttention(), stream_);
  EXPECT_TRUE(status.ok()) << status;
}

TEST_F(OpsValidationTest, WrongDtype) {
  MatmulParams p = GoodMatmul();
  p.input = Make(DataType::kI32, {3, 64});
  EXPECT_INVALID(Matmul(*backend_, p, stream_),
                 "Matmul: field input expected dtype f32, got i32 (i32[3, 64]@cpu)");
  p = GoodMatmul();
  p.weight = Make(DataType::kI8, {32, 64});
  EXPECT_INVALID(Matmul(*backend_, p, stream_),
                 "Matmul: field weight expected dtype f32, f16 or bf16, got i8");
  PagedAttentionParams a = GoodAttention();
  a.seq_lens = Make(DataType::kI64, {2});
  EXPECT_INVALID(PagedAttention(*backend_, a, stream_),
                 "PagedAttention: field seq_lens expected dtype i32, got i64");
  KvWriteParams k;
  k.key = F32({2, 2, 16});
  k.value = F32({2, 2, 16});
  k.slot_mapping = Make(DataType::kI32, {2});
  k.key_cache = Make(DataType::kBF16, {4, 2, 4, 16});
  k.value_cache = Make(DataType::kBF16, {4, 2, 4, 16});
  EXPECT_INVALID(KvWrite(*backend_, k, stream_),
                 "KvWrite: field slot_mapping expected dtype i64, got i32");
  k.slot_mapping = Make(DataType::kI64, {2});
  k.value_cache = Make(DataType::kF16, {4, 2, 4, 16});
  EXPECT_INVALID(KvWrite(*backend_, k, stream_),
                 "KvWrite: field value_cache expected dtype bf16 (that of key_cache), got f16");
}

TEST_F(OpsValidationTest, WrongRankOrMissingTensor) {
  MatmulParams p = GoodMatmul();
  p.input = F32({3, 1, 64});
  EXPECT_INVALID(Matmul(*backend_, p, stream_), "Matmul: field input expected rank 2, got rank 3");
  p = GoodMatmul();
  p.output = MutableTensorView();
  EXPECT_INVALID(Matmul(*backend_, p, stream_),
                 "Matmul: field output expected a tensor, got an empty view");
}

TEST_F(OpsValidationTest, MismatchedShapes) {
  MatmulParams p = GoodMatmul();
  p.weight = Make(DataType::kBF16, {32, 48});
  EXPECT_INVALID(Matmul(*backend_, p, stream_),
                 "Matmul: field weight expected shape [n, 64] (k = input.cols), got [32, 48]");
  p = GoodMatmul();
  p.output = F32({3, 31});
  EXPECT_INVALID(Matmul(*backend_, p, stream_),
                 "Matmul: field output expected shape [3, 32] ([input.rows, weight.rows]), got "
                 "[3, 31]");
  PagedAttentionParams a = GoodAttention();
  a.query = F32({3, 7, 16});
  a.output = F32({3, 7, 16});
  EXPECT_INVALID(PagedAttention(*backend_, a, stream_),
                 "PagedAttention: field query expected a multiple of kv_heads = 2 heads");
  a = GoodAttention();
  a.query = F32({3, 8, 32});
  a.output = F32({3, 8, 32});
  EXPECT_INVALID(PagedAttention(*backend_, a, stream_),
                 "PagedAttention: field key_cache expected head_dim 32 (that of query), got "
                 "[4, 2, 4, 16]");
  RopeParams r;
  r.query = F32({2, 4, 16});
  r.key = F32({2, 2, 16});
  r.positions = Make(DataType::kI32, {2});
  r.inv_freq = F32({9});
  EXPECT_INVALID(Rope(*backend_, r, stream_),
                 "Rope: field inv_freq expected at most head_dim / 2 = 8 elements (rotary_dim <= "
                 "head_dim), got [9]");
  RmsNormParams n;
  n.input = F32({2, 10});
  n.output = F32({2, 10});
  n.weight = Make(DataType::kBF16, {12});
  EXPECT_INVALID(RmsNorm(*backend_, n, stream_),
                 "RmsNorm: field weight expected shape [10] ([input.hidden]), got [12]");
}

TEST_F(OpsValidationTest, NonContiguousLastDimension) {
  MatmulParams p = GoodMatmul();
  MutableTensorView wide = F32({3, 128});
  p.input = MutableTensorView(wide.data(), DataType::kF32, {3, 64}, {128, 2}, Device::Cpu());
  EXPECT_INVALID(Matmul(*backend_, p, stream_),
                 "Matmul: field input expected a contiguous last dimension (stride 1), got "
                 "strides [128, 2]");
  p = GoodMatmul();
  MutableTensorView weights = Make(DataType::kBF16, {32, 80});
  p.weight = MutableTensorView(weights.data(), DataType::kBF16, {32, 64}, {80, 1}, Device::Cpu());
  EXPECT_INVALID(Matmul(*backend_, p, stream_),
                 "Matmul: field weight expected a contiguous tensor (strides [64, 1]), got "
                 "strides [80, 1]");
}

TEST_F(OpsValidationTest, AliasingOutput) {
  MatmulParams p = GoodMatmul();
  MutableTensorView shared = F32({3, 64});
  p.input = shared;
  p.output = MutableTensorView(shared.data(), DataType::kF32, {3, 32}, Device::Cpu());
  EXPECT_INVALID(Matmul(*backend_, p, stream_),
                 "Matmul: field output expected memory disjoint from input, got overlapping "
                 "views");
  // Column ranges of one fused buffer do not overlap: q and k of a fused QKV are fine for Rope,
  // but the same columns twice are not.
  MutableTensorView qkv = F32({2, 8 * 16});
  RopeParams r;
  r.query = MutableTensorView(qkv.data(), DataType::kF32, {2, 4, 16}, {128, 16, 1}, Device::Cpu());
  r.key = MutableTensorView(static_cast<float*>(qkv.data()) + 64, DataType::kF32, {2, 2, 16},
                            {128, 16, 1}, Device::Cpu());
  r.positions = Make(DataType::kI32, {2});
  r.inv_freq = F32({8});
  EXPECT_TRUE(Rope(*backend_, r, stream_).ok());
  r.key = MutableTensorView(static_cast<float*>(qkv.data()) + 48, DataType::kF32, {2, 2, 16},
                            {128, 16, 1}, Device::Cpu());
  EXPECT_INVALID(Rope(*backend_, r, stream_),
                 "Rope: field query expected memory disjoint from key, got overlapping views");
  // An output whose rows overlap each other.
  p = GoodMatmul();
  p.output =
      MutableTensorView(F32({3, 32}).data(), DataType::kF32, {3, 32}, {16, 1}, Device::Cpu());
  EXPECT_INVALID(Matmul(*backend_, p, stream_),
                 "Matmul: field output expected a layout whose elements do not overlap");
}

TEST_F(OpsValidationTest, WrongDevice) {
  MatmulParams p = GoodMatmul();
  p.weight = MutableTensorView(Make(DataType::kBF16, {32, 64}).data(), DataType::kBF16, {32, 64},
                               Device::Cuda(0));
  EXPECT_INVALID(Matmul(*backend_, p, stream_),
                 "Matmul: field weight expected device cpu (backend cpu), got cuda:0");
}

TEST_F(OpsValidationTest, BadScalars) {
  RmsNormParams n;
  const MutableTensorView x = F32({2, 10});
  n.input = x;
  n.output = x;
  n.weight = F32({10});
  n.epsilon = -1.0f;
  EXPECT_INVALID(RmsNorm(*backend_, n, stream_), "RmsNorm: epsilon expected finite and >= 0");
  EmbeddingParams e;
  e.ids = Make(DataType::kI32, {2});
  e.table = F32({5, 4});
  e.output = F32({2, 4});
  e.row_offset = -3;
  EXPECT_INVALID(Embedding(*backend_, e, stream_), "Embedding: row_offset expected >= 0, got -3");
}

// Values in memory are the backend's to check; the CPU backend rejects them before any write.
TEST_F(OpsValidationTest, CpuRejectsBadBatchLayout) {
  PagedAttentionParams a = GoodAttention();
  static_cast<int32_t*>(const_cast<void*>(a.block_tables.data()))[1] = 4;
  EXPECT_INVALID(PagedAttention(*backend_, a, stream_),
                 "PagedAttention: block_tables[0, 1] expected in [0, 4), got 4");
  a = GoodAttention();
  static_cast<int32_t*>(const_cast<void*>(a.seq_lens.data()))[1] = 9;
  EXPECT_INVALID(PagedAttention(*backend_, a, stream_),
                 "PagedAttention: sequence 1 expected at most 8 tokens");
  a = GoodAttention();
  static_cast<int32_t*>(const_cast<void*>(a.query_start.data()))[2] = 2;
  EXPECT_INVALID(PagedAttention(*backend_, a, stream_),
                 "PagedAttention: query_start expected to run from 0 to tokens = 3");
  KvWriteParams k;
  k.key = F32({1, 2, 16});
  k.value = F32({1, 2, 16});
  k.slot_mapping = Make(DataType::kI64, {1});
  *static_cast<int64_t*>(const_cast<void*>(k.slot_mapping.data())) = 16;
  k.key_cache = Make(DataType::kBF16, {4, 2, 4, 16});
  k.value_cache = Make(DataType::kBF16, {4, 2, 4, 16});
  EXPECT_INVALID(KvWrite(*backend_, k, stream_),
                 "KvWrite: slot_mapping[0] expected < num_blocks * block_size = 16");
}

// A backend whose table is empty: validation passes, dispatch reports kUnimplemented.
class EmptyBackend final : public Backend {
 public:
  EmptyBackend() : Backend(OpTable{}) {}
  absl::string_view name() const override { return "empty"; }
  Device device() const override { return Device::Cpu(); }
  absl::StatusOr<DeviceBuffer> Allocate(size_t) override { return absl::UnimplementedError(""); }
  absl::Status CopyToDevice(const void*, void*, size_t, Stream&) override {
    return absl::UnimplementedError("");
  }
  absl::Status CopyToHost(const void*, void*, size_t, Stream&) override {
    return absl::UnimplementedError("");
  }
  absl::Status CopyOnDevice(const void*, void*, size_t, Stream&) override {
    return absl::UnimplementedError("");
  }
  absl::Status Memset(void*, int, size_t, Stream&) override { return absl::UnimplementedError(""); }
  absl::StatusOr<std::unique_ptr<Stream>> CreateStream() override {
    return absl::UnimplementedError("");
  }
};

TEST_F(OpsValidationTest, MissingOpIsUnimplemented) {
  EmptyBackend empty;
  const absl::Status status = Matmul(empty, GoodMatmul(), stream_);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(status.message(), "Matmul: not implemented by the empty backend");
}

}  // namespace
}  // namespace tessera::kernels
