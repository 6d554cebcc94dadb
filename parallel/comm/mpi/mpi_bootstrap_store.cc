#include "parallel/comm/mpi/mpi_bootstrap_store.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/stream.h"
#include "parallel/comm/rpc/grpc_store.h"
#include "parallel/comm/rpc/store_server.h"

namespace tessera::parallel {
namespace {

// Room for "host:port" in the broadcast; an empty string means rank 0 failed.
constexpr int64_t kAddressBytes = 256;

// The client, plus the server on rank 0 (destroyed after the client).
class BootstrappedStore final : public Store {
 public:
  BootstrappedStore(std::unique_ptr<StoreServer> server, std::unique_ptr<GrpcStore> client)
      : server_(std::move(server)), client_(std::move(client)) {}

  absl::Status Set(absl::string_view key, absl::string_view value) override {
    return client_->Set(key, value);
  }
  absl::StatusOr<std::string> Get(absl::string_view key, absl::Duration timeout) override {
    return client_->Get(key, timeout);
  }

 private:
  std::unique_ptr<StoreServer> server_;  // null except on rank 0
  std::unique_ptr<GrpcStore> client_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> CreateMpiBootstrappedStore(
    MpiCommunicator& world, const MpiBootstrapStoreOptions& options) {
  char address[kAddressBytes] = {};
  std::unique_ptr<StoreServer> server;
  absl::Status server_status;
  if (world.rank() == 0) {
    absl::StatusOr<std::unique_ptr<StoreServer>> created =
        StoreServer::Create(absl::StrCat(options.host, ":0"));
    if (created.ok()) {
      server = *std::move(created);
      const std::string text = absl::StrCat(options.host, ":", server->port());
      if (text.size() < sizeof(address)) {
        std::memcpy(address, text.data(), text.size());
      } else {
        server_status = absl::InvalidArgumentError(
            absl::StrCat("CreateMpiBootstrappedStore: address '", text, "' is too long"));
      }
    } else {
      server_status = created.status();
    }
  }
  // Every rank takes part in the broadcast, even when rank 0 failed, so none of them waits.
  CpuStream stream;
  TESSERA_RETURN_IF_ERROR(
      world.Broadcast(MutableTensorView(address, DataType::kI8, {kAddressBytes}), 0, stream));
  TESSERA_RETURN_IF_ERROR(server_status);
  address[kAddressBytes - 1] = '\0';
  if (address[0] == '\0') {
    return absl::UnavailableError(
        "CreateMpiBootstrappedStore: rank 0 could not start the store server");
  }
  GrpcStoreOptions client_options;
  client_options.set_timeout = options.set_timeout;
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<GrpcStore> client,
                           GrpcStore::Create(address, client_options));
  return std::unique_ptr<Store>(
      std::make_unique<BootstrappedStore>(std::move(server), std::move(client)));
}

}  // namespace tessera::parallel
