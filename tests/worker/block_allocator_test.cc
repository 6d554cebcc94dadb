#include "worker/block_allocator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace tessera::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(BlockAllocatorTest, AllocatesLowestIdsFirst) {
  BlockAllocator allocator(4);
  auto blocks = allocator.Allocate(3);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_THAT(*blocks, ElementsAre(0, 1, 2));
  EXPECT_EQ(allocator.num_free(), 1);
}

TEST(BlockAllocatorTest, RefusesMoreThanFreeAndAllocatesNothing) {
  BlockAllocator allocator(4);
  ASSERT_TRUE(allocator.Allocate(3).ok());
  auto blocks = allocator.Allocate(2);
  EXPECT_EQ(blocks.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(blocks.status().message(), HasSubstr("2 blocks needed, 1 of 4 free"));
  EXPECT_EQ(allocator.num_free(), 1);
}

TEST(BlockAllocatorTest, SharedBlockFreedAfterLastRelease) {
  BlockAllocator allocator(2);
  auto blocks = allocator.Allocate(1);
  ASSERT_TRUE(blocks.ok());
  const int32_t b = (*blocks)[0];
  ASSERT_TRUE(allocator.AddRef(b).ok());
  EXPECT_EQ(allocator.refcount(b), 2);
  ASSERT_TRUE(allocator.Release(b).ok());
  EXPECT_EQ(allocator.num_free(), 1);
  ASSERT_TRUE(allocator.Release(b).ok());
  EXPECT_EQ(allocator.num_free(), 2);
}

TEST(BlockAllocatorTest, DoubleFreeIsAnErrorAndKeepsAccounting) {
  BlockAllocator allocator(3);
  auto blocks = allocator.Allocate(1);
  ASSERT_TRUE(blocks.ok());
  ASSERT_TRUE(allocator.Release((*blocks)[0]).ok());
  const absl::Status again = allocator.Release((*blocks)[0]);
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(allocator.num_free(), 3);
  EXPECT_EQ(allocator.Release(99).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(allocator.AddRef(-1).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(BlockAllocatorTest, ReleaseAllReturnsEveryBlock) {
  BlockAllocator allocator(8);
  auto a = allocator.Allocate(5);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(allocator.ReleaseAll(*a).ok());
  EXPECT_EQ(allocator.num_free(), 8);
}

}  // namespace
}  // namespace tessera::worker
