#include "worker/kv_preconnector.h"

#include <utility>

#include "absl/time/time.h"
#include "common/logging.h"

namespace tessera::worker {

KvPreconnector::KvPreconnector(std::function<absl::Status(const std::string&)> connect)
    : connect_(std::move(connect)), thread_([this] { Run(); }) {}

KvPreconnector::~KvPreconnector() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void KvPreconnector::Offer(const std::vector<std::string>& descriptors) {
  absl::MutexLock lock(&mu_);
  for (const std::string& d : descriptors) {
    if (seen_.insert(d).second) queue_.push_back(d);
  }
}

void KvPreconnector::Run() {
  while (true) {
    std::string next;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); };
      mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(1));
      if (stop_) return;
      if (queue_.empty()) continue;
      next = std::move(queue_.front());
      queue_.pop_front();
    }
    if (absl::Status s = connect_(next); !s.ok()) {
      TESSERA_LOG(WARNING) << "could not pre-connect to a KV peer: " << s;
    }
  }
}

}  // namespace tessera::worker
