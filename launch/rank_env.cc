#include "launch/rank_env.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace tessera::launch {
namespace {

// Reads an integer variable; nullopt when unset.
absl::StatusOr<std::optional<int>> IntVar(const GetEnv& getenv, const char* name) {
  const char* value = getenv(name);
  if (value == nullptr) return std::optional<int>();
  int parsed = 0;
  if (!absl::SimpleAtoi(value, &parsed) || parsed < 0) {
    return absl::InvalidArgumentError(absl::StrCat("environment variable ", name, "='", value,
                                                   "' is not a non-negative integer"));
  }
  return std::optional<int>(parsed);
}

absl::Status Check(const RankInfo& info) {
  if (info.world_size < 1 || info.rank < 0 || info.rank >= info.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", info.rank, " of ", info.world_size,
                                                   " (from ", info.source, ") is out of range"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RankInfo> DiscoverRank(const RankFlags& flags, const GetEnv& getenv_in) {
  const GetEnv getenv =
      getenv_in ? getenv_in : GetEnv([](const char* n) { return std::getenv(n); });
  RankInfo info;
  if (flags.rank >= 0 || flags.world_size >= 0) {
    if (flags.rank < 0 || flags.world_size < 1) {
      return absl::InvalidArgumentError("--rank and --world-size go together");
    }
    info.rank = flags.rank;
    info.world_size = flags.world_size;
    info.source = "flags";
    TESSERA_RETURN_IF_ERROR(Check(info));
    return info;
  }
  struct Scheme {
    const char* source;
    const char* rank;
    const char* size;
    const char* local;
  };
  const Scheme schemes[] = {
      {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
      {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
      {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
      {"lws", "LWS_WORKER_INDEX", "LWS_GROUP_SIZE", nullptr},
  };
  for (const Scheme& s : schemes) {
    TESSERA_ASSIGN_OR_RETURN(std::optional<int> rank, IntVar(getenv, s.rank));
    TESSERA_ASSIGN_OR_RETURN(std::optional<int> size, IntVar(getenv, s.size));
    if (!rank.has_value() || !size.has_value()) continue;
    info.rank = *rank;
    info.world_size = *size;
    info.source = s.source;
    if (s.local != nullptr) {
      TESSERA_ASSIGN_OR_RETURN(std::optional<int> local, IntVar(getenv, s.local));
      info.local_rank = local.value_or(0);
    }
    if (info.source == "torchrun" && getenv("MASTER_ADDR") != nullptr) {
      info.leader_address = getenv("MASTER_ADDR");
      if (const char* port = getenv("MASTER_PORT"))
        absl::StrAppend(&info.leader_address, ":", port);
    }
    if (info.source == "lws" && getenv("LWS_LEADER_ADDRESS") != nullptr) {
      info.leader_address = getenv("LWS_LEADER_ADDRESS");
    }
    TESSERA_RETURN_IF_ERROR(Check(info));
    return info;
  }
  info.source = "default";
  return info;
}

}  // namespace tessera::launch
