// GlooStoreAdapter: gloo's rendezvous store interface over a parallel::Store (an in-memory store in
// tests, a GrpcStore in processes), with every key under a prefix so that several groups share
// one store. Internal to GlooCommunicator.
//
// gloo's interface has no status: a failed Set/Get records the first error (see status()) and
// throws gloo::IoException, which GlooCommunicator catches where it calls into gloo and reports as
// that status. Waits are bounded: wait() by its timeout argument (gloo passes the context's), get()
// by the adapter's `timeout`. Not thread-safe: used by one thread at a time.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gloo/rendezvous/store.h"
#include "parallel/comm/store.h"

namespace tessera::parallel {

class GlooStoreAdapter final : public gloo::rendezvous::Store {
 public:
  // `store` must outlive the adapter.
  GlooStoreAdapter(parallel::Store& store, std::string prefix, absl::Duration timeout);

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override;

  // The first error of a set/get/wait (OK if none).
  const absl::Status& status() const { return status_; }

 private:
  std::string Key(const std::string& key) const { return prefix_ + "/" + key; }
  // Gets `key` (waiting up to `timeout`) into fetched_; records the error and throws on failure.
  const std::string& Fetch(const std::string& key, absl::Duration timeout);
  [[noreturn]] void Fail(const absl::Status& status);

  parallel::Store& store_;
  const std::string prefix_;
  const absl::Duration timeout_;
  absl::Status status_;
  absl::flat_hash_map<std::string, std::string> fetched_;  // values already read, by key
};

}  // namespace tessera::parallel
