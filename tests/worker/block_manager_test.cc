#include "worker/block_manager.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

namespace tessera::worker {
namespace {

using ::testing::ElementsAre;

std::vector<uint64_t> Chain(const std::vector<std::vector<int32_t>>& blocks, uint64_t extra = 0) {
  std::vector<uint64_t> hashes;
  uint64_t parent = kRootBlockHash;
  for (const auto& tokens : blocks) hashes.push_back(parent = BlockHash(parent, extra, tokens));
  return hashes;
}

TEST(BlockHashTest, ChainsOverParentTokensAndExtraKey) {
  const auto a = Chain({{1, 2}, {3, 4}});
  EXPECT_EQ(a, Chain({{1, 2}, {3, 4}}));
  EXPECT_NE(a[1], Chain({{1, 5}, {3, 4}})[1]);  // same block, another parent
  EXPECT_NE(a[0], Chain({{1, 2}}, CacheSaltKey("tenant"))[0]);
  EXPECT_EQ(CacheSaltKey(""), 0u);
  EXPECT_NE(BlockHash(kRootBlockHash, 0, std::vector<int32_t>{1, 2}),
            BlockHash(kRootBlockHash, 0, std::vector<int32_t>{2, 1}));
}

TEST(BlockManagerTest, RegisteredBlocksStayCachedAfterReleaseAndAreFoundAgain) {
  BlockManager m(8, /*enable_prefix_caching=*/true);
  const auto hashes = Chain({{1, 2}, {3, 4}, {5, 6}});
  auto blocks = m.Allocate(3);
  ASSERT_TRUE(blocks.ok());
  EXPECT_EQ(m.LookUp(hashes), 0);
  m.Register((*blocks)[0], hashes[0]);
  m.Register((*blocks)[1], hashes[1]);
  EXPECT_EQ(m.LookUp(hashes), 2);
  EXPECT_EQ(m.num_in_use(), 3);
  ASSERT_TRUE(m.Release(*blocks).ok());
  // The unregistered block is free; the two registered ones are cached.
  EXPECT_EQ(m.num_free(), 6);
  EXPECT_EQ(m.num_cached(), 2);
  EXPECT_EQ(m.num_in_use(), 0);
  EXPECT_EQ(m.num_available(), 8);
  ASSERT_TRUE(m.CheckInvariants().ok()) << m.CheckInvariants();
  EXPECT_EQ(m.LookUp(hashes), 2);
  EXPECT_EQ(m.CountEvictable(absl::MakeConstSpan(hashes).first(2)), 2);
  const auto again = m.AcquireCached(absl::MakeConstSpan(hashes).first(2));
  EXPECT_THAT(again, ElementsAre((*blocks)[0], (*blocks)[1]));
  EXPECT_EQ(m.num_cached(), 0);
  EXPECT_EQ(m.num_in_use(), 2);
  // Shared: a second sequence takes the same blocks.
  const auto shared = m.AcquireCached(absl::MakeConstSpan(hashes).first(1));
  EXPECT_EQ(m.references(shared[0]), 2);
  EXPECT_EQ(m.CountEvictable(absl::MakeConstSpan(hashes).first(2)), 0);
  ASSERT_TRUE(m.Release(shared).ok());
  ASSERT_TRUE(m.Release(again).ok());
  ASSERT_TRUE(m.CheckInvariants().ok()) << m.CheckInvariants();
}

TEST(BlockManagerTest, EvictsLeastRecentlyReleasedTailFirst) {
  BlockManager m(4, true);
  const auto a = Chain({{1}, {2}});
  const auto b = Chain({{7}, {8}});
  auto blocks_a = *m.Allocate(2);
  auto blocks_b = *m.Allocate(2);
  for (int i = 0; i < 2; ++i) {
    m.Register(blocks_a[i], a[i]);
    m.Register(blocks_b[i], b[i]);
  }
  ASSERT_TRUE(m.Release(blocks_a).ok());  // LRU order: a[1], a[0]
  ASSERT_TRUE(m.Release(blocks_b).ok());  // then b[1], b[0]
  EXPECT_EQ(m.num_free(), 0);
  auto one = m.Allocate(1);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ((*one)[0], blocks_a[1]);  // a's tail went first
  EXPECT_EQ(m.LookUp(a), 1);
  EXPECT_EQ(m.LookUp(b), 2);
  EXPECT_EQ(m.evictions(), 1);
  auto two = m.Allocate(2);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(m.LookUp(a), 0);
  EXPECT_EQ(m.LookUp(b), 1);
  EXPECT_EQ(m.Allocate(2).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(m.num_cached(), 1);  // a failed Allocate takes nothing
  ASSERT_TRUE(m.CheckInvariants().ok()) << m.CheckInvariants();
}

TEST(BlockManagerTest, DuplicateContentAndDoubleReleaseAreHandled) {
  BlockManager m(4, true);
  const auto h = Chain({{1, 2}});
  auto blocks = *m.Allocate(2);
  m.Register(blocks[0], h[0]);
  m.Register(blocks[1], h[0]);  // the same content computed twice: the second stays private
  ASSERT_TRUE(m.Release(blocks).ok());
  EXPECT_EQ(m.num_cached(), 1);
  EXPECT_EQ(m.num_free(), 3);
  const absl::Status twice = m.Release({blocks[1]});
  EXPECT_EQ(twice.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(m.Release({blocks[0]}).code(), absl::StatusCode::kFailedPrecondition);  // cached
  ASSERT_TRUE(m.CheckInvariants().ok()) << m.CheckInvariants();
}

TEST(BlockManagerTest, WithoutPrefixCachingNothingIsCached) {
  BlockManager m(4, /*enable_prefix_caching=*/false);
  const auto h = Chain({{1, 2}});
  auto blocks = *m.Allocate(1);
  m.Register(blocks[0], h[0]);
  EXPECT_EQ(m.LookUp(h), 0);
  ASSERT_TRUE(m.Release(blocks).ok());
  EXPECT_EQ(m.num_free(), 4);
  EXPECT_EQ(m.num_cached(), 0);
}

}  // namespace
}  // namespace tessera::worker
