#include "coordinator/registry.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/net.h"

namespace tessera::coordinator {

int PrefixIndex::Match(const std::vector<uint64_t>& chain) const {
  absl::MutexLock lock(&mu_);
  int n = 0;
  while (n < static_cast<int>(chain.size()) && present_.contains(chain[n])) ++n;
  return n;
}

void PrefixIndex::Insert(const std::vector<uint64_t>& chain) {
  absl::MutexLock lock(&mu_);
  for (uint64_t h : chain) {
    if (present_.insert(h).second) order_.push_back(h);
  }
  while (order_.size() > capacity_) {
    present_.erase(order_.front());
    order_.pop_front();
  }
}

ReplicaEntry::ReplicaEntry(std::string id, ReplicaInfo info, std::unique_ptr<ReplicaClient> client,
                           size_t prefix_capacity_blocks)
    : id_(std::move(id)),
      info_(std::move(info)),
      client_(std::move(client)),
      prefix_index_(prefix_capacity_blocks) {}

ReplicaLoad ReplicaEntry::load() const {
  absl::MutexLock lock(&mu_);
  return load_;
}

void ReplicaEntry::set_load(const ReplicaLoad& load) {
  absl::MutexLock lock(&mu_);
  load_ = load;
}

void ReplicaEntry::HoldKv(uint64_t token) {
  absl::MutexLock lock(&mu_);
  held_kv_.insert(token);
}

void ReplicaEntry::DropKv(uint64_t token) {
  absl::MutexLock lock(&mu_);
  held_kv_.erase(token);
}

std::vector<uint64_t> ReplicaEntry::held_kv() const {
  absl::MutexLock lock(&mu_);
  return {held_kv_.begin(), held_kv_.end()};
}

ReplicaRegistry::ReplicaRegistry(const RegistryOptions& options, ReplicaConnector& connector,
                                 Clock& clock)
    : options_(options), connector_(connector), clock_(clock) {}

absl::StatusOr<std::shared_ptr<ReplicaEntry>> ReplicaRegistry::Register(ReplicaInfo info) {
  auto error = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (info.name.empty()) return error("replica.name must not be empty");
  if (info.address.empty()) return error("replica.address must not be empty (", info.name, ")");
  if (info.role != "mixed" && info.role != "prefill" && info.role != "decode") {
    return error("replica.role must be mixed, prefill or decode, got \"", info.role, "\"");
  }
  if (info.model_name != options_.model_name) {
    return error("replica ", info.name, " serves model \"", info.model_name,
                 "\" but this coordinator serves \"", options_.model_name, "\"");
  }
  if (info.vocab_size != options_.vocab_size) {
    return error("replica ", info.name, " has vocab_size ", info.vocab_size,
                 " but the coordinator's tokenizer/model has ", options_.vocab_size);
  }
  if (info.max_model_len < 2) {
    return error("replica ", info.name, ": max_model_len must be at least 2, got ",
                 info.max_model_len);
  }
  if (info.block_size < 1) {
    return error("replica ", info.name, ": block_size must be positive, got ", info.block_size);
  }
  // A replica on another machine that gives a loopback address would have this coordinator (and
  // every KV peer) dial themselves.
  if (!info.registered_from.empty() && !IsLoopbackHost(info.registered_from) &&
      !IsLocalAddress(info.registered_from) && IsLoopbackHost(HostOf(info.address))) {
    return error("replica ", info.name, " registered from ", info.registered_from,
                 " but gives the loopback address ", info.address,
                 ", which no other machine can dial: start its worker with --listen "
                 "0.0.0.0:PORT or --advertise-host HOST (by default a worker listens on every "
                 "interface when --coordinator is not a loopback address)");
  }
  auto client = connector_.Connect(info);
  if (!client.ok()) {
    return absl::UnavailableError(absl::StrCat("cannot connect to replica ", info.name, " at ",
                                               info.address, ": ", client.status().message()));
  }
  absl::MutexLock lock(&mu_);
  // A replica registering again under its name restarted: its old entry is gone.
  for (auto it = order_.begin(); it != order_.end();) {
    auto lease = leases_.find(*it);
    if (lease != leases_.end() && lease->second.entry->info().name == info.name) {
      lease->second.entry->MarkLost();
      leases_.erase(lease);
      it = order_.erase(it);
    } else {
      ++it;
    }
  }
  if (info.role != "mixed") {
    // KV moves block for block between the pools: they must agree on the block size and on the
    // blocks' element type.
    for (const auto& [other_id, lease] : leases_) {
      const ReplicaInfo& other = lease.entry->info();
      if (other.role == "mixed" || other.name == info.name) continue;
      if (other.block_size != info.block_size) {
        return error("replica ", info.name, " (", info.role, ") has block_size ", info.block_size,
                     " but ", other.role, " replica ", other.name, " has ", other.block_size,
                     ": prefill and decode replicas must use the same --block-size");
      }
      if (!info.kv_cache_dtype.empty() && !other.kv_cache_dtype.empty() &&
          other.kv_cache_dtype != info.kv_cache_dtype) {
        return error("replica ", info.name, " (", info.role, ") keeps its KV cache in ",
                     info.kv_cache_dtype, " but ", other.role, " replica ", other.name, " keeps ",
                     other.kv_cache_dtype,
                     ": prefill and decode replicas exchange KV blocks of one type "
                     "(--kv-cache-dtype)");
      }
    }
  }
  const std::string id = absl::StrCat(info.name, "#", next_id_++);
  TESSERA_LOG(INFO) << info.role << " replica " << info.name << " registered at " << info.address
                    << " (lease " << id << ", tp " << info.tensor_parallel_size << ", pp "
                    << info.pipeline_parallel_size << ", " << info.kv_blocks_total << " KV blocks)";
  auto entry = std::make_shared<ReplicaEntry>(id, std::move(info), std::move(*client),
                                              options_.prefix_index_blocks);
  leases_[id] = Lease{entry, clock_.MonotonicNow() + options_.lease};
  order_.push_back(id);
  counters_.registrations++;
  return entry;
}

bool ReplicaRegistry::Heartbeat(const std::string& id, const ReplicaLoad& load) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(id);
  if (it == leases_.end()) return false;
  it->second.expires = clock_.MonotonicNow() + options_.lease;
  it->second.entry->set_load(load);
  return true;
}

void ReplicaRegistry::Deregister(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(id);
  if (it == leases_.end()) return;
  TESSERA_LOG(INFO) << "replica " << it->second.entry->info().name << " deregistered";
  it->second.entry->MarkLost();
  leases_.erase(it);
  order_.erase(std::remove(order_.begin(), order_.end(), id), order_.end());
  counters_.deregistrations++;
}

std::vector<std::string> ReplicaRegistry::ExpireLeases() {
  const absl::Time now = clock_.MonotonicNow();
  std::vector<std::string> expired;
  absl::MutexLock lock(&mu_);
  for (auto it = order_.begin(); it != order_.end();) {
    auto lease = leases_.find(*it);
    if (lease->second.expires <= now) {
      const ReplicaEntry& entry = *lease->second.entry;
      TESSERA_LOG(WARNING) << "replica " << entry.info().name << " at " << entry.info().address
                           << " missed its heartbeats for " << absl::FormatDuration(options_.lease)
                           << ": taken out of rotation, " << entry.in_flight()
                           << " requests in flight fail";
      expired.push_back(entry.info().name);
      lease->second.entry->MarkLost();
      leases_.erase(lease);
      it = order_.erase(it);
      counters_.lease_expirations++;
    } else {
      ++it;
    }
  }
  return expired;
}

std::vector<std::shared_ptr<ReplicaEntry>> ReplicaRegistry::Live() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<ReplicaEntry>> live;
  live.reserve(order_.size());
  for (const std::string& id : order_) live.push_back(leases_.at(id).entry);
  return live;
}

RegistryCounters ReplicaRegistry::counters() const {
  absl::MutexLock lock(&mu_);
  return counters_;
}

}  // namespace tessera::coordinator
