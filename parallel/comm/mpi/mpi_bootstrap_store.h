// A Store for ranks launched by mpirun: rank 0 of `world` hosts a StoreServer, broadcasts its
// "host:port" over MPI, and every rank (rank 0 included) talks to it through a GrpcStore. Use it
// to exchange NCCL unique ids and transfer descriptors when MPI is the launcher.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "parallel/comm/mpi/mpi_communicator.h"
#include "parallel/comm/store.h"

namespace tessera::parallel {

struct MpiBootstrapStoreOptions {
  // Where rank 0 listens (port chosen by the OS) and what the others dial: loopback for a single
  // node; a routable address of rank 0's host across nodes.
  std::string host = "127.0.0.1";
  // Deadline of each Set RPC.
  absl::Duration set_timeout = absl::Seconds(10);
};

// Collective over `world` (every rank must call it). The returned store of rank 0 owns the
// server: destroy it last (after the other ranks are done with the store), or their calls fail
// with kUnavailable. kUnavailable on every rank if rank 0 cannot start the server.
absl::StatusOr<std::unique_ptr<Store>> CreateMpiBootstrappedStore(
    MpiCommunicator& world, const MpiBootstrapStoreOptions& options = {});

}  // namespace tessera::parallel
