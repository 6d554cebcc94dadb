// RegionTable: the registered-memory bookkeeping every Transport implementation shares — the
// regions (base, length and an opaque fabric handle such as UCX's memory handle), the bounds
// checks of a segment against a region, and per-region use counts that make DeregisterMemory
// kFailedPrecondition while a running transfer reads a region or an incoming write fills it.
// Also the validation of a Submit's remote side against the regions a peer's descriptor listed.
//
// Errors: kInvalidArgument for an unknown region or a range outside it (messages name the segment
// index and the region), kNotFound for deregistering an unknown id, kFailedPrecondition for
// deregistering a region in use. Acquire* take uses only when they return OK (all or nothing).
//
// Ownership: the table never owns the memory nor the handles; it hands handles back on
// Deregister and Clear. Threads: thread-safe; every method takes one internal lock briefly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "kvtransfer/transport.h"

namespace tessera::kvtransfer {

// True when [offset, offset + length) is a non-empty range inside `region_length` bytes.
bool SegmentInBounds(uint64_t offset, uint64_t length, uint64_t region_length);

// RegisterMemory's argument check: kInvalidArgument for a null base or a zero length.
absl::Status CheckRegisterMemory(const void* base, size_t length);

// A peer's regions as its descriptor described them: id → length.
using RemoteRegions = absl::flat_hash_map<RegionId, uint64_t>;

// Submit's check of the remote side: every segment non-empty and inside a region of `remote`.
absl::Status CheckRemoteSegments(absl::Span<const Segment> segments, const RemoteRegions& remote);

class RegionTable {
 public:
  // Where a segment's bytes are in a registered region, with the region's handle.
  struct Place {
    char* address = nullptr;
    void* handle = nullptr;
  };

  // Ids start at 1 and are never reused. The caller checked the arguments (CheckRegisterMemory).
  RegionId Register(void* base, size_t length, void* handle = nullptr);
  // Forgets the region and returns its handle.
  absl::StatusOr<void*> Deregister(RegionId id);
  // Every region's id and length, by id.
  std::vector<std::pair<RegionId, uint64_t>> List() const;
  // Forgets every region (in use or not) and returns their handles; for a transport's shutdown.
  std::vector<void*> Clear();

  // Submit's local side: validates every segment against its local region and takes one use of
  // that region per segment; returns each segment's source.
  absl::StatusOr<std::vector<Place>> AcquireSources(absl::Span<const Segment> segments);
  // Gives back the uses AcquireSources took for the same segments.
  void ReleaseSources(absl::Span<const Segment> segments);

  // An incoming write of [offset, offset + length) into region `id`: validates it and takes one
  // use of the region until ReleaseDestination(id).
  absl::StatusOr<Place> AcquireDestination(RegionId id, uint64_t offset, uint64_t length);
  void ReleaseDestination(RegionId id);

 private:
  struct Region {
    char* base = nullptr;
    uint64_t length = 0;
    void* handle = nullptr;
    int uses = 0;  // running local reads plus incoming writes
  };

  void Release(RegionId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  RegionId next_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<RegionId, Region> regions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera::kvtransfer
