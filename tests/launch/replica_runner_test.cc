// HostLocalIndex: which GPU of its host a replica's rank takes (its pool's first device plus this
// index), over ranks as threads that claim the host names of a multi-node layout.
#include "launch/replica_runner.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "launch/model_flags.h"
#include "parallel/comm/inproc/in_process_communicator.h"

namespace tessera::launch {
namespace {

std::vector<int> Indexes(const std::vector<std::string>& hosts) {
  const int n = static_cast<int>(hosts.size());
  auto group = parallel::CreateInProcessGroup(n, absl::Seconds(10));
  EXPECT_TRUE(group.ok()) << group.status();
  std::vector<int> index(n, -1);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      absl::StatusOr<int> i = HostLocalIndex(*(*group)[r], hosts[r]);
      EXPECT_TRUE(i.ok()) << i.status();
      index[r] = i.value_or(-1);
    });
  }
  for (std::thread& t : threads) t.join();
  return index;
}

// --pp-layers: empty (even), a list, or auto (the LM head counted); mistakes named, never fatal.
TEST(LayersPerStageTest, EvenAListOrBalanced) {
  // The CPU engine benchmark's model: 8 layers, its LM head worth 2.8 of them.
  ModelShapeFlags shape;
  shape.hidden_size = 1024;
  shape.intermediate_size = 2816;
  shape.num_layers = 8;
  shape.num_heads = 16;
  shape.num_kv_heads = 8;
  shape.vocab_size = 32000;
  const absl::StatusOr<model::ModelConfig> config = ModelConfigFromFlags(shape);
  ASSERT_TRUE(config.ok()) << config.status();
  const model::ModelConfig& c = *config;
  ReplicaFlags flags;
  flags.pipeline_parallel_size = 2;
  EXPECT_EQ(*LayersPerStage(c, flags), (std::vector<int64_t>{4, 4}));
  flags.pp_layers = "6,2";
  EXPECT_EQ(*LayersPerStage(c, flags), (std::vector<int64_t>{6, 2}));
  flags.pp_layers = "auto";
  EXPECT_EQ(*LayersPerStage(c, flags), (std::vector<int64_t>{5, 3}));
  flags.pp_layers = "5,x";
  EXPECT_EQ(LayersPerStage(c, flags).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(LayersPerStage(c, flags).status().message().find("'x'"), absl::string_view::npos);
  flags.pp_layers = "5,4";
  EXPECT_NE(LayersPerStage(c, flags).status().message().find("adds up to 9"),
            absl::string_view::npos);
  flags.pp_layers = "auto";
  flags.pipeline_parallel_size = 9;  // more stages than layers: an error, not a failed check
  EXPECT_EQ(LayersPerStage(c, flags).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HostLocalIndexTest, OneHostCountsLikeTheReplicaRank) {
  EXPECT_EQ(Indexes({"node1", "node1", "node1", "node1"}), (std::vector<int>{0, 1, 2, 3}));
}

TEST(HostLocalIndexTest, EachHostOfAPipelineCountsFromZero) {
  // PP = 2 across two 4-GPU nodes (TP 4 inside each): GPUs 0-3 on each, not 4-7 on the second.
  EXPECT_EQ(Indexes({"node1", "node1", "node1", "node1", "node2", "node2", "node2", "node2"}),
            (std::vector<int>{0, 1, 2, 3, 0, 1, 2, 3}));
  // Ranks interleaved over hosts count per host, in replica rank order; a name that only starts
  // like another is another host.
  EXPECT_EQ(Indexes({"a", "b", "a", "ab", "b"}), (std::vector<int>{0, 0, 1, 0, 1}));
}

}  // namespace
}  // namespace tessera::launch
