// Rank discovery, in one place: where a process learns its rank in the job. Explicit flags win,
// then the launchers' environment in this order: Open MPI (OMPI_COMM_WORLD_*), Slurm
// (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), torchrun (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT) and LeaderWorkerSet (LWS_WORKER_INDEX, LWS_GROUP_SIZE,
// LWS_LEADER_ADDRESS). This is the only code that reads those variables.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace tessera::launch {

struct RankInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string leader_address;  // torchrun MASTER_ADDR[:MASTER_PORT], LWS_LEADER_ADDRESS
  std::string source;          // "flags", "openmpi", "slurm", "torchrun", "lws", "default"
  bool launched_by_mpirun() const { return source == "openmpi"; }
};

struct RankFlags {
  int rank = -1;  // -1: discover
  int world_size = -1;
};

// `getenv` is injectable for tests (default: std::getenv). kInvalidArgument naming the variable
// when a value is not an integer or out of range.
using GetEnv = std::function<const char*(const char*)>;
absl::StatusOr<RankInfo> DiscoverRank(const RankFlags& flags, const GetEnv& getenv = {});

}  // namespace tessera::launch
