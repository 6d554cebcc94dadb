#include "parallel/comm/gloo/gloo_store.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "gloo/common/error.h"

namespace tessera::parallel {

GlooStoreAdapter::GlooStoreAdapter(parallel::Store& store, std::string prefix,
                                   absl::Duration timeout)
    : store_(store), prefix_(std::move(prefix)), timeout_(timeout) {}

void GlooStoreAdapter::Fail(const absl::Status& status) {
  if (status_.ok()) status_ = status;
  // The only way to report an error through gloo's interface; caught by GlooCommunicator.
  throw gloo::IoException(status.ToString());
}

void GlooStoreAdapter::set(const std::string& key, const std::vector<char>& data) {
  absl::Status status = store_.Set(Key(key), absl::string_view(data.data(), data.size()));
  if (!status.ok()) Fail(status);
}

const std::string& GlooStoreAdapter::Fetch(const std::string& key, absl::Duration timeout) {
  auto it = fetched_.find(key);
  if (it != fetched_.end()) return it->second;
  absl::StatusOr<std::string> value = store_.Get(Key(key), timeout);
  if (!value.ok()) Fail(value.status());
  return fetched_.emplace(key, *std::move(value)).first->second;
}

std::vector<char> GlooStoreAdapter::get(const std::string& key) {
  const std::string& value = Fetch(key, timeout_);
  return std::vector<char>(value.begin(), value.end());
}

void GlooStoreAdapter::wait(const std::vector<std::string>& keys) { wait(keys, {}); }

void GlooStoreAdapter::wait(const std::vector<std::string>& keys,
                            const std::chrono::milliseconds& timeout) {
  // gloo passes its context's timeout; a zero or negative one means "unset": use ours.
  const absl::Duration limit = timeout.count() > 0 ? absl::Milliseconds(timeout.count()) : timeout_;
  const absl::Time deadline = absl::Now() + limit;
  for (const std::string& key : keys) {
    Fetch(key, std::max(deadline - absl::Now(), absl::ZeroDuration()));
  }
}

}  // namespace tessera::parallel
