// RunOnGroup and main() for the MPI test executable, launched as
//   mpirun -np 4 comm_conformance_mpi_test
// Each process is one rank: the body runs once here, over a fresh duplicate of MPI_COMM_WORLD.
// Only rank 0 prints the usual gtest output; the other ranks print failures only.
#include <cstdio>
#include <memory>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "parallel/comm/mpi/mpi_runtime.h"
#include "tests/parallel/comm/comm_test_harness.h"
#include "tests/parallel/comm/mpi_test_env.h"

namespace tessera::parallel::testing {
namespace {

MpiRuntime* g_runtime = nullptr;  // set by main() for the whole run

// Prints failed assertions of a non-zero rank, prefixed with the rank.
class FailurePrinter final : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
  }

 private:
  int rank_;
};

}  // namespace

MpiRuntime* TestMpiRuntime() { return g_runtime; }

absl::Status RunOnGroup(absl::string_view backend, const GroupOptions& options,
                        const std::function<void(RankContext&)>& body) {
  if (backend != "mpi") {
    return absl::UnavailableError(
        absl::StrCat("backend '", backend, "' runs in its own test executable"));
  }
  if (g_runtime == nullptr || g_runtime->world_size() < 2) {
    return absl::UnavailableError("not launched under mpirun with at least 2 processes");
  }
  if (options.min_size > g_runtime->world_size()) {
    return absl::UnavailableError(absl::StrCat("needs ", options.min_size, " ranks"));
  }
  MpiCommunicatorOptions comm_options;
  comm_options.timeout = options.timeout;
  auto comm = g_runtime->CreateWorld(comm_options);
  if (!comm.ok()) return comm.status();
  auto control = g_runtime->CreateWorld(MpiCommunicatorOptions{absl::Seconds(60)});
  if (!control.ok()) return control.status();
  std::unique_ptr<TestDevice> device = MakeCpuTestDevice();
  RankContext context{**comm, **control, *device};
  body(context);
  return absl::OkStatus();
}

}  // namespace tessera::parallel::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto runtime = tessera::parallel::MpiRuntime::Init();
  if (!runtime.ok()) {
    std::fprintf(stderr, "MpiRuntime::Init: %s\n", runtime.status().ToString().c_str());
    return 1;
  }
  tessera::parallel::testing::g_runtime = runtime->get();
  const int rank = (*runtime)->world_rank();
  if (rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new tessera::parallel::testing::FailurePrinter(rank));
  }
  const int result = RUN_ALL_TESTS();
  tessera::parallel::testing::g_runtime = nullptr;
  runtime->reset();  // MPI_Finalize
  return result;
}
