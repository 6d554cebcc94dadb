// Layer splits of a pipeline: even, explicit, and balanced against the last stage's LM head.
#include "parallel/shard_plan.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace tessera::parallel {
namespace {

model::ModelConfig Shape(int64_t hidden, int64_t intermediate, int64_t layers, int64_t heads,
                         int64_t kv_heads, int64_t head_dim, int64_t vocab) {
  model::ModelConfig c;
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = head_dim;
  c.vocab_size = vocab;
  return c;
}

// Llama-3-8B's shape: a layer reads 218M weights, the LM head 525M (2.4 layers' worth).
model::ModelConfig Llama8B() { return Shape(4096, 14336, 32, 32, 8, 128, 128256); }

// The CPU engine benchmark's model (docs/benchmarks.md): the LM head weighs 2.8 layers.
model::ModelConfig CpuBenchModel() { return Shape(1024, 2816, 8, 16, 8, 64, 32000); }

TEST(EvenLayerSplitTest, EarlierStagesTakeTheRemainder) {
  model::ModelConfig c = Llama8B();
  EXPECT_EQ(EvenLayerSplit(c, 1), (std::vector<int64_t>{32}));
  EXPECT_EQ(EvenLayerSplit(c, 2), (std::vector<int64_t>{16, 16}));
  c.num_hidden_layers = 10;
  EXPECT_EQ(EvenLayerSplit(c, 4), (std::vector<int64_t>{3, 3, 2, 2}));
}

TEST(BalancedLayerSplitTest, TheLastStageGivesUpLayersForTheLmHead) {
  // 8 layers + 2.8 for the head over 2 stages: 5 and 3 (+2.8); the measured best split there.
  EXPECT_EQ(BalancedLayerSplit(CpuBenchModel(), 2), (std::vector<int64_t>{5, 3}));
  // 32 + 2.4 over 2: 17 and 15 (+2.4) = 17.4, against 18.4 for 16 and 16.
  EXPECT_EQ(BalancedLayerSplit(Llama8B(), 2), (std::vector<int64_t>{17, 15}));
  // Over 4: 9, 9, 8 and 6 (+2.4); 5 on the last stage costs as much (9) but is less even.
  EXPECT_EQ(BalancedLayerSplit(Llama8B(), 4), (std::vector<int64_t>{9, 9, 8, 6}));
}

TEST(BalancedLayerSplitTest, EveryStageKeepsALayerAndTheSumIsTheModel) {
  model::ModelConfig c = Llama8B();
  c.num_hidden_layers = 4;
  EXPECT_EQ(BalancedLayerSplit(c, 4), (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(BalancedLayerSplit(c, 1), (std::vector<int64_t>{4}));
  c.num_hidden_layers = 3;
  c.vocab_size = 1'000'000;  // the head outweighs everything: the last stage keeps one layer
  EXPECT_EQ(BalancedLayerSplit(c, 2), (std::vector<int64_t>{2, 1}));
  for (int pp = 1; pp <= 32; ++pp) {
    const std::vector<int64_t> split = BalancedLayerSplit(Llama8B(), pp);
    ASSERT_EQ(split.size(), static_cast<size_t>(pp));
    int64_t total = 0;
    for (const int64_t n : split) {
      EXPECT_GE(n, 1);
      total += n;
    }
    EXPECT_EQ(total, 32);
  }
}

TEST(BalancedLayerSplitTest, ATinyHeadKeepsTheEvenSplit) {
  model::ModelConfig c = Llama8B();
  c.vocab_size = 8;
  EXPECT_EQ(BalancedLayerSplit(c, 2), (std::vector<int64_t>{16, 16}));
  EXPECT_EQ(BalancedLayerSplit(c, 3), EvenLayerSplit(c, 3));
}

}  // namespace
}  // namespace tessera::parallel
