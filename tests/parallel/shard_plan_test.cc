// Layer splits of a pipeline: even, explicit, and balanced against the last stage's LM head.
#include "parallel/shard_plan.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace tessera::parallel {
namespace {

// Llama-3-8B's shape: a layer reads 218M weights, the LM head 525M (2.4 layers' worth).
model::ModelConfig Llama8B() {
  model::ModelConfig c;
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.num_hidden_layers = 32;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  c.vocab_size = 128256;
  return c;
}

// The CPU engine benchmark's model (docs/benchmarks.md): the LM head weighs 2.8 layers.
model::ModelConfig CpuBenchModel() {
  model::ModelConfig c;
  c.hidden_size = 1024;
  c.intermediate_size = 2816;
  c.num_hidden_layers = 8;
  c.num_attention_heads = 16;
  c.num_key_value_heads = 8;
  c.head_dim = 64;
  c.vocab_size = 32000;
  return c;
}

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
