// MPI-only tests (run by comm_conformance_mpi_test under mpirun): the MPI-bootstrapped store and
// MpiRuntime.
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "parallel/comm/mpi/mpi_bootstrap_store.h"
#include "parallel/comm/mpi/mpi_runtime.h"
#include "tests/parallel/comm/mpi_test_env.h"
#include "tests/parallel/comm/test_status.h"

namespace tessera::parallel::testing {
namespace {

TEST(MpiRuntimeTest, SecondInitDoesNotOwnMpi) {
  MpiRuntime* runtime = TestMpiRuntime();
  ASSERT_NE(runtime, nullptr);
  EXPECT_TRUE(runtime->owns_mpi());
  EXPECT_GE(runtime->thread_level(), MPI_THREAD_FUNNELED);
  auto second = MpiRuntime::Init();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE((*second)->owns_mpi());
  EXPECT_EQ((*second)->world_rank(), runtime->world_rank());
  EXPECT_EQ((*second)->world_size(), runtime->world_size());
}

TEST(MpiBootstrapStoreTest, EveryRankSeesEveryRanksValue) {
  MpiRuntime* runtime = TestMpiRuntime();
  ASSERT_NE(runtime, nullptr);
  if (runtime->world_size() < 2) GTEST_SKIP() << "not launched under mpirun";
  auto world = runtime->CreateWorld();
  ASSERT_TRUE(world.ok()) << world.status();
  auto store = CreateMpiBootstrappedStore(**world);
  ASSERT_TRUE(store.ok()) << store.status();
  const int rank = (*world)->rank();
  COMM_ASSERT_OK((*store)->Set("rank/" + std::to_string(rank), "value-" + std::to_string(rank)));
  for (int peer = 0; peer < (*world)->size(); ++peer) {
    auto value = (*store)->Get("rank/" + std::to_string(peer), absl::Seconds(30));
    ASSERT_TRUE(value.ok()) << value.status();
    EXPECT_EQ(*value, "value-" + std::to_string(peer));
  }
  auto missing = (*store)->Get("never/set", absl::Milliseconds(50));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kDeadlineExceeded) << missing.status();
  // Rank 0 hosts the server: nobody leaves before everyone is done with it.
  CpuStream stream;
  COMM_EXPECT_OK((*world)->Barrier(stream));
}

}  // namespace
}  // namespace tessera::parallel::testing
