// Which PagedAttention kernel the CUDA backend takes (PagedAttentionTakesTensorCores): host logic,
// checked without a GPU. The conformance suites give the same answers on either kernel, so only
// this shows that the engine's prefill in bf16 really reaches the tensor-core tile.
#include <cstdint>

#include <gtest/gtest.h>

#include "kernels/cuda/cuda_kernels.h"

namespace tessera::kernels::cuda {
namespace {

// A prefill of Llama-3-8B's attention as the engine lays it out: q a column range of the fused
// QKV projection ([tokens, 32 + 2 x 8 heads, 128]), the output [tokens, 32, 128], a bf16 cache of
// [blocks, 8, 16, 128]; an H100's limits. No pointer is read.
struct EngineLayout {
  alignas(256) static inline unsigned char memory[1024];
  PagedAttentionArgs args{};
  DeviceLimits limits{};
  EngineLayout() {
    const int64_t d = 128, q_heads = 32, kv_heads = 8, block = 16;
    args.query = memory;
    args.query_stride0 = (q_heads + 2 * kv_heads) * d;
    args.query_stride1 = d;
    args.output = memory + 256;
    args.output_stride0 = q_heads * d;
    args.output_stride1 = d;
    args.type = ElemType::kBF16;
    args.key_cache = memory + 512;
    args.key_layout = {kv_heads * block * d, block * d, d};
    args.value_cache = memory + 768;
    args.value_layout = args.key_layout;
    args.cache_type = ElemType::kBF16;
    args.num_seqs = 2;
    args.tokens = 300;  // a prefill and a decode
    args.q_heads = q_heads;
    args.kv_heads = kv_heads;
    args.head_dim = d;
    args.block_size = block;
    limits.multiprocessors = 132;
    limits.max_shared_bytes = 227 * 1024;
    limits.compute_major = 9;
  }
  bool TakesTensorCores() const { return PagedAttentionTakesTensorCores(args, limits); }
};

TEST(CudaAttentionChoiceTest, TheEnginesHalfPrefillTakesTensorCores) {
  EngineLayout e;
  EXPECT_TRUE(e.TakesTensorCores());
  e.args.type = e.args.cache_type = ElemType::kF16;
  EXPECT_TRUE(e.TakesTensorCores());
  for (int64_t d : {32, 64}) {
    EngineLayout other;
    other.args.head_dim = other.args.query_stride1 = other.args.output_stride1 = d;
    other.args.key_layout = other.args.value_layout = {8 * 16 * d, 16 * d, d};
    EXPECT_TRUE(other.TakesTensorCores()) << "head_dim " << d;
  }
}

TEST(CudaAttentionChoiceTest, DecodeBatchesTakeTheSimtKernelUnlessAsked) {
  EngineLayout e;
  e.args.tokens = e.args.num_seqs;  // one query row a sequence
  EXPECT_FALSE(e.TakesTensorCores());
  e.limits.attention = CudaAttentionKernel::kTensorCores;
  EXPECT_TRUE(e.TakesTensorCores());
  e.args.tokens = 300;
  e.limits.attention = CudaAttentionKernel::kSimt;
  EXPECT_FALSE(e.TakesTensorCores());
}

TEST(CudaAttentionChoiceTest, WhatTheTileCannotRunStaysOnSimt) {
  const auto refused = [](auto change) {
    EngineLayout e;
    e.limits.attention = CudaAttentionKernel::kTensorCores;  // even when asked
    change(e);
    return !e.TakesTensorCores();
  };
  EXPECT_TRUE(refused([](EngineLayout& e) { e.args.type = e.args.cache_type = ElemType::kF32; }));
  EXPECT_TRUE(refused([](EngineLayout& e) { e.args.cache_type = ElemType::kF16; }));  // mixed
  EXPECT_TRUE(refused([](EngineLayout& e) { e.args.head_dim = 96; }));
  EXPECT_TRUE(refused([](EngineLayout& e) { e.limits.compute_major = 7; }));
  EXPECT_TRUE(refused([](EngineLayout& e) { e.limits.max_shared_bytes = 48 * 1024; }));
  EXPECT_TRUE(refused([](EngineLayout& e) { e.args.query_stride0 += 1; }));
  EXPECT_TRUE(refused(
      [](EngineLayout& e) { e.args.output = static_cast<unsigned char*>(e.args.output) + 2; }));
  EXPECT_TRUE(refused([](EngineLayout& e) { e.args.key_layout.stride2 = 132; }));
  EXPECT_TRUE(refused([](EngineLayout& e) {
    e.args.value_cache = static_cast<const unsigned char*>(e.args.value_cache) + 8;
  }));
}

}  // namespace
}  // namespace tessera::kernels::cuda
