#include "kvtransfer/region_table.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace tessera::kvtransfer {

bool SegmentInBounds(uint64_t offset, uint64_t length, uint64_t region_length) {
  return length > 0 && offset <= region_length && length <= region_length - offset;
}

absl::Status CheckRegisterMemory(const void* base, size_t length) {
  if (base == nullptr || length == 0) {
    return absl::InvalidArgumentError("RegisterMemory: null base or zero length");
  }
  return absl::OkStatus();
}

absl::Status CheckRemoteSegments(absl::Span<const Segment> segments, const RemoteRegions& remote) {
  for (size_t i = 0; i < segments.size(); ++i) {
    const Segment& s = segments[i];
    if (s.length == 0) {
      return absl::InvalidArgumentError(absl::StrCat("Submit: segment ", i, " is empty"));
    }
    auto region = remote.find(s.remote_region);
    if (region == remote.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("Submit: segment ", i, ": unknown remote region ", s.remote_region));
    }
    if (!SegmentInBounds(s.remote_offset, s.length, region->second)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Submit: segment ", i, ": remote [", s.remote_offset, ", +", s.length,
                       ") outside region ", s.remote_region, " of ", region->second, " bytes"));
    }
  }
  return absl::OkStatus();
}

RegionId RegionTable::Register(void* base, size_t length, void* handle) {
  absl::MutexLock lock(&mu_);
  const RegionId id = next_++;
  regions_[id] = Region{static_cast<char*>(base), length, handle, 0};
  return id;
}

absl::StatusOr<void*> RegionTable::Deregister(RegionId id) {
  absl::MutexLock lock(&mu_);
  auto it = regions_.find(id);
  if (it == regions_.end()) return absl::NotFoundError(absl::StrCat("unknown region ", id));
  if (it->second.uses > 0) {
    return absl::FailedPreconditionError(absl::StrCat("region ", id, " is used by ",
                                                      it->second.uses,
                                                      " running segment(s) or incoming write(s)"));
  }
  void* handle = it->second.handle;
  regions_.erase(it);
  return handle;
}

std::vector<std::pair<RegionId, uint64_t>> RegionTable::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::pair<RegionId, uint64_t>> out;
  for (const auto& [id, region] : regions_) out.emplace_back(id, region.length);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<void*> RegionTable::Clear() {
  absl::MutexLock lock(&mu_);
  std::vector<void*> handles;
  for (const auto& [id, region] : regions_) handles.push_back(region.handle);
  regions_.clear();
  return handles;
}

absl::StatusOr<std::vector<RegionTable::Place>> RegionTable::AcquireSources(
    absl::Span<const Segment> segments) {
  absl::MutexLock lock(&mu_);
  std::vector<Place> sources;
  sources.reserve(segments.size());
  for (size_t i = 0; i < segments.size(); ++i) {
    const Segment& s = segments[i];
    auto it = regions_.find(s.local_region);
    if (it == regions_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("Submit: segment ", i, ": unknown local region ", s.local_region));
    }
    if (!SegmentInBounds(s.local_offset, s.length, it->second.length)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Submit: segment ", i, ": local [", s.local_offset, ", +", s.length,
                       ") outside region ", s.local_region, " of ", it->second.length, " bytes"));
    }
    sources.push_back(Place{it->second.base + s.local_offset, it->second.handle});
  }
  for (const Segment& s : segments) ++regions_[s.local_region].uses;
  return sources;
}

void RegionTable::ReleaseSources(absl::Span<const Segment> segments) {
  absl::MutexLock lock(&mu_);
  for (const Segment& s : segments) Release(s.local_region);
}

absl::StatusOr<RegionTable::Place> RegionTable::AcquireDestination(RegionId id, uint64_t offset,
                                                                   uint64_t length) {
  absl::MutexLock lock(&mu_);
  auto it = regions_.find(id);
  if (it == regions_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("no region ", id, " on the receiver"));
  }
  if (!SegmentInBounds(offset, length, it->second.length)) {
    return absl::InvalidArgumentError(absl::StrCat("[", offset, ", +", length, ") outside region ",
                                                   id, " of ", it->second.length, " bytes"));
  }
  ++it->second.uses;
  return Place{it->second.base + offset, it->second.handle};
}

void RegionTable::ReleaseDestination(RegionId id) {
  absl::MutexLock lock(&mu_);
  Release(id);
}

void RegionTable::Release(RegionId id) {
  auto it = regions_.find(id);
  if (it != regions_.end()) --it->second.uses;
}

}  // namespace tessera::kvtransfer
