// PlanKvSegments: the gather/scatter list between two ranks' KV layouts, for equal and different
// tensor (head ranges) and pipeline (layer ranges) splits.
#include "worker/kv_migration.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tessera::worker {
namespace {

using ::testing::HasSubstr;

// A rank holding layers [l0, l1) and heads [h0, h1) of a model with 4-token blocks and head_dim 2
// in f32: 32 bytes per head per block. Regions are numbered base + 2 * layer (+1 for V).
KvRankLayout Rank(int l0, int l1, int h0, int h1, uint64_t base, int num_blocks = 16) {
  KvRankLayout r;
  r.layer_begin = l0;
  r.layer_end = l1;
  r.head_begin = h0;
  r.head_end = h1;
  r.block_size = 4;
  r.head_dim = 2;
  r.num_blocks = num_blocks;
  r.dtype = DataType::kF32;
  for (int l = l0; l < l1; ++l) {
    r.key_regions.push_back(base + 2 * static_cast<uint64_t>(l));
    r.value_regions.push_back(base + 2 * static_cast<uint64_t>(l) + 1);
  }
  return r;
}

TEST(KvMigrationTest, SameSplitMovesWholeBlocksAndMergesConsecutiveOnes) {
  const KvRankLayout src = Rank(0, 2, 0, 2, 100);
  const KvRankLayout dst = Rank(0, 2, 0, 2, 200);
  auto segments = PlanKvSegments(src, {3, 4, 9}, dst, {5, 6, 1}, 77);
  ASSERT_TRUE(segments.ok()) << segments.status();
  // Per layer and K/V: blocks 3,4 → 5,6 merge into one 128-byte segment; 9 → 1 is separate.
  ASSERT_EQ(segments->size(), 2u * 2u * 2u);
  const kvtransfer::Segment& s = (*segments)[0];
  EXPECT_EQ(s.local_region, 100u);
  EXPECT_EQ(s.remote_region, 200u);
  EXPECT_EQ(s.local_offset, 3u * 64u);
  EXPECT_EQ(s.remote_offset, 5u * 64u);
  EXPECT_EQ(s.length, 128u);
  EXPECT_EQ(s.tag, 77u);
  EXPECT_EQ((*segments)[1].length, 64u);
  uint64_t total = 0;
  for (const auto& seg : *segments) total += seg.length;
  EXPECT_EQ(total, 3u * 64u * 2u * 2u);  // blocks × block bytes × K,V × layers
}

TEST(KvMigrationTest, TensorParallelPrefillToOneDecodeRankSendsEachHeadRange) {
  // P TP=2 (heads [0,1) and [1,2)) → D TP=1 (heads [0,2)): each P rank fills half of each block.
  const KvRankLayout dst = Rank(0, 1, 0, 2, 200);
  auto lo = PlanKvSegments(Rank(0, 1, 0, 1, 100), {2}, dst, {7}, 1);
  auto hi = PlanKvSegments(Rank(0, 1, 1, 2, 300), {2}, dst, {7}, 1);
  ASSERT_TRUE(lo.ok() && hi.ok());
  ASSERT_EQ(lo->size(), 2u);
  ASSERT_EQ(hi->size(), 2u);
  EXPECT_EQ((*lo)[0].local_offset, 2u * 32u);
  EXPECT_EQ((*lo)[0].remote_offset, 7u * 64u);
  EXPECT_EQ((*hi)[0].remote_offset, 7u * 64u + 32u);
  EXPECT_EQ((*lo)[0].length, 32u);
}

TEST(KvMigrationTest, OneRankToTensorParallelDecodeSplitsHeads) {
  // P TP=1 → D TP=2: the second D rank gets heads [1,2) from the middle of each source block.
  auto to_second = PlanKvSegments(Rank(0, 1, 0, 2, 100), {4}, Rank(0, 1, 1, 2, 200), {0}, 1);
  ASSERT_TRUE(to_second.ok());
  ASSERT_EQ(to_second->size(), 2u);
  EXPECT_EQ((*to_second)[0].local_offset, 4u * 64u + 32u);
  EXPECT_EQ((*to_second)[0].remote_offset, 0u);
  EXPECT_EQ((*to_second)[0].length, 32u);
}

TEST(KvMigrationTest, PipelineStagesExchangeOnlySharedLayers) {
  // P PP=2 (layers [0,2) and [2,4)) → D TP=2 (all layers, half the heads each).
  auto first_stage = PlanKvSegments(Rank(0, 2, 0, 2, 100), {1}, Rank(0, 4, 0, 1, 200), {3}, 1);
  ASSERT_TRUE(first_stage.ok());
  ASSERT_EQ(first_stage->size(), 4u);  // layers 0 and 1, K and V
  EXPECT_EQ((*first_stage)[2].local_region, 102u);
  EXPECT_EQ((*first_stage)[2].remote_region, 202u);
  auto none = PlanKvSegments(Rank(2, 4, 0, 2, 100), {1}, Rank(0, 2, 0, 2, 200), {3}, 1);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST(KvMigrationTest, MismatchedGeometryIsRefused) {
  KvRankLayout dst = Rank(0, 1, 0, 2, 200);
  dst.block_size = 16;
  auto bad = PlanKvSegments(Rank(0, 1, 0, 2, 100), {1}, dst, {1}, 1);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("block_size 4 vs 16"));
  auto out_of_range = PlanKvSegments(Rank(0, 1, 0, 2, 100), {1}, Rank(0, 1, 0, 2, 200), {16}, 1);
  EXPECT_EQ(out_of_range.status().code(), absl::StatusCode::kInvalidArgument);
  auto uneven = PlanKvSegments(Rank(0, 1, 0, 2, 100), {1, 2}, Rank(0, 1, 0, 2, 200), {1}, 1);
  EXPECT_EQ(uneven.status().code(), absl::StatusCode::kInvalidArgument);
  KvRankLayout broken = Rank(0, 2, 0, 2, 100);
  broken.value_regions.pop_back();
  EXPECT_THAT(broken.Validate().message(), HasSubstr("value regions"));
}

}  // namespace
}  // namespace tessera::worker
