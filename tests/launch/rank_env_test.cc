#include "launch/rank_env.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

namespace tessera::launch {
namespace {

using ::testing::HasSubstr;

GetEnv Env(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
}

TEST(RankEnvTest, DefaultsToASingleRank) {
  auto info = DiscoverRank({}, Env({}));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->rank, 0);
  EXPECT_EQ(info->world_size, 1);
  EXPECT_EQ(info->source, "default");
}

TEST(RankEnvTest, FlagsWinOverTheEnvironment) {
  auto info = DiscoverRank({.rank = 2, .world_size = 4},
                           Env({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "8"}}));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->rank, 2);
  EXPECT_EQ(info->world_size, 4);
  EXPECT_EQ(info->source, "flags");
}

TEST(RankEnvTest, ReadsOpenMpiBeforeSlurm) {
  auto info = DiscoverRank({}, Env({{"OMPI_COMM_WORLD_RANK", "3"},
                                    {"OMPI_COMM_WORLD_SIZE", "4"},
                                    {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                    {"SLURM_PROCID", "0"},
                                    {"SLURM_NTASKS", "2"}}));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->rank, 3);
  EXPECT_EQ(info->local_rank, 1);
  EXPECT_TRUE(info->launched_by_mpirun());
}

TEST(RankEnvTest, ReadsSlurmTorchrunAndLeaderWorkerSet) {
  auto slurm =
      DiscoverRank({}, Env({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"}}));
  ASSERT_TRUE(slurm.ok());
  EXPECT_EQ(slurm->source, "slurm");
  EXPECT_EQ(slurm->rank, 5);
  EXPECT_EQ(slurm->local_rank, 1);

  auto torchrun = DiscoverRank({}, Env({{"RANK", "1"},
                                        {"WORLD_SIZE", "2"},
                                        {"LOCAL_RANK", "1"},
                                        {"MASTER_ADDR", "10.0.0.1"},
                                        {"MASTER_PORT", "29500"}}));
  ASSERT_TRUE(torchrun.ok());
  EXPECT_EQ(torchrun->source, "torchrun");
  EXPECT_EQ(torchrun->leader_address, "10.0.0.1:29500");

  auto lws = DiscoverRank({}, Env({{"LWS_WORKER_INDEX", "2"},
                                   {"LWS_GROUP_SIZE", "4"},
                                   {"LWS_LEADER_ADDRESS", "pool-0.svc"}}));
  ASSERT_TRUE(lws.ok());
  EXPECT_EQ(lws->source, "lws");
  EXPECT_EQ(lws->rank, 2);
  EXPECT_EQ(lws->leader_address, "pool-0.svc");
}

TEST(RankEnvTest, RejectsMalformedAndOutOfRangeValues) {
  auto bad = DiscoverRank({}, Env({{"RANK", "one"}, {"WORLD_SIZE", "2"}}));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("RANK='one'"));
  auto range = DiscoverRank({}, Env({{"SLURM_PROCID", "4"}, {"SLURM_NTASKS", "4"}}));
  EXPECT_THAT(range.status().message(), HasSubstr("rank 4 of 4 (from slurm) is out of range"));
  auto half = DiscoverRank({.rank = 1}, Env({}));
  EXPECT_THAT(half.status().message(), HasSubstr("--rank and --world-size go together"));
}

}  // namespace
}  // namespace tessera::launch
