// A key/value rendezvous for small blobs (NCCL unique ids, transfer descriptors): one rank Sets a
// key, the others Get it, waiting up to a deadline. Thread-safe. Implementations: in memory
// (tests, threads), over MPI (mpirun), over TCP (a rank hosts it; later the coordinator).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tessera::parallel {

class Store {
 public:
  virtual ~Store() = default;
  // Sets (or overwrites) `key`.
  virtual absl::Status Set(absl::string_view key, absl::string_view value) = 0;
  // The value of `key`, waiting until it is set; kDeadlineExceeded naming the key after `timeout`.
  virtual absl::StatusOr<std::string> Get(absl::string_view key, absl::Duration timeout) = 0;
};

}  // namespace tessera::parallel
