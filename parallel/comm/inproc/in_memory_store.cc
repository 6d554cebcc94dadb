#include "parallel/comm/inproc/in_memory_store.h"

#include "absl/strings/str_cat.h"

namespace tessera::parallel {

absl::Status InMemoryStore::Set(absl::string_view key, absl::string_view value) {
  absl::MutexLock lock(&mu_);
  values_[key] = std::string(value);
  set_cv_.SignalAll();
  return absl::OkStatus();
}

absl::StatusOr<std::string> InMemoryStore::Get(absl::string_view key, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  while (true) {
    if (auto it = values_.find(key); it != values_.end()) return it->second;
    if (set_cv_.WaitWithDeadline(&mu_, deadline) && !values_.contains(key)) {
      return absl::DeadlineExceededError(absl::StrCat(
          "InMemoryStore.Get: key '", key, "' not set within ", absl::FormatDuration(timeout)));
    }
  }
}

}  // namespace tessera::parallel
