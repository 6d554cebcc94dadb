#include "worker/kv_port.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace tessera::worker {

// The checksums of one export, computed on the port's checksum thread while the transfers run.
struct KvPort::ChecksumJob {
  std::vector<KvSegmentChecksum> sums;  // checksum fields filled in by the thread
  std::vector<const uint8_t*> data;     // the local bytes of sums[i]
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  bool cancelled ABSL_GUARDED_BY(mu) = false;

  bool Done() {
    absl::MutexLock lock(&mu);
    return done;
  }
  // Stops the job and returns once the thread no longer reads its bytes.
  void CancelAndWait() {
    absl::MutexLock lock(&mu);
    cancelled = true;
    mu.Await(absl::Condition(&done));
  }
};

// One thread that hashes what exports send, so that neither the engine thread nor a step's layer
// callbacks wait for XXH3 over the KV bytes.
class KvPort::ChecksumThread {
 public:
  ChecksumThread() : thread_([this] { Run(); }) {}
  ~ChecksumThread() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }
  void Post(std::shared_ptr<ChecksumJob> job) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(job));
  }

 private:
  void Run() {
    while (true) {
      std::shared_ptr<ChecksumJob> job;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](ChecksumThread* t)
                 ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu_) { return t->stop_ || !t->queue_.empty(); },
            this));
        if (queue_.empty()) return;  // stopping, nothing left
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      for (size_t i = 0; i < job->sums.size(); ++i) {
        {
          absl::MutexLock lock(&job->mu);
          if (job->cancelled) break;
        }
        job->sums[i].checksum = KvChecksum(job->data[i], job->sums[i].length);
      }
      absl::MutexLock lock(&job->mu);
      job->done = true;
    }
  }

  absl::Mutex mu_;
  std::deque<std::shared_ptr<ChecksumJob>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

namespace {

// One transfer per destination rank, with the checksums of what it sends.
class KvExportImpl final : public KvExport {
 public:
  KvExportImpl(std::vector<std::unique_ptr<kvtransfer::Transfer>> transfers,
               std::shared_ptr<KvPort::ChecksumJob> checksums,
               std::function<void(bool, uint64_t, absl::Duration)> done, absl::Time start)
      : transfers_(std::move(transfers)),
        checksums_(std::move(checksums)),
        done_(std::move(done)),
        start_(start) {}
  ~KvExportImpl() override {
    for (auto& t : transfers_) t->Cancel();
    transfers_.clear();  // each destructor waits until its local memory is no longer read
    checksums_->CancelAndWait();
  }

  bool Done() override {
    for (auto& t : transfers_) {
      if (!t->Done()) return false;
    }
    return checksums_->Done();
  }

  absl::StatusOr<std::vector<KvSegmentChecksum>> Wait(absl::Duration timeout) override {
    const absl::Time give_up = absl::Now() + timeout;
    absl::Status first;
    uint64_t bytes = 0;
    for (auto& t : transfers_) {
      absl::Status s = t->Wait(std::max(absl::ZeroDuration(), give_up - absl::Now()));
      if (absl::IsDeadlineExceeded(s) && !t->Done()) return s;
      if (!s.ok() && first.ok()) first = s;
      bytes += t->bytes_done();
    }
    {
      absl::MutexLock lock(&checksums_->mu);
      if (!checksums_->mu.AwaitWithDeadline(absl::Condition(&checksums_->done), give_up)) {
        return absl::DeadlineExceededError("the KV export's checksums are being computed");
      }
      if (checksums_->cancelled && first.ok()) {
        first = absl::CancelledError("the KV export was cancelled");
      }
    }
    if (!reported_) {
      reported_ = true;
      if (done_) done_(first.ok(), bytes, absl::Now() - start_);
    }
    if (!first.ok()) return first;
    return checksums_->sums;
  }

  void Cancel() override {
    for (auto& t : transfers_) t->Cancel();
    absl::MutexLock lock(&checksums_->mu);
    checksums_->cancelled = true;
  }

 private:
  std::vector<std::unique_ptr<kvtransfer::Transfer>> transfers_;
  std::shared_ptr<KvPort::ChecksumJob> checksums_;
  std::function<void(bool, uint64_t, absl::Duration)> done_;
  const absl::Time start_;  // when Export began (submits included)
  bool reported_ = false;
};

class CombinedExport final : public KvExport {
 public:
  explicit CombinedExport(std::vector<std::unique_ptr<KvExport>> parts)
      : parts_(std::move(parts)) {}
  bool Done() override {
    for (auto& p : parts_) {
      if (!p->Done()) return false;
    }
    return true;
  }
  absl::StatusOr<std::vector<KvSegmentChecksum>> Wait(absl::Duration timeout) override {
    const absl::Time give_up = absl::Now() + timeout;
    std::vector<KvSegmentChecksum> all;
    absl::Status first;
    for (auto& p : parts_) {
      absl::StatusOr<std::vector<KvSegmentChecksum>> sums =
          p->Wait(std::max(absl::ZeroDuration(), give_up - absl::Now()));
      if (absl::IsDeadlineExceeded(sums.status()) && !p->Done()) return sums.status();
      if (!sums.ok()) {
        if (first.ok()) first = sums.status();
        continue;
      }
      all.insert(all.end(), sums->begin(), sums->end());
    }
    if (!first.ok()) return first;
    return all;
  }
  void Cancel() override {
    for (auto& p : parts_) p->Cancel();
  }

 private:
  std::vector<std::unique_ptr<KvExport>> parts_;
};

// KvPort's stream: one ExportLayers per reported layer, the rest at Finish.
class PortLayerStream final : public KvLayerStream {
 public:
  PortLayerStream(KvPort& port, absl::Span<const int32_t> blocks, KvDestination destination)
      : port_(port),
        blocks_(blocks.begin(), blocks.end()),
        destination_(std::move(destination)),
        first_(port.layout().layer_begin),
        sent_(static_cast<size_t>(port.layout().layer_end - port.layout().layer_begin), false) {}

  void LayerWritten(int32_t layer) override {
    const int32_t i = layer - first_;
    if (!error_.ok() || i < 0 || i >= static_cast<int32_t>(sent_.size()) || sent_[i]) return;
    Send(i, i + 1);
  }

  absl::StatusOr<std::unique_ptr<KvExport>> Finish() override {
    // The layers not reported, in runs of neighbours.
    for (int32_t i = 0; error_.ok() && i < static_cast<int32_t>(sent_.size());) {
      if (sent_[i]) {
        ++i;
        continue;
      }
      int32_t end = i + 1;
      while (end < static_cast<int32_t>(sent_.size()) && !sent_[end]) ++end;
      Send(i, end);
      i = end;
    }
    if (!error_.ok()) {
      parts_.clear();  // cancels
      return error_;
    }
    return CombineExports(std::move(parts_));
  }

 private:
  void Send(int32_t begin, int32_t end) {
    absl::StatusOr<std::unique_ptr<KvExport>> part =
        port_.ExportLayers(blocks_, destination_, first_ + begin, first_ + end);
    if (!part.ok()) {
      error_ = part.status();
      return;
    }
    parts_.push_back(*std::move(part));
    for (int32_t i = begin; i < end; ++i) sent_[i] = true;
  }

  KvPort& port_;
  const std::vector<int32_t> blocks_;
  const KvDestination destination_;
  const int32_t first_;     // the global index of the port's first layer
  std::vector<bool> sent_;  // per local layer
  std::vector<std::unique_ptr<KvExport>> parts_;
  absl::Status error_;
};

}  // namespace

std::unique_ptr<KvExport> CombineExports(std::vector<std::unique_ptr<KvExport>> parts) {
  return std::make_unique<CombinedExport>(std::move(parts));
}

absl::StatusOr<std::unique_ptr<KvPort>> KvPort::Create(KvCache& cache,
                                                       kvtransfer::Transport& transport,
                                                       const KvPortOptions& options) {
  const KvCacheConfig& c = cache.config();
  std::unique_ptr<KvPort> port(new KvPort(transport, options));
  KvRankLayout& l = port->layout_;
  l.layer_begin = options.layer_begin;
  l.layer_end = options.layer_begin + c.num_layers;
  l.head_begin = options.head_begin;
  l.head_end = options.head_begin + c.kv_heads;
  l.block_size = c.block_size;
  l.head_dim = c.head_dim;
  l.num_blocks = c.num_blocks;
  l.dtype = c.dtype;
  l.transport_kind = std::string(transport.kind());
  port->block_bytes_ = l.BlockBytes();
  const uint64_t bytes = port->block_bytes_ * static_cast<uint64_t>(c.num_blocks);
  const bool staged = options.stage_through_host || cache.key(0).device().type != DeviceType::kCpu;
  if (staged) {
    port->backend_ = &cache.backend();
    absl::MutexLock lock(&port->stage_mu_);
    TESSERA_ASSIGN_OR_RETURN(port->stage_stream_, cache.backend().CreateStream());
  }
  for (int32_t layer = 0; layer < c.num_layers; ++layer) {
    for (bool key : {true, false}) {
      auto* memory =
          static_cast<uint8_t*>(key ? cache.key(layer).data() : cache.value(layer).data());
      Region region{layer, key, memory, nullptr};
      if (staged) {
        // Page-locked where the device has such memory, so that the staging copies run at
        // full speed; zeroed like the cache, so that what a send reads before any copy is
        // defined.
        TESSERA_ASSIGN_OR_RETURN(kernels::DeviceBuffer mirror, cache.backend().AllocateHost(bytes));
        region.base = static_cast<uint8_t*>(mirror.data());
        port->mirrors_.push_back(std::move(mirror));
        region.device = memory;
      }
      TESSERA_ASSIGN_OR_RETURN(kvtransfer::RegionId id,
                               transport.RegisterMemory(region.base, bytes));
      (key ? l.key_regions : l.value_regions).push_back(id);
      port->regions_[id] = region;
    }
  }
  TESSERA_RETURN_IF_ERROR(l.Validate());
  TESSERA_ASSIGN_OR_RETURN(l.descriptor, transport.LocalDescriptor());
  {
    absl::MutexLock lock(&port->mu_);
    port->block_owner_.assign(static_cast<size_t>(c.num_blocks), 0);
  }
  transport.SetWriteListener(port.get());
  return port;
}

KvPort::KvPort(kvtransfer::Transport& transport, const KvPortOptions& options)
    : transport_(transport),
      options_(options),
      checksum_thread_(std::make_unique<ChecksumThread>()) {}

KvPort::~KvPort() {
  checksum_thread_.reset();  // finishes the checksums still queued
  transport_.SetWriteListener(nullptr);
  for (const auto& [id, region] : regions_) {
    if (absl::Status s = transport_.DeregisterMemory(id); !s.ok()) {
      TESSERA_LOG(WARNING) << "KvPort: " << s;
    }
  }
}

KvPortCounters KvPort::counters() const {
  absl::MutexLock lock(&mu_);
  KvPortCounters c = counters_;
  c.reservations_open = 0;
  c.blocks_reserved = 0;
  for (const auto& [token, r] : reservations_) {
    if (!r.open) continue;
    ++c.reservations_open;
    c.blocks_reserved += static_cast<int64_t>(r.blocks.size());
  }
  return c;
}

const uint8_t* KvPort::LocalBase(kvtransfer::RegionId region) const {
  const auto it = regions_.find(region);
  return it == regions_.end() ? nullptr : it->second.base;
}

absl::Status KvPort::Stage(absl::Span<const int32_t> blocks, int32_t layer_begin, int32_t layer_end,
                           bool to_host) {
  if (backend_ == nullptr || blocks.empty()) return absl::OkStatus();
  // Runs of consecutive blocks go in one copy each: (offset, length) in every layer's regions.
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  for (size_t i = 0; i < blocks.size();) {
    size_t j = i + 1;
    while (j < blocks.size() && blocks[j] == blocks[j - 1] + 1) ++j;
    runs.emplace_back(static_cast<uint64_t>(blocks[i]) * block_bytes_,
                      static_cast<uint64_t>(j - i) * block_bytes_);
    i = j;
  }
  absl::MutexLock lock(&stage_mu_);
  for (int32_t layer = layer_begin; layer < layer_end; ++layer) {
    const auto at = static_cast<size_t>(layer - layout_.layer_begin);
    for (const Region* r :
         {&regions_.at(layout_.key_regions.at(at)), &regions_.at(layout_.value_regions.at(at))}) {
      for (const auto& [offset, length] : runs) {
        TESSERA_RETURN_IF_ERROR(
            to_host
                ? backend_->CopyToHost(r->device + offset, r->base + offset, length, *stage_stream_)
                : backend_->CopyToDevice(r->base + offset, r->device + offset, length,
                                         *stage_stream_));
      }
    }
  }
  return stage_stream_->Synchronize();
}

absl::StatusOr<kvtransfer::PeerId> KvPort::PeerFor(const std::string& descriptor) {
  {
    absl::MutexLock lock(&mu_);
    if (auto it = peers_.find(descriptor); it != peers_.end()) return it->second;
  }
  // Connect outside the lock: it may wait for the peer.
  TESSERA_ASSIGN_OR_RETURN(kvtransfer::PeerId peer, transport_.Connect(descriptor));
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = peers_.emplace(descriptor, peer);
  if (!inserted) (void)transport_.Disconnect(peer);  // another thread connected first
  return it->second;
}

absl::Status KvPort::Preconnect(const std::string& descriptor) {
  return PeerFor(descriptor).status();
}

absl::StatusOr<std::unique_ptr<KvExport>> KvPort::Export(absl::Span<const int32_t> blocks,
                                                         const KvDestination& destination) {
  return ExportFrom(layout_, blocks, destination);
}

absl::StatusOr<std::unique_ptr<KvExport>> KvPort::ExportLayers(absl::Span<const int32_t> blocks,
                                                               const KvDestination& destination,
                                                               int32_t layer_begin,
                                                               int32_t layer_end) {
  if (layer_begin < layout_.layer_begin || layer_end > layout_.layer_end ||
      layer_begin >= layer_end) {
    return absl::InvalidArgumentError(
        absl::StrCat("layers [", layer_begin, ", ", layer_end, ") are not in this rank's [",
                     layout_.layer_begin, ", ", layout_.layer_end, ")"));
  }
  KvRankLayout src = layout_;
  const auto first = static_cast<size_t>(layer_begin - layout_.layer_begin);
  const auto last = static_cast<size_t>(layer_end - layout_.layer_begin);
  src.layer_begin = layer_begin;
  src.layer_end = layer_end;
  src.key_regions.assign(layout_.key_regions.begin() + first, layout_.key_regions.begin() + last);
  src.value_regions.assign(layout_.value_regions.begin() + first,
                           layout_.value_regions.begin() + last);
  return ExportFrom(src, blocks, destination);
}

absl::StatusOr<std::unique_ptr<KvLayerStream>> KvPort::StreamLayers(
    absl::Span<const int32_t> blocks, const KvDestination& destination) {
  if (blocks.size() != destination.block_ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat("KV export of ", blocks.size(),
                                                   " blocks into a reservation of ",
                                                   destination.block_ids.size()));
  }
  return std::unique_ptr<KvLayerStream>(new PortLayerStream(*this, blocks, destination));
}

absl::StatusOr<std::unique_ptr<KvExport>> KvPort::ExportFrom(const KvRankLayout& src,
                                                             absl::Span<const int32_t> blocks,
                                                             const KvDestination& destination) {
  const absl::Time start = absl::Now();
  if (blocks.size() != destination.block_ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat("KV export of ", blocks.size(),
                                                   " blocks into a reservation of ",
                                                   destination.block_ids.size()));
  }
  // Plan every destination rank's segments first (PlanKvSegments validates the blocks), so that
  // nothing is copied or sent for an export that cannot run.
  std::vector<std::pair<size_t, std::vector<kvtransfer::Segment>>> plans;
  for (size_t rank = 0; options_.sends && rank < destination.ranks.size(); ++rank) {
    const KvRankLayout& dst = destination.ranks[rank];
    if (dst.transport_kind != layout_.transport_kind) {
      return absl::InvalidArgumentError(absl::StrCat("the decode replica's KV transport is ",
                                                     dst.transport_kind, ", this replica's is ",
                                                     layout_.transport_kind));
    }
    TESSERA_ASSIGN_OR_RETURN(
        std::vector<kvtransfer::Segment> segments,
        PlanKvSegments(src, blocks, dst, destination.block_ids, destination.token));
    if (!segments.empty()) plans.emplace_back(rank, std::move(segments));
  }
  // Staged: the blocks' bytes of the layers sent go to the mirror the transport reads.
  if (!plans.empty()) {
    TESSERA_RETURN_IF_ERROR(Stage(blocks, src.layer_begin, src.layer_end, /*to_host=*/true));
  }
  std::vector<std::unique_ptr<kvtransfer::Transfer>> transfers;
  auto checksums = std::make_shared<ChecksumJob>();
  for (const auto& [rank, segments] : plans) {
    for (const kvtransfer::Segment& s : segments) {
      checksums->sums.push_back(
          {static_cast<int32_t>(rank), s.remote_region, s.remote_offset, s.length, 0});
      checksums->data.push_back(LocalBase(s.local_region) + s.local_offset);
    }
    TESSERA_ASSIGN_OR_RETURN(kvtransfer::PeerId peer, PeerFor(destination.ranks[rank].descriptor));
    absl::StatusOr<std::unique_ptr<kvtransfer::Transfer>> transfer =
        transport_.Submit(peer, segments);
    if (!transfer.ok()) {
      absl::MutexLock lock(&mu_);
      ++counters_.transfers_failed;
      return transfer.status();
    }
    transfers.push_back(std::move(*transfer));
  }
  {
    absl::MutexLock lock(&mu_);
    counters_.transfers_sent += static_cast<int64_t>(transfers.size());
  }
  auto done = [this](bool ok, uint64_t bytes, absl::Duration took) {
    absl::MutexLock lock(&mu_);
    counters_.bytes_sent += static_cast<int64_t>(bytes);
    counters_.send_seconds += absl::ToDoubleSeconds(took);
    if (!ok) ++counters_.transfers_failed;
  };
  if (checksums->sums.empty()) {
    absl::MutexLock lock(&checksums->mu);
    checksums->done = true;
  } else {
    checksum_thread_->Post(checksums);
  }
  return std::unique_ptr<KvExport>(
      new KvExportImpl(std::move(transfers), std::move(checksums), std::move(done), start));
}

absl::Status KvPort::Reserve(uint64_t token, absl::Span<const int32_t> blocks) {
  if (token == 0) return absl::InvalidArgumentError("KV reservation token 0 is reserved");
  absl::MutexLock lock(&mu_);
  if (reservations_.contains(token)) {
    return absl::AlreadyExistsError(absl::StrCat("KV reservation ", token, " exists already"));
  }
  for (int32_t b : blocks) {
    if (b < 0 || b >= layout_.num_blocks) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV block ", b, " outside [0, ", layout_.num_blocks, ")"));
    }
    if (block_owner_[b] != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("KV block ", b, " is reserved by another transfer"));
    }
  }
  for (int32_t b : blocks) block_owner_[b] = token;
  Reservation r;
  r.blocks.assign(blocks.begin(), blocks.end());
  reservations_.emplace(token, std::move(r));
  return absl::OkStatus();
}

uint64_t KvPort::ReservationBytes(const Reservation& r) const {
  // Every layer, K and V, whole blocks.
  return static_cast<uint64_t>(r.blocks.size()) * block_bytes_ * 2 *
         static_cast<uint64_t>(layout_.layer_end - layout_.layer_begin);
}

absl::Status KvPort::CheckWriteLocked(const kvtransfer::WriteInfo& write) {
  const auto region = regions_.find(write.region);
  if (region == regions_.end()) {
    return absl::PermissionDeniedError(absl::StrCat("region ", write.region, " is not KV cache"));
  }
  const uint64_t end = write.offset + write.length;
  if (write.length == 0 || end < write.offset ||
      end > block_bytes_ * static_cast<uint64_t>(layout_.num_blocks)) {
    return absl::PermissionDeniedError("write outside the KV cache");
  }
  const auto first = static_cast<size_t>(write.offset / block_bytes_);
  const auto last = static_cast<size_t>((end - 1) / block_bytes_);
  for (size_t b = first; b <= last; ++b) {
    if (block_owner_[b] != write.tag || write.tag == 0) {
      return absl::PermissionDeniedError(
          absl::StrCat("KV block ", b, " is not reserved for transfer ", write.tag, " (from ",
                       write.peer_name, "): a stale or foreign write"));
    }
  }
  return absl::OkStatus();
}

absl::Status KvPort::Admit(const kvtransfer::WriteInfo& write) {
  absl::MutexLock lock(&mu_);
  absl::Status s = CheckWriteLocked(write);
  auto it = reservations_.find(write.tag);
  if (s.ok() && (it == reservations_.end() || !it->second.open)) {
    s = absl::PermissionDeniedError(absl::StrCat("KV transfer ", write.tag, " is closed"));
  }
  if (!s.ok()) {
    ++counters_.writes_refused;
    return s;
  }
  ++it->second.writes_in_flight;
  return absl::OkStatus();
}

void KvPort::Written(const kvtransfer::WriteInfo& write) {
  absl::MutexLock lock(&mu_);
  counters_.bytes_received += static_cast<int64_t>(write.length);
  auto it = reservations_.find(write.tag);
  if (it == reservations_.end()) return;
  --it->second.writes_in_flight;
  it->second.bytes_written += write.length;
}

void KvPort::NotWritten(const kvtransfer::WriteInfo& write, const absl::Status& why) {
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(write.tag);
  if (it == reservations_.end()) return;
  --it->second.writes_in_flight;
  TESSERA_LOG(DEBUG) << "KV transfer " << write.tag << ": a write from " << write.peer_name
                     << " stopped short: " << why;
}

absl::Status KvPort::CloseLocked(uint64_t token, Reservation& r) {
  r.open = false;
  auto quiet = [&r]() { return r.writes_in_flight == 0; };
  if (!mu_.AwaitWithTimeout(absl::Condition(&quiet), options_.quiesce_timeout)) {
    return absl::DeadlineExceededError(
        absl::StrCat("KV transfer ", token, ": ", r.writes_in_flight,
                     " admitted writes did not land in time; its blocks must not be reused"));
  }
  for (int32_t b : r.blocks) {
    if (block_owner_[b] == token) block_owner_[b] = 0;
  }
  return absl::OkStatus();
}

absl::Status KvPort::Commit(uint64_t token, absl::Span<const KvSegmentChecksum> checksums) {
  std::vector<int32_t> blocks;
  TESSERA_RETURN_IF_ERROR(Verify(token, checksums, &blocks));
  // Staged: the verified bytes go from the mirror to the cache before the engine reads them.
  return Stage(blocks, layout_.layer_begin, layout_.layer_end, /*to_host=*/false);
}

absl::Status KvPort::Verify(uint64_t token, absl::Span<const KvSegmentChecksum> checksums,
                            std::vector<int32_t>* blocks) {
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(token);
  if (it == reservations_.end() || !it->second.open) {
    return absl::NotFoundError(absl::StrCat("no open KV reservation ", token));
  }
  Reservation& r = it->second;
  auto fail = [&](absl::Status why) {
    ++counters_.checksum_failures;
    // Closed either way; kept (for Abort to retry the quiesce) while writes may still land.
    if (CloseLocked(token, r).ok()) reservations_.erase(token);
    return why;
  };
  // Writes admitted but not yet landed would be counted short: wait for them (bounded).
  auto quiet = [&r]() { return r.writes_in_flight == 0; };
  mu_.AwaitWithTimeout(absl::Condition(&quiet), options_.quiesce_timeout);
  const uint64_t expected = ReservationBytes(r);
  uint64_t covered = 0;
  for (const KvSegmentChecksum& c : checksums) {
    kvtransfer::WriteInfo range{c.region, c.offset, c.length, token, ""};
    if (absl::Status s = CheckWriteLocked(range); !s.ok()) {
      return fail(absl::DataLossError(absl::StrCat("KV transfer ", token, ": checksum range ",
                                                   c.region, "@", c.offset, "+", c.length,
                                                   " is outside its reservation")));
    }
    const uint8_t* data = LocalBase(c.region) + c.offset;
    if (KvChecksum(data, c.length) != c.checksum) {
      return fail(
          absl::DataLossError(absl::StrCat("KV transfer ", token, ": checksum mismatch in region ",
                                           c.region, " at ", c.offset, "+", c.length)));
    }
    covered += c.length;
  }
  if (covered != expected || r.bytes_written != expected) {
    return fail(absl::DataLossError(absl::StrCat(
        "KV transfer ", token, ": ", r.bytes_written, " bytes arrived and the checksums cover ",
        covered, ", of the ", expected, " the reserved blocks hold")));
  }
  absl::Status closed = CloseLocked(token, r);
  *blocks = std::move(r.blocks);
  reservations_.erase(token);
  ++counters_.commits;
  return closed;
}

absl::Status KvPort::Abort(uint64_t token) {
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(token);
  if (it == reservations_.end()) {
    return absl::NotFoundError(absl::StrCat("no KV reservation ", token));
  }
  absl::Status s = CloseLocked(token, it->second);
  reservations_.erase(it);
  return s;
}

}  // namespace tessera::worker
