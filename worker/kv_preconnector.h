// Connects a KV endpoint to peers in the background (a connect may wait for a peer; the thread
// that learns of peers — a heartbeat, a replica's command loop — must not). Each descriptor is
// tried once; a failed connect is retried by the first transfer that needs it. Thread-safe.
#pragma once

#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace tessera::worker {

class KvPreconnector {
 public:
  // `connect` (KvEndpoint::Preconnect, KvPort::Preconnect) runs on the preconnector's thread.
  explicit KvPreconnector(std::function<absl::Status(const std::string&)> connect);
  ~KvPreconnector();  // waits for a connect in progress
  // Queues the descriptors not seen before.
  void Offer(const std::vector<std::string>& descriptors);

 private:
  void Run();

  const std::function<absl::Status(const std::string&)> connect_;
  absl::Mutex mu_;
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> seen_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: started once the members above exist
};

}  // namespace tessera::worker
