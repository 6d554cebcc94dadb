// A Store held in this process's memory: for tests and for groups whose ranks are threads.
// Thread-safe; Get blocks the calling thread (at most `timeout`) until another thread Sets the key.
#pragma once

#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "parallel/comm/store.h"

namespace tessera::parallel {

class InMemoryStore final : public Store {
 public:
  InMemoryStore() = default;
  absl::Status Set(absl::string_view key, absl::string_view value) override;
  // kDeadlineExceeded naming the key when it is not set within `timeout`.
  absl::StatusOr<std::string> Get(absl::string_view key, absl::Duration timeout) override;

 private:
  absl::Mutex mu_;
  absl::CondVar set_cv_;
  absl::flat_hash_map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera::parallel
