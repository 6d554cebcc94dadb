#include "kvtransfer/grpc/grpc_transport.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <list>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/logging.h"
#include "common/net.h"
#include "common/rpc/grpc_status.h"
#include "grpc/grpc.h"
#include "grpcpp/channel.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/channel_arguments.h"
#include "kvtransfer/grpc/worker_pool.h"
#include "kvtransfer/region_table.h"
#include "tessera/v1/kvtransfer.grpc.pb.h"

namespace tessera::kvtransfer {
namespace {

using rpc::FromGrpcStatus;
using rpc::ToGrpcStatus;
using tessera::v1::KvPiece;
using tessera::v1::KvTransportDescriptor;
using tessera::v1::KvWriteRequest;
using tessera::v1::KvWriteResponse;

constexpr absl::string_view kDescriptorFormat = "tessera.kvtransfer.grpc/1";
constexpr int kMessageSlackBytes = 64 << 10;  // protobuf framing around a message's data
constexpr absl::Duration kStopWaitLimit = absl::Seconds(30);
// Transfers of at most this many messages read their acknowledgements after writing (see
// OutgoingTransfer::Call): 1024 acknowledgements take about 20 KiB on the wire.
constexpr uint64_t kAcksReadAfterWriting = 1024;
// Pool threads kept idle for the next transfers; more idle ones exit after the timeout.
constexpr size_t kIdleWorkers = 4;
constexpr absl::Duration kIdleWorkerTimeout = absl::Seconds(10);

// The installed WriteListener; calls hold a reader lock so that SetWriteListener waits for them.
class ListenerSlot {
 public:
  void Set(WriteListener* listener) {
    absl::WriterMutexLock lock(&mu_);
    listener_ = listener;
  }
  absl::Status Admit(const WriteInfo& write) {
    absl::ReaderMutexLock lock(&mu_);
    return listener_ == nullptr ? absl::OkStatus() : listener_->Admit(write);
  }
  void Written(const WriteInfo& write) {
    absl::ReaderMutexLock lock(&mu_);
    if (listener_ != nullptr) listener_->Written(write);
  }
  void NotWritten(const WriteInfo& write, const absl::Status& why) {
    absl::ReaderMutexLock lock(&mu_);
    if (listener_ != nullptr) listener_->NotWritten(write, why);
  }

 private:
  absl::Mutex mu_;
  WriteListener* listener_ ABSL_GUARDED_BY(mu_) = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Receiver: the synchronous handler of one incoming stream (one transfer), on a thread of the
// server's pool. It reads a message, validates, admits and copies its pieces, and acknowledges
// cumulatively; the sender reads the acknowledgements on its own thread, so they never block.

// The state of one incoming stream: the segment being received, when a piece left it open.
class IncomingStream {
 public:
  IncomingStream(RegionTable& regions, ListenerSlot& listener)
      : regions_(regions), listener_(listener) {}
  // A segment still open here was admitted and will not complete: the stream ended inside it
  // (the sender cancelled or went away) or a piece of it was malformed.
  ~IncomingStream() {
    if (!open_.has_value()) return;
    listener_.NotWritten(open_->info, absl::AbortedError("the stream ended inside the segment"));
    regions_.ReleaseDestination(open_->info.region);
  }

  IncomingStream(const IncomingStream&) = delete;
  IncomingStream& operator=(const IncomingStream&) = delete;

  uint64_t landed() const { return landed_; }
  bool InsideASegment() const { return open_.has_value(); }

  // Validates, admits and copies the pieces of `request`.
  absl::Status Process(const KvWriteRequest& request) {
    if (!request.sender_name().empty()) sender_name_ = request.sender_name();
    for (const KvPiece& piece : request.pieces()) {
      const uint64_t size = piece.data().size();
      if (!open_.has_value()) {
        if (piece.offset() != piece.segment_offset()) {
          return absl::InvalidArgumentError("a continuation piece without its segment's start");
        }
        absl::StatusOr<RegionTable::Place> destination = regions_.AcquireDestination(
            piece.region(), piece.segment_offset(), piece.segment_length());
        if (!destination.ok()) return destination.status();
        open_ = OpenSegment{WriteInfo{piece.region(), piece.segment_offset(),
                                      piece.segment_length(), piece.tag(), sender_name_},
                            destination->address, piece.segment_offset()};
        if (absl::Status admit = listener_.Admit(open_->info); !admit.ok()) {
          regions_.ReleaseDestination(piece.region());
          open_.reset();
          return admit;
        }
      } else if (piece.region() != open_->info.region ||
                 piece.segment_offset() != open_->info.offset ||
                 piece.segment_length() != open_->info.length || piece.tag() != open_->info.tag ||
                 piece.offset() != open_->next_offset) {
        return absl::InvalidArgumentError("a piece that does not continue the open segment");
      }
      const uint64_t end = open_->info.offset + open_->info.length;
      if (size == 0 || size > end - open_->next_offset) {
        return absl::InvalidArgumentError("a piece of a wrong size");
      }
      std::memcpy(open_->destination + (open_->next_offset - open_->info.offset),
                  piece.data().data(), size);
      open_->next_offset += size;
      landed_ += size;
      if (open_->next_offset == end) {
        listener_.Written(open_->info);
        regions_.ReleaseDestination(open_->info.region);
        open_.reset();
      }
    }
    return absl::OkStatus();
  }

 private:
  struct OpenSegment {
    WriteInfo info;
    char* destination = nullptr;
    uint64_t next_offset = 0;  // region offset the next piece must start at
  };

  RegionTable& regions_;
  ListenerSlot& listener_;
  std::string sender_name_;
  std::optional<OpenSegment> open_;
  uint64_t landed_ = 0;
};

class KvTransferService final : public tessera::v1::KvTransfer::Service {
 public:
  KvTransferService(RegionTable& regions, ListenerSlot& listener)
      : regions_(regions), listener_(listener) {}

  grpc::Status Write(grpc::ServerContext* context,
                     grpc::ServerReaderWriter<KvWriteResponse, KvWriteRequest>* stream) override {
    IncomingStream incoming(regions_, listener_);
    KvWriteRequest request;
    KvWriteResponse ack;
    // Read fails when the sender half-closed (all sent) or the call ended (cancelled, broken,
    // or the server shutting down).
    while (stream->Read(&request)) {
      if (absl::Status status = incoming.Process(request); !status.ok()) {
        return ToGrpcStatus(status);
      }
      ack.set_bytes_landed(incoming.landed());
      if (!stream->Write(ack)) break;  // the call ended; the sender knows why
    }
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    if (incoming.InsideASegment()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the stream ended inside a segment");
    }
    return grpc::Status::OK;
  }

 private:
  RegionTable& regions_;
  ListenerSlot& listener_;
};

// ---------------------------------------------------------------------------------------------
// Sender.

struct PeerConnection {
  std::string address;
  std::string name;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<tessera::v1::KvTransfer::Stub> stub;
  RemoteRegions regions;         // as the descriptor described them
  size_t max_message_bytes = 0;  // min(ours, the receiver's)
};

int64_t NowNanos() { return absl::ToUnixNanos(absl::Now()); }

// One outgoing transfer: a synchronous client stream run by Run() on a thread of the transport's
// WorkerPool (which writes; for a long transfer a second pool thread reads the acknowledgements).
// Shared by its Transfer handle, the transport's table of running transfers (weakly) and the
// pool task running it. Abort (Cancel, the watchdog,
// Disconnect, the transport's destructor) cancels the call's context, which makes every blocking
// Read, Write and Finish of the stream return at once.
class OutgoingTransfer final {
 public:
  OutgoingTransfer(PeerId peer, std::shared_ptr<PeerConnection> connection,
                   std::vector<Segment> segments, std::vector<const char*> sources,
                   RegionTable& local_regions, WorkerPool& pool, std::string sender_name)
      : peer_(peer),
        connection_(std::move(connection)),
        segments_(std::move(segments)),
        sources_(std::move(sources)),
        local_regions_(local_regions),
        pool_(pool),
        sender_name_(std::move(sender_name)) {
    for (const Segment& s : segments_) total_ += s.length;
    last_progress_ns_.store(NowNanos());
  }

  OutgoingTransfer(const OutgoingTransfer&) = delete;
  OutgoingTransfer& operator=(const OutgoingTransfer&) = delete;

  PeerId peer() const { return peer_; }

  // Runs the call to its end and records the outcome; on a pool thread.
  void Run() {
    const grpc::Status grpc_status = Call();
    local_regions_.ReleaseSources(segments_);  // local memory is no longer read
    absl::MutexLock lock(&mu_);
    // A Cancel that came before the end wins even when the call completed meanwhile
    // (Transfer::Cancel: kCancelled unless it had already finished); a progress timeout that
    // raced a completed call does not.
    if (grpc_status.ok() && !absl::IsCancelled(abort_status_)) {
      status_ = absl::OkStatus();
      bytes_done_.store(total_);
    } else if (!abort_status_.ok()) {
      status_ = abort_status_;
    } else if (grpc_status.error_code() == grpc::StatusCode::CANCELLED ||
               grpc_status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      status_ = absl::UnavailableError(absl::StrCat("KvTransfer.Write to '", connection_->name,
                                                    "' at ", connection_->address, ": ",
                                                    grpc_status.error_message()));
    } else {
      status_ = FromGrpcStatus(absl::StrCat("KvTransfer.Write to '", connection_->name, "'"),
                               grpc_status);
    }
    done_ = true;
  }

  // Ends the call with `status` as the transfer's outcome (unless it finished first).
  void Abort(absl::Status status) {
    {
      absl::MutexLock lock(&mu_);
      if (done_ || !abort_status_.ok()) return;
      abort_status_ = std::move(status);
    }
    aborted_.store(true);
    context_.TryCancel();  // thread-safe; before the call starts it cancels the call at its start
  }
  void Cancel() { Abort(absl::CancelledError("transfer cancelled")); }

  // Aborts with kUnavailable when nothing moved for `timeout`.
  void CheckProgress(absl::Duration timeout) {
    const absl::Duration idle = absl::Nanoseconds(NowNanos() - last_progress_ns_.load());
    if (idle > timeout && !Done()) {
      Abort(absl::UnavailableError(absl::StrCat("peer '", connection_->name, "' at ",
                                                connection_->address, " silent for ",
                                                absl::FormatDuration(idle))));
    }
  }

  bool Done() {
    absl::MutexLock lock(&mu_);
    return done_;
  }

  absl::Status Wait(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
      return absl::DeadlineExceededError(
          absl::StrCat("transfer still running after ", absl::FormatDuration(timeout)));
    }
    return status_;
  }

  uint64_t bytes_done() const { return bytes_done_.load(std::memory_order_relaxed); }

 private:
  using Stream = grpc::ClientReaderWriter<KvWriteRequest, KvWriteResponse>;

  grpc::Status Call() {
    std::unique_ptr<Stream> stream = connection_->stub->Write(&context_);
    auto read_acks = [this, s = stream.get()] {
      KvWriteResponse response;
      while (s->Read(&response)) {
        last_progress_ns_.store(NowNanos());
        bytes_done_.store(response.bytes_landed(), std::memory_order_relaxed);
      }
    };
    // The receiver acknowledges every message (a few dozen bytes on the wire). When all of them
    // fit in HTTP/2's smallest flow-control window (64 KiB) its acknowledgements never block, so
    // this thread reads them after writing; otherwise a second pool thread reads them meanwhile
    // (one reader and one writer may use a stream concurrently; the pool never queues it).
    const uint64_t message_bytes = connection_->max_message_bytes;
    const uint64_t messages = (total_ + message_bytes - 1) / message_bytes + segments_.size();
    const bool concurrent_reader = messages > kAcksReadAfterWriting;
    absl::Notification acks_read;
    if (concurrent_reader) {
      pool_.Run([&read_acks, &acks_read] {
        read_acks();
        acks_read.Notify();
      });
    }
    KvWriteRequest request;
    bool last = false;
    while (!last && !aborted_.load()) {
      last = FillNext(request);
      grpc::WriteOptions options;
      if (last) options.set_last_message();  // also half-closes
      // A failed write means the call is over (the receiver ended it, or it was cancelled or
      // broke): Finish says why.
      if (!stream->Write(request, options)) break;
      last_progress_ns_.store(NowNanos());
    }
    // Here the call is over or ending: a failed write means it ended, and an abort cancelled it
    // (which also keeps the receiver's status, if it came first). So the reads end too.
    if (concurrent_reader) {
      acks_read.WaitForNotification();  // the reads end with the call (above)
    } else {
      read_acks();
    }
    return stream->Finish();
  }

  // Fills `request` with up to max_message_bytes of pieces; true when it holds the last one.
  bool FillNext(KvWriteRequest& request) {
    request.Clear();
    if (!sent_name_) {
      request.set_sender_name(sender_name_);
      sent_name_ = true;
    }
    size_t budget = connection_->max_message_bytes;
    while (next_segment_ < segments_.size() && budget > 0) {
      const Segment& s = segments_[next_segment_];
      const uint64_t n = std::min<uint64_t>(budget, s.length - next_offset_);
      KvPiece* piece = request.add_pieces();
      piece->set_region(s.remote_region);
      piece->set_segment_offset(s.remote_offset);
      piece->set_segment_length(s.length);
      piece->set_offset(s.remote_offset + next_offset_);
      piece->set_tag(s.tag);
      piece->mutable_data()->assign(sources_[next_segment_] + next_offset_, n);
      budget -= n;
      next_offset_ += n;
      if (next_offset_ == s.length) {
        ++next_segment_;
        next_offset_ = 0;
      }
    }
    return next_segment_ == segments_.size();
  }

  const PeerId peer_;
  const std::shared_ptr<PeerConnection> connection_;
  const std::vector<Segment> segments_;
  const std::vector<const char*> sources_;
  RegionTable& local_regions_;
  WorkerPool& pool_;
  const std::string sender_name_;
  uint64_t total_ = 0;
  grpc::ClientContext context_;
  // Write side (the thread running Run only).
  bool sent_name_ = false;
  size_t next_segment_ = 0;
  uint64_t next_offset_ = 0;
  std::atomic<bool> aborted_{false};
  std::atomic<uint64_t> bytes_done_{0};
  std::atomic<int64_t> last_progress_ns_{0};
  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  absl::Status abort_status_ ABSL_GUARDED_BY(mu_);  // why we cancelled, when we did
};

// The Transfer handle: its destructor cancels and waits (bounded) until the transfer is done,
// i.e. its local memory is no longer read. The pool task may still hold the transfer a moment
// longer; the transport's destructor joins the pool.
class GrpcTransferHandle final : public Transfer {
 public:
  explicit GrpcTransferHandle(std::shared_ptr<OutgoingTransfer> transfer)
      : transfer_(std::move(transfer)) {}
  ~GrpcTransferHandle() override {
    transfer_->Cancel();
    if (absl::IsDeadlineExceeded(transfer_->Wait(kStopWaitLimit))) {
      // Never expected (a cancelled call returns at once); the pool task keeps it alive.
      TESSERA_LOG(ERROR) << "GrpcTransport: a cancelled transfer did not end within "
                         << kStopWaitLimit;
    }
  }
  bool Done() override { return transfer_->Done(); }
  absl::Status Wait(absl::Duration timeout) override { return transfer_->Wait(timeout); }
  void Cancel() override { transfer_->Cancel(); }
  uint64_t bytes_done() const override { return transfer_->bytes_done(); }

 private:
  std::shared_ptr<OutgoingTransfer> transfer_;
};

// An empty segment list: done at once.
class CompletedTransfer final : public Transfer {
 public:
  bool Done() override { return true; }
  absl::Status Wait(absl::Duration) override { return absl::OkStatus(); }
  void Cancel() override {}
  uint64_t bytes_done() const override { return 0; }
};

// gRPC initializes its library when its first object (server, channel, ...) is made and shuts it
// down when the last one goes. That shutdown waits, up to 10 s, for its I/O objects (sockets of
// connections just closed) to be freed, which on a loaded machine stalls the destructor of the
// last transport. One initialization, never undone, keeps the library up for the life of the
// process (as any long-lived server or channel would).
void KeepGrpcInitialized() {
  static const bool initialized = [] {
    grpc_init();
    return true;
  }();
  (void)initialized;
}

std::string AdvertisedAddress(const GrpcTransportOptions& options, int port) {
  std::string host = options.advertise_host;
  if (host.empty()) {
    host = HostOf(options.listen_address);
    if (IsWildcardHost(host)) host = "127.0.0.1";
  }
  return HostPort(host, port);
}

}  // namespace

class GrpcTransport::Impl {
 public:
  Impl(const TransportOptions& options, const GrpcTransportOptions& grpc_options)
      : options_(options), grpc_options_(grpc_options), service_(regions_, listener_) {}

  ~Impl() {
    // Incoming first: no stream writes into our regions after this.
    if (server_ != nullptr) {
      server_->Shutdown(absl::ToChronoTime(absl::Now()));
      server_->Wait();
    }
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    if (watchdog_.joinable()) watchdog_.join();
    for (auto& transfer : Running([](const OutgoingTransfer&) { return true; })) {
      transfer->Abort(absl::CancelledError("transport destroyed"));
      if (absl::IsDeadlineExceeded(transfer->Wait(kStopWaitLimit))) {
        TESSERA_LOG(ERROR) << "GrpcTransport '" << options_.name
                           << "': a transfer did not end within " << kStopWaitLimit;
      }
    }
  }

  absl::Status Start() {
    KeepGrpcInitialized();
    if (grpc_options_.max_message_bytes == 0) {
      return absl::InvalidArgumentError("GrpcTransport: max_message_bytes must be > 0");
    }
    int port = 0;
    grpc::ServerBuilder builder;
    builder.AddListeningPort(grpc_options_.listen_address, grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(&service_);
    builder.SetMaxReceiveMessageSize(MaxGrpcMessage());
    builder.SetMaxSendMessageSize(MaxGrpcMessage());
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || port == 0) {
      return absl::UnavailableError(
          absl::StrCat("GrpcTransport: cannot listen on '", grpc_options_.listen_address, "'"));
    }
    port_ = port;
    address_ = AdvertisedAddress(grpc_options_, port);
    watchdog_ = std::thread([this] { WatchdogLoop(); });
    return absl::OkStatus();
  }

  int port() const { return port_; }

  absl::StatusOr<RegionId> RegisterMemory(void* base, size_t length) {
    if (absl::Status status = CheckRegisterMemory(base, length); !status.ok()) return status;
    return regions_.Register(base, length);
  }

  absl::Status DeregisterMemory(RegionId region) { return regions_.Deregister(region).status(); }

  std::string LocalDescriptor() {
    KvTransportDescriptor descriptor;
    descriptor.set_format(std::string(kDescriptorFormat));
    descriptor.set_address(address_);
    descriptor.set_name(options_.name);
    descriptor.set_max_message_bytes(grpc_options_.max_message_bytes);
    for (const auto& [id, length] : regions_.List()) {
      KvTransportDescriptor::Region* region = descriptor.add_regions();
      region->set_id(id);
      region->set_length(length);
    }
    return descriptor.SerializeAsString();
  }

  absl::StatusOr<PeerId> Connect(absl::string_view blob) {
    KvTransportDescriptor descriptor;
    if (!descriptor.ParseFromArray(blob.data(), static_cast<int>(blob.size())) ||
        descriptor.format() != kDescriptorFormat || descriptor.address().empty() ||
        descriptor.max_message_bytes() == 0) {
      return absl::InvalidArgumentError("Connect: not a gRPC transport descriptor");
    }
    auto connection = std::make_shared<PeerConnection>();
    connection->address = descriptor.address();
    connection->name = descriptor.name();
    connection->max_message_bytes =
        std::min<uint64_t>(grpc_options_.max_message_bytes, descriptor.max_message_bytes());
    for (const auto& region : descriptor.regions()) {
      connection->regions[region.id()] = region.length();
    }
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(MaxGrpcMessage());
    args.SetMaxReceiveMessageSize(MaxGrpcMessage());
    // Each Connect gets its own connection (a fresh PeerId must not share a broken one).
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    connection->channel =
        grpc::CreateCustomChannel(connection->address, grpc::InsecureChannelCredentials(), args);
    if (!connection->channel->WaitForConnected(
            absl::ToChronoTime(absl::Now() + options_.connect_timeout))) {
      return absl::UnavailableError(absl::StrCat("Connect: peer '", connection->name, "' at ",
                                                 connection->address, " not reachable within ",
                                                 absl::FormatDuration(options_.connect_timeout)));
    }
    connection->stub = tessera::v1::KvTransfer::NewStub(connection->channel);
    absl::MutexLock lock(&mu_);
    const PeerId id = next_peer_++;
    peers_[id] = std::move(connection);
    return id;
  }

  absl::Status Disconnect(PeerId peer) {
    {
      absl::MutexLock lock(&mu_);
      if (peers_.erase(peer) == 0) return absl::NotFoundError(absl::StrCat("unknown peer ", peer));
    }
    for (auto& transfer : Running([peer](const OutgoingTransfer& r) { return r.peer() == peer; })) {
      transfer->Abort(absl::CancelledError("peer disconnected"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Transfer>> Submit(PeerId peer,
                                                   absl::Span<const Segment> segments) {
    std::shared_ptr<PeerConnection> connection;
    {
      absl::MutexLock lock(&mu_);
      auto it = peers_.find(peer);
      if (it == peers_.end()) {
        return absl::InvalidArgumentError(absl::StrCat("Submit: unknown peer ", peer));
      }
      connection = it->second;
    }
    if (absl::Status status = CheckRemoteSegments(segments, connection->regions); !status.ok()) {
      return status;
    }
    absl::StatusOr<std::vector<RegionTable::Place>> places = regions_.AcquireSources(segments);
    if (!places.ok()) return places.status();
    std::vector<const char*> sources;
    for (const RegionTable::Place& place : *places) sources.push_back(place.address);
    if (segments.empty()) return std::unique_ptr<Transfer>(new CompletedTransfer());
    auto transfer = std::make_shared<OutgoingTransfer>(
        peer, std::move(connection), std::vector<Segment>(segments.begin(), segments.end()),
        std::move(sources), regions_, pool_, options_.name);
    {
      absl::MutexLock lock(&mu_);
      running_.remove_if([](const std::weak_ptr<OutgoingTransfer>& r) { return r.expired(); });
      running_.push_back(transfer);
    }
    pool_.Run([transfer] { transfer->Run(); });
    return std::unique_ptr<Transfer>(new GrpcTransferHandle(std::move(transfer)));
  }

  void SetWriteListener(WriteListener* listener) { listener_.Set(listener); }

 private:
  int MaxGrpcMessage() const {
    return static_cast<int>(
        std::min<size_t>(grpc_options_.max_message_bytes + kMessageSlackBytes, INT32_MAX));
  }

  template <typename Predicate>
  std::vector<std::shared_ptr<OutgoingTransfer>> Running(Predicate predicate) {
    std::vector<std::shared_ptr<OutgoingTransfer>> out;
    absl::MutexLock lock(&mu_);
    for (const auto& weak : running_) {
      if (auto r = weak.lock(); r != nullptr && predicate(*r)) out.push_back(std::move(r));
    }
    return out;
  }

  // Fails transfers whose peer neither took data nor acknowledged for peer_timeout.
  void WatchdogLoop() {
    const absl::Duration period =
        std::clamp(options_.peer_timeout / 10, absl::Milliseconds(10), absl::Seconds(1));
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
        if (mu_.AwaitWithTimeout(absl::Condition(&stopping), period)) return;
      }
      for (auto& transfer : Running([](const OutgoingTransfer&) { return true; })) {
        transfer->CheckProgress(options_.peer_timeout);
      }
    }
  }

  const TransportOptions options_;
  const GrpcTransportOptions grpc_options_;
  RegionTable regions_;
  ListenerSlot listener_;
  KvTransferService service_;  // outlives server_
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string address_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  PeerId next_peer_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<PeerId, std::shared_ptr<PeerConnection>> peers_ ABSL_GUARDED_BY(mu_);
  std::list<std::weak_ptr<OutgoingTransfer>> running_ ABSL_GUARDED_BY(mu_);
  std::thread watchdog_;
  // Runs the outgoing transfers. Last: destroyed (joined) first, before what its tasks use.
  WorkerPool pool_{WorkerPoolOptions{kIdleWorkers, kIdleWorkerTimeout, kStopWaitLimit}};
};

absl::StatusOr<std::unique_ptr<GrpcTransport>> GrpcTransport::Create(
    const TransportOptions& options, const GrpcTransportOptions& grpc_options) {
  auto impl = std::make_unique<Impl>(options, grpc_options);
  if (absl::Status status = impl->Start(); !status.ok()) return status;
  return std::unique_ptr<GrpcTransport>(new GrpcTransport(std::move(impl)));
}

GrpcTransport::GrpcTransport(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GrpcTransport::~GrpcTransport() = default;

int GrpcTransport::port() const { return impl_->port(); }
absl::StatusOr<RegionId> GrpcTransport::RegisterMemory(void* base, size_t length) {
  return impl_->RegisterMemory(base, length);
}
absl::Status GrpcTransport::DeregisterMemory(RegionId region) {
  return impl_->DeregisterMemory(region);
}
absl::StatusOr<std::string> GrpcTransport::LocalDescriptor() { return impl_->LocalDescriptor(); }
absl::StatusOr<PeerId> GrpcTransport::Connect(absl::string_view descriptor) {
  return impl_->Connect(descriptor);
}
absl::Status GrpcTransport::Disconnect(PeerId peer) { return impl_->Disconnect(peer); }
absl::StatusOr<std::unique_ptr<Transfer>> GrpcTransport::Submit(
    PeerId peer, absl::Span<const Segment> segments) {
  return impl_->Submit(peer, segments);
}
void GrpcTransport::SetWriteListener(WriteListener* listener) { impl_->SetWriteListener(listener); }

}  // namespace tessera::kvtransfer
