#include "kvtransfer/inproc/in_process_transport.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <list>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "kvtransfer/region_table.h"

namespace tessera::kvtransfer {
namespace {

constexpr uint64_t kCopyChunkBytes = uint64_t{1} << 20;        // Cancel is checked between chunks
constexpr absl::Duration kCloseWaitLimit = absl::Seconds(30);  // for a listener that blocks
constexpr absl::string_view kDescriptorPrefix = "tessera.kvtransfer.inproc/1";

// Process-unique fabric ids, so that a descriptor of another fabric is recognised.
std::atomic<uint64_t> next_fabric_id{1};

// The receiving half of a transport and the table of its regions (which are also the sources of
// its own transfers). Shared by the transport, its fabric entry, its peers' connections and its
// transfers; outlives the transport while any of them holds it, refusing writes once closed.
class Endpoint {
 public:
  Endpoint(uint64_t id, std::string name) : id_(id), name_(std::move(name)) {}

  uint64_t id() const { return id_; }
  const std::string& name() const { return name_; }

  RegionTable& regions() { return regions_; }

  // One incoming segment: validate, Admit, copy (in chunks, stopping when `cancel` is set),
  // Written. kUnavailable once closed.
  absl::Status Write(const WriteInfo& info, const char* source, const std::atomic<bool>& cancel,
                     std::atomic<uint64_t>& bytes_done) {
    {
      absl::MutexLock lock(&mu_);
      if (closed_) return absl::UnavailableError(absl::StrCat("peer '", name_, "' is gone"));
      ++writes_in_flight_;  // before the region's use, so that Close waits for both
    }
    absl::StatusOr<RegionTable::Place> place =
        regions_.AcquireDestination(info.region, info.offset, info.length);
    if (!place.ok()) {
      absl::MutexLock lock(&mu_);
      --writes_in_flight_;
      return absl::InvalidArgumentError(
          absl::StrCat("peer '", name_, "': ", place.status().message()));
    }
    char* destination = place->address;
    absl::Status status;
    {
      absl::ReaderMutexLock lock(&listener_mu_);
      if (listener_ != nullptr) status = listener_->Admit(info);
    }
    const bool admitted = status.ok();
    for (uint64_t done = 0; status.ok() && done < info.length; done += kCopyChunkBytes) {
      if (cancel.load(std::memory_order_relaxed)) {
        status = absl::CancelledError("transfer cancelled");
        break;
      }
      const uint64_t n = std::min(kCopyChunkBytes, info.length - done);
      std::memcpy(destination + done, source + done, n);
    }
    if (status.ok()) {
      absl::ReaderMutexLock lock(&listener_mu_);
      if (listener_ != nullptr) listener_->Written(info);
      bytes_done.fetch_add(info.length, std::memory_order_relaxed);
    } else if (admitted) {  // cancelled mid-copy
      absl::ReaderMutexLock lock(&listener_mu_);
      if (listener_ != nullptr) listener_->NotWritten(info, status);
    }
    regions_.ReleaseDestination(info.region);
    absl::MutexLock lock(&mu_);
    --writes_in_flight_;
    return status;
  }

  void SetListener(WriteListener* listener) {
    absl::WriterMutexLock lock(&listener_mu_);
    listener_ = listener;
  }

  // Refuses further writes and waits (bounded) for the ones in progress.
  void Close() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    const absl::Time deadline = absl::Now() + kCloseWaitLimit;
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return writes_in_flight_ == 0; };
    if (!mu_.AwaitWithDeadline(absl::Condition(&idle), deadline)) {
      TESSERA_LOG(ERROR) << "InProcessTransport '" << name_ << "': " << writes_in_flight_
                         << " incoming write(s) still running after " << kCloseWaitLimit;
    }
  }

 private:
  const uint64_t id_;
  const std::string name_;
  RegionTable regions_;  // also the sources of this transport's own transfers
  absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  int writes_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Mutex listener_mu_;  // readers: writes calling the listener; writer: SetListener
  WriteListener* listener_ ABSL_GUARDED_BY(listener_mu_) = nullptr;
};

// One submitted transfer, shared by its Transfer handle and the worker queue.
class TransferState {
 public:
  TransferState(PeerId peer, std::vector<Segment> segments, std::vector<const char*> sources,
                std::shared_ptr<Endpoint> source, std::shared_ptr<Endpoint> target)
      : peer_(peer),
        segments_(std::move(segments)),
        sources_(std::move(sources)),
        source_(std::move(source)),
        target_(std::move(target)) {}

  PeerId peer() const { return peer_; }
  uint64_t bytes_done() const { return bytes_done_.load(std::memory_order_relaxed); }
  void RequestCancel() { cancel_.store(true); }

  bool Done() {
    absl::MutexLock lock(&mu_);
    return phase_ == Phase::kDone;
  }

  absl::Status Wait(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return phase_ == Phase::kDone; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
      return absl::DeadlineExceededError(
          absl::StrCat("transfer still running after ", absl::FormatDuration(timeout)));
    }
    return status_;
  }

  // Cancels; a transfer that has not started yet finishes here and now.
  void Cancel() {
    RequestCancel();
    bool finish = false;
    {
      absl::MutexLock lock(&mu_);
      if (phase_ == Phase::kQueued) {
        phase_ = Phase::kRunning;
        finish = true;
      }
    }
    if (finish) Finish(absl::CancelledError("transfer cancelled"));
  }

  // Called by the worker; false when the transfer was cancelled before it started.
  bool TryStart() {
    absl::MutexLock lock(&mu_);
    if (phase_ != Phase::kQueued) return false;
    phase_ = Phase::kRunning;
    return true;
  }

  void Run(const std::string& sender_name) {
    absl::Status status;
    for (size_t i = 0; i < segments_.size() && status.ok(); ++i) {
      if (cancel_.load()) break;
      const Segment& s = segments_[i];
      status =
          target_->Write(WriteInfo{s.remote_region, s.remote_offset, s.length, s.tag, sender_name},
                         sources_[i], cancel_, bytes_done_);
    }
    if (status.ok() && cancel_.load()) status = absl::CancelledError("transfer cancelled");
    Finish(status);
  }

 private:
  enum class Phase { kQueued, kRunning, kDone };

  void Finish(absl::Status status) {
    source_->regions().ReleaseSources(segments_);
    absl::MutexLock lock(&mu_);
    status_ = std::move(status);
    phase_ = Phase::kDone;
  }

  const PeerId peer_;
  const std::vector<Segment> segments_;
  const std::vector<const char*> sources_;
  const std::shared_ptr<Endpoint> source_;
  const std::shared_ptr<Endpoint> target_;
  std::atomic<bool> cancel_{false};
  std::atomic<uint64_t> bytes_done_{0};
  absl::Mutex mu_;
  Phase phase_ ABSL_GUARDED_BY(mu_) = Phase::kQueued;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

class InProcessTransferHandle final : public Transfer {
 public:
  explicit InProcessTransferHandle(std::shared_ptr<TransferState> state)
      : state_(std::move(state)) {}
  ~InProcessTransferHandle() override {
    state_->Cancel();
    // Bounded: the worker checks the cancel flag between 1 MiB chunks.
    if (absl::IsDeadlineExceeded(state_->Wait(kCloseWaitLimit))) {
      TESSERA_LOG(ERROR) << "InProcessTransport: a cancelled transfer did not stop within "
                         << kCloseWaitLimit;
    }
  }
  bool Done() override { return state_->Done(); }
  absl::Status Wait(absl::Duration timeout) override { return state_->Wait(timeout); }
  void Cancel() override { state_->Cancel(); }
  uint64_t bytes_done() const override { return state_->bytes_done(); }

 private:
  std::shared_ptr<TransferState> state_;
};

}  // namespace

class InProcessFabric::Impl {
 public:
  Impl() : id_(next_fabric_id.fetch_add(1)) {}
  uint64_t id() const { return id_; }

  std::shared_ptr<Endpoint> Add(const std::string& name) {
    absl::MutexLock lock(&mu_);
    auto endpoint = std::make_shared<Endpoint>(next_endpoint_++, name);
    endpoints_[endpoint->id()] = endpoint;
    return endpoint;
  }
  void Remove(uint64_t endpoint_id) {
    absl::MutexLock lock(&mu_);
    endpoints_.erase(endpoint_id);
  }
  std::shared_ptr<Endpoint> Find(uint64_t endpoint_id) {
    absl::MutexLock lock(&mu_);
    auto it = endpoints_.find(endpoint_id);
    return it == endpoints_.end() ? nullptr : it->second.lock();
  }

 private:
  const uint64_t id_;
  absl::Mutex mu_;
  uint64_t next_endpoint_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, std::weak_ptr<Endpoint>> endpoints_ ABSL_GUARDED_BY(mu_);
};

InProcessFabric::InProcessFabric() : impl_(std::make_unique<Impl>()) {}
InProcessFabric::~InProcessFabric() = default;
std::shared_ptr<InProcessFabric> InProcessFabric::Create() {
  return std::shared_ptr<InProcessFabric>(new InProcessFabric());
}

class InProcessTransport::Impl {
 public:
  Impl(std::shared_ptr<InProcessFabric> fabric, const TransportOptions& options)
      : fabric_(std::move(fabric)),
        options_(options),
        self_(fabric_->impl().Add(options.name)),
        worker_([this] { WorkerLoop(); }) {}

  ~Impl() {
    fabric_->impl().Remove(self_->id());
    self_->Close();
    std::vector<std::shared_ptr<TransferState>> queued;
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      queued.assign(queue_.begin(), queue_.end());
      queue_.clear();
    }
    for (auto& transfer : queued) transfer->Cancel();
    CancelMatching([](const TransferState&) { return true; });
    worker_.join();
  }

  absl::StatusOr<RegionId> RegisterMemory(void* base, size_t length) {
    if (absl::Status status = CheckRegisterMemory(base, length); !status.ok()) return status;
    return self_->regions().Register(base, length);
  }

  absl::Status DeregisterMemory(RegionId region) {
    return self_->regions().Deregister(region).status();
  }

  std::string LocalDescriptor() {
    std::vector<std::string> regions;
    for (const auto& [id, length] : self_->regions().List())
      regions.push_back(absl::StrCat(id, ":", length));
    return absl::StrCat(kDescriptorPrefix, ";", fabric_->impl().id(), ";", self_->id(), ";",
                        absl::StrJoin(regions, ","));
  }

  absl::StatusOr<PeerId> Connect(absl::string_view descriptor) {
    std::vector<absl::string_view> parts = absl::StrSplit(descriptor, ';');
    uint64_t fabric_id = 0;
    uint64_t endpoint_id = 0;
    if (parts.size() != 4 || parts[0] != kDescriptorPrefix ||
        !absl::SimpleAtoi(parts[1], &fabric_id) || !absl::SimpleAtoi(parts[2], &endpoint_id)) {
      return absl::InvalidArgumentError("Connect: not an in-process transport descriptor");
    }
    Peer peer;
    for (absl::string_view region : absl::StrSplit(parts[3], ',', absl::SkipEmpty())) {
      std::pair<absl::string_view, absl::string_view> id_length = absl::StrSplit(region, ':');
      RegionId id = 0;
      uint64_t length = 0;
      if (!absl::SimpleAtoi(id_length.first, &id) || !absl::SimpleAtoi(id_length.second, &length)) {
        return absl::InvalidArgumentError("Connect: malformed region in descriptor");
      }
      peer.regions[id] = length;
    }
    if (fabric_id != fabric_->impl().id()) {
      return absl::UnavailableError("Connect: the descriptor belongs to another InProcessFabric");
    }
    peer.endpoint = fabric_->impl().Find(endpoint_id);
    if (peer.endpoint == nullptr) {
      return absl::UnavailableError(
          absl::StrCat("Connect: in-process peer ", endpoint_id, " is gone"));
    }
    absl::MutexLock lock(&mu_);
    const PeerId id = next_peer_++;
    peers_[id] = std::move(peer);
    return id;
  }

  absl::Status Disconnect(PeerId peer) {
    {
      absl::MutexLock lock(&mu_);
      if (peers_.erase(peer) == 0) return absl::NotFoundError(absl::StrCat("unknown peer ", peer));
    }
    CancelMatching([peer](const TransferState& t) { return t.peer() == peer; });
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Transfer>> Submit(PeerId peer_id,
                                                   absl::Span<const Segment> segments) {
    std::shared_ptr<Endpoint> target;
    {
      absl::MutexLock lock(&mu_);
      auto it = peers_.find(peer_id);
      if (it == peers_.end()) {
        return absl::InvalidArgumentError(absl::StrCat("Submit: unknown peer ", peer_id));
      }
      const Peer& peer = it->second;
      if (absl::Status status = CheckRemoteSegments(segments, peer.regions); !status.ok()) {
        return status;
      }
      target = peer.endpoint;
    }
    absl::StatusOr<std::vector<RegionTable::Place>> places =
        self_->regions().AcquireSources(segments);
    if (!places.ok()) return places.status();
    std::vector<const char*> sources;
    for (const RegionTable::Place& place : *places) sources.push_back(place.address);
    auto state = std::make_shared<TransferState>(
        peer_id, std::vector<Segment>(segments.begin(), segments.end()), std::move(sources), self_,
        std::move(target));
    {
      absl::MutexLock lock(&mu_);
      active_.remove_if([](const std::weak_ptr<TransferState>& t) { return t.expired(); });
      active_.push_back(state);
      queue_.push_back(state);
    }
    return std::unique_ptr<Transfer>(new InProcessTransferHandle(std::move(state)));
  }

  void SetWriteListener(WriteListener* listener) { self_->SetListener(listener); }

 private:
  struct Peer {
    std::shared_ptr<Endpoint> endpoint;
    RemoteRegions regions;  // as the descriptor described them
  };

  template <typename Predicate>
  void CancelMatching(Predicate predicate) {
    std::vector<std::shared_ptr<TransferState>> matching;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& weak : active_) {
        if (auto t = weak.lock(); t != nullptr && predicate(*t)) matching.push_back(std::move(t));
      }
    }
    for (auto& t : matching) t->Cancel();
  }

  void WorkerLoop() {
    while (true) {
      std::shared_ptr<TransferState> next;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || !queue_.empty();
        };
        mu_.Await(absl::Condition(&ready));  // bounded by the destructor setting stopping_
        if (queue_.empty()) return;
        next = std::move(queue_.front());
        queue_.pop_front();
      }
      if (next->TryStart()) next->Run(options_.name);
    }
  }

  const std::shared_ptr<InProcessFabric> fabric_;
  const TransportOptions options_;
  const std::shared_ptr<Endpoint> self_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  PeerId next_peer_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<PeerId, Peer> peers_ ABSL_GUARDED_BY(mu_);
  std::deque<std::shared_ptr<TransferState>> queue_ ABSL_GUARDED_BY(mu_);
  std::list<std::weak_ptr<TransferState>> active_ ABSL_GUARDED_BY(mu_);
  std::thread worker_;  // last: starts after the fields exist
};

absl::StatusOr<std::unique_ptr<InProcessTransport>> InProcessTransport::Create(
    std::shared_ptr<InProcessFabric> fabric, const TransportOptions& options) {
  if (fabric == nullptr) return absl::InvalidArgumentError("InProcessTransport: null fabric");
  return std::unique_ptr<InProcessTransport>(
      new InProcessTransport(std::make_unique<Impl>(std::move(fabric), options)));
}

InProcessTransport::InProcessTransport(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
InProcessTransport::~InProcessTransport() = default;

absl::StatusOr<RegionId> InProcessTransport::RegisterMemory(void* base, size_t length) {
  return impl_->RegisterMemory(base, length);
}
absl::Status InProcessTransport::DeregisterMemory(RegionId region) {
  return impl_->DeregisterMemory(region);
}
absl::StatusOr<std::string> InProcessTransport::LocalDescriptor() {
  return impl_->LocalDescriptor();
}
absl::StatusOr<PeerId> InProcessTransport::Connect(absl::string_view descriptor) {
  return impl_->Connect(descriptor);
}
absl::Status InProcessTransport::Disconnect(PeerId peer) { return impl_->Disconnect(peer); }
absl::StatusOr<std::unique_ptr<Transfer>> InProcessTransport::Submit(
    PeerId peer, absl::Span<const Segment> segments) {
  return impl_->Submit(peer, segments);
}
void InProcessTransport::SetWriteListener(WriteListener* listener) {
  impl_->SetWriteListener(listener);
}

}  // namespace tessera::kvtransfer
