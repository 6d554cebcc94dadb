// RunOnGroup for the unit-test executable: "inproc" runs 4 threads; other backends are tested by
// their own executables.
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/comm/inproc/in_process_communicator.h"
#include "tests/parallel/comm/comm_test_harness.h"

namespace tessera::parallel::testing {

absl::Status RunOnGroup(absl::string_view backend, const GroupOptions& options,
                        const std::function<void(RankContext&)>& body) {
  constexpr int kRanks = 4;
  if (backend != "inproc") {
    return absl::UnavailableError(
        absl::StrCat("backend '", backend, "' runs in its own test executable"));
  }
  if (options.min_size > kRanks) {
    return absl::UnavailableError(absl::StrCat("needs ", options.min_size, " ranks"));
  }
  auto group = CreateInProcessGroup(kRanks, options.timeout);
  if (!group.ok()) return group.status();
  auto control = CreateInProcessGroup(kRanks, absl::Seconds(60));
  if (!control.ok()) return control.status();
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      std::unique_ptr<TestDevice> device = MakeCpuTestDevice();
      RankContext context{*(*group)[r], *(*control)[r], *device};
      body(context);
      // Peers still waiting on this rank fail at once instead of at their timeout.
      (*group)[r].reset();
      (*control)[r].reset();
    });
  }
  for (std::thread& thread : threads) thread.join();
  return absl::OkStatus();
}

}  // namespace tessera::parallel::testing
