// RunOnGroup for the Gloo test executable: "gloo" runs 4 ranks as threads of this process, each
// with its own GlooCommunicator (its own TCP device on loopback) and its own GrpcStore client of
// one StoreServer on a loopback port, as the processes of a replica do (rank 0 hosts the server).
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/comm/gloo/gloo_communicator.h"
#include "parallel/comm/rpc/grpc_store.h"
#include "parallel/comm/rpc/store_server.h"
#include "tests/parallel/comm/comm_test_harness.h"

namespace tessera::parallel::testing {

absl::Status RunOnGroup(absl::string_view backend, const GroupOptions& options,
                        const std::function<void(RankContext&)>& body) {
  constexpr int kRanks = 4;
  if (backend != "gloo") {
    return absl::UnavailableError(
        absl::StrCat("backend '", backend, "' runs in its own test executable"));
  }
  if (options.min_size > kRanks) {
    return absl::UnavailableError(absl::StrCat("needs ", options.min_size, " ranks"));
  }
  auto server = StoreServer::Create("127.0.0.1:0");
  if (!server.ok()) return server.status();
  const std::string target = absl::StrCat("127.0.0.1:", (*server)->port());
  std::vector<absl::Status> status(kRanks);
  std::vector<std::thread> threads;
  threads.reserve(kRanks);
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      auto store = GrpcStore::Create(target);
      if (!store.ok()) {
        status[r] = store.status();
        return;
      }
      std::shared_ptr<Store> shared(std::move(*store));
      GlooCommunicatorOptions comm_options;
      comm_options.timeout = options.timeout;
      comm_options.key_prefix = "comm";
      auto comm = GlooCommunicator::Create(shared, r, kRanks, comm_options);
      comm_options.timeout = absl::Seconds(60);
      comm_options.key_prefix = "control";
      auto control = GlooCommunicator::Create(shared, r, kRanks, comm_options);
      if (!comm.ok() || !control.ok()) {
        status[r] = comm.ok() ? control.status() : comm.status();
        return;
      }
      std::unique_ptr<TestDevice> device = MakeCpuTestDevice();
      RankContext context{**comm, **control, *device};
      body(context);
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const absl::Status& s : status) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace tessera::parallel::testing
