// Runs one test body on every rank of a fresh communicator group, whatever the backend, so the
// conformance suite is written once as a function of a RankContext. Each test executable links
// exactly one implementation of RunOnGroup: harness_inproc.cc (threads), harness_mpi.cc (this
// process is one rank of an mpirun job; it also holds main()) or harness_nccl.cc (one thread per
// GPU).
#pragma once

#include <cstddef>
#include <functional>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/stream.h"
#include "parallel/comm/communicator.h"

namespace tessera::parallel::testing {

// Memory and a stream on the device of one rank.
class TestDevice {
 public:
  virtual ~TestDevice() = default;
  virtual Device device() const = 0;
  virtual Stream& stream() = 0;
  // `bytes` of device memory, owned by this object.
  virtual void* Allocate(size_t bytes) = 0;
  virtual void CopyToDevice(void* dst, const void* src, size_t bytes) = 0;
  // Synchronizes the stream, then copies.
  virtual void CopyToHost(void* dst, const void* src, size_t bytes) = 0;
};

struct RankContext {
  Communicator& comm;     // the group under test, with GroupOptions::timeout
  Communicator& control;  // the same ranks with a long timeout, for the test's own sequencing
  TestDevice& device;
};

struct GroupOptions {
  int min_size = 1;  // kUnavailable (skip) when the backend offers fewer ranks
  absl::Duration timeout = absl::Seconds(20);
};

// Runs `body` on every rank of a new group of `backend` ("inproc", "mpi", "nccl"): on threads of
// this process (inproc: 4 ranks; nccl: one per GPU, at most 4), or once in this process for MPI
// (one rank per process). kUnavailable when the backend is not linked into this executable or
// cannot run here (the caller skips); other errors mean the group could not be set up.
absl::Status RunOnGroup(absl::string_view backend, const GroupOptions& options,
                        const std::function<void(RankContext&)>& body);

// A CPU TestDevice (plain heap memory and a CpuStream).
std::unique_ptr<TestDevice> MakeCpuTestDevice();

}  // namespace tessera::parallel::testing
