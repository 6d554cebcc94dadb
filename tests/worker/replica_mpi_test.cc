// The replica tests with ranks as processes under `mpirun -np 4` (MPI communicators): TP=2 and
// PP=2 on two concurrent replicas of two ranks each (the world split in halves), and TP=2 x PP=2
// over the whole world. Greedy tokens must equal the transformers fixture's and logits must be
// within its tolerance. Every rank runs every test; gtest's result is per rank.
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "parallel/comm/mpi/mpi_runtime.h"
#include "tests/worker/replica_test_util.h"

namespace tessera::worker {
namespace {

using testing::CompareLogits;
using testing::GreedyBody;
using testing::LoadFixture;
using testing::LogitsBody;
using testing::ReplicaOptions;
using testing::Split;

parallel::MpiRuntime* g_mpi = nullptr;

// The communicator of this process's replica: the world for 4-rank splits, a half otherwise.
std::unique_ptr<parallel::Communicator> ReplicaComm(parallel::Communicator& world, int ranks) {
  if (ranks == world.size()) return nullptr;
  auto half = world.Split(world.rank() / ranks, world.rank() % ranks);
  EXPECT_TRUE(half.ok()) << half.status();
  return half.ok() ? *std::move(half) : nullptr;
}

class ReplicaMpiTest : public ::testing::TestWithParam<std::tuple<std::string, Split>> {
 protected:
  void SetUp() override {
    auto world = g_mpi->CreateWorld({.timeout = absl::Seconds(60)});
    ASSERT_TRUE(world.ok()) << world.status();
    world_ = *std::move(world);
    if (world_->size() != 4) GTEST_SKIP() << "run under mpirun -np 4";
  }
  std::unique_ptr<parallel::Communicator> world_;
};

TEST_P(ReplicaMpiTest, GreedyTokensAndLogitsMatchTransformers) {
  const auto& [name, split] = GetParam();
  auto f = LoadFixture(name);
  ASSERT_TRUE(f.ok()) << f.status();
  auto sub = ReplicaComm(*world_, split.tp * split.pp);
  parallel::Communicator& replica = sub ? *sub : *world_;
  auto backend = kernels::CreateCpuBackend({.num_threads = 1});
  ASSERT_TRUE(backend.ok());
  auto rank = CreateReplicaRank(f->config, *f->weights, **backend, replica, ReplicaOptions(split));
  ASSERT_TRUE(rank.ok()) << rank.status();

  std::vector<float> logits;
  ASSERT_TRUE(LogitsBody(*f, *rank, logits).ok());
  if (!logits.empty()) {
    EXPECT_EQ(CompareLogits(*f, logits), "") << split.name;
  }

  std::vector<RequestOutput> results;
  const absl::Status status = GreedyBody(*f, *rank, results, split.steps_in_flight);
  ASSERT_TRUE(status.ok()) << status;
  if (replica.rank() == 0) {
    ASSERT_EQ(results.size(), f->prompts.size());
    for (size_t i = 0; i < results.size(); ++i) {
      EXPECT_EQ(results[i].token_ids, f->prompts[i].greedy) << split.name << " prompt " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Splits, ReplicaMpiTest,
    ::testing::Combine(::testing::Values("llama_gqa", "qwen2_bias", "mistral", "qwen3_qknorm"),
                       ::testing::Values(Split{2, 1, {}, "tp2"}, Split{1, 2, {}, "pp2"},
                                         Split{2, 2, {}, "tp2pp2"},
                                         Split{1, 2, {}, "pp2_two_steps_in_flight", 0, 2},
                                         Split{2, 2, {}, "tp2pp2_two_steps_in_flight", 0, 2})),
    [](const auto& info) {
      return absl::StrCat(std::get<0>(info.param), "_", std::get<1>(info.param).name);
    });

}  // namespace
}  // namespace tessera::worker

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto mpi = tessera::parallel::MpiRuntime::Init();
  if (!mpi.ok()) {
    std::fprintf(stderr, "MPI: %s\n", mpi.status().ToString().c_str());
    return 1;
  }
  tessera::worker::g_mpi = mpi->get();
  // Only rank 0 prints gtest's progress; every rank's failures still fail the job.
  if ((*mpi)->world_rank() != 0) {
    delete ::testing::UnitTest::GetInstance()->listeners().Release(
        ::testing::UnitTest::GetInstance()->listeners().default_result_printer());
  }
  return RUN_ALL_TESTS();
}
