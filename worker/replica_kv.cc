#include "worker/replica_kv.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace tessera::worker {
namespace {

// Commands, the first word of each.
enum Op : int64_t {
  kLayout = 1,      // -> layout
  kReserve = 2,     // token, blocks
  kCommit = 3,      // token, checksums (every rank's)
  kAbort = 4,       // token
  kExport = 5,      // id, blocks, destination -> (started)
  kPoll = 6,        // id -> state [, checksums | status]
  kCancel = 7,      // id
  kPreconnect = 8,  // descriptor
  kStream = 9,      // id, blocks, destination -> (opened)
};
// Export states in a poll reply.
constexpr int64_t kRunning = 0;
constexpr int64_t kSent = 1;
constexpr int64_t kFailed = 2;

// The words of a command or reply: integers, lists of integers and byte strings (8 per word).
class Writer {
 public:
  Writer& Int(int64_t v) {
    words_.push_back(v);
    return *this;
  }
  template <typename T>
  Writer& Ints(const std::vector<T>& v) {
    Int(static_cast<int64_t>(v.size()));
    for (const T& x : v) Int(static_cast<int64_t>(x));
    return *this;
  }
  template <typename T>
  Writer& Ints(absl::Span<const T> v) {
    Int(static_cast<int64_t>(v.size()));
    for (const T& x : v) Int(static_cast<int64_t>(x));
    return *this;
  }
  Writer& Double(double d) {
    int64_t w;
    std::memcpy(&w, &d, sizeof(w));
    return Int(w);
  }
  Writer& Bytes(const std::string& s) {
    Int(static_cast<int64_t>(s.size()));
    for (size_t at = 0; at < s.size(); at += 8) {
      int64_t w = 0;
      std::memcpy(&w, s.data() + at, std::min<size_t>(8, s.size() - at));
      words_.push_back(w);
    }
    return *this;
  }
  Writer& Status(const absl::Status& s) {
    return Int(static_cast<int64_t>(s.code())).Bytes(std::string(s.message()));
  }
  Writer& Layout(const KvRankLayout& l) {
    Int(l.layer_begin).Int(l.layer_end).Int(l.head_begin).Int(l.head_end);
    Int(l.block_size).Int(l.head_dim).Int(l.num_blocks).Int(static_cast<int64_t>(l.dtype));
    Ints(l.key_regions).Ints(l.value_regions);
    return Bytes(l.transport_kind).Bytes(l.descriptor);
  }
  Writer& Checksums(absl::Span<const KvSegmentChecksum> sums) {
    Int(static_cast<int64_t>(sums.size()));
    for (const KvSegmentChecksum& c : sums) {
      Int(c.rank).Int(static_cast<int64_t>(c.region)).Int(static_cast<int64_t>(c.offset));
      Int(static_cast<int64_t>(c.length)).Int(static_cast<int64_t>(c.checksum));
    }
    return *this;
  }
  Writer& Counters(const KvPortCounters& c) {
    Int(c.bytes_sent).Int(c.bytes_received).Int(c.transfers_sent).Int(c.transfers_failed);
    return Int(c.writes_refused);
  }
  std::vector<int64_t> Take() { return std::move(words_); }

 private:
  std::vector<int64_t> words_;
};

// Reads what Writer wrote; any overrun or bad size sets ok() false (and reads zeros after).
class Reader {
 public:
  explicit Reader(absl::Span<const int64_t> words) : words_(words) {}
  bool ok() const { return ok_; }
  bool done() const { return at_ == words_.size(); }
  size_t position() const { return at_; }
  int64_t Int() {
    if (!ok_ || at_ >= words_.size()) {
      ok_ = false;
      return 0;
    }
    return words_[at_++];
  }
  template <typename T>
  std::vector<T> Ints() {
    const int64_t n = Int();
    std::vector<T> out;
    if (n < 0 || static_cast<size_t>(n) > words_.size() - std::min(at_, words_.size())) {
      ok_ = false;
      return out;
    }
    out.reserve(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out.push_back(static_cast<T>(Int()));
    return out;
  }
  double Double() {
    const int64_t w = Int();
    double d;
    std::memcpy(&d, &w, sizeof(d));
    return d;
  }
  std::string Bytes() {
    const int64_t n = Int();
    if (n < 0 || static_cast<size_t>((n + 7) / 8) > words_.size() - std::min(at_, words_.size())) {
      ok_ = false;
      return {};
    }
    std::string s(static_cast<size_t>(n), '\0');
    for (int64_t at = 0; at < n; at += 8) {
      const int64_t w = Int();
      std::memcpy(s.data() + at, &w, static_cast<size_t>(std::min<int64_t>(8, n - at)));
    }
    return s;
  }
  absl::Status Status() {
    const int64_t code = Int();
    std::string message = Bytes();
    if (code < 0 || code > static_cast<int64_t>(absl::StatusCode::kUnauthenticated)) {
      ok_ = false;
      return absl::DataLossError("a follower's reply carries an unknown status code");
    }
    return {static_cast<absl::StatusCode>(code), message};
  }
  KvRankLayout Layout() {
    KvRankLayout l;
    l.layer_begin = static_cast<int32_t>(Int());
    l.layer_end = static_cast<int32_t>(Int());
    l.head_begin = static_cast<int32_t>(Int());
    l.head_end = static_cast<int32_t>(Int());
    l.block_size = static_cast<int32_t>(Int());
    l.head_dim = static_cast<int32_t>(Int());
    l.num_blocks = static_cast<int32_t>(Int());
    l.dtype = static_cast<DataType>(Int());
    l.key_regions = Ints<kvtransfer::RegionId>();
    l.value_regions = Ints<kvtransfer::RegionId>();
    l.transport_kind = Bytes();
    l.descriptor = Bytes();
    return l;
  }
  std::vector<KvSegmentChecksum> Checksums() {
    const int64_t n = Int();
    std::vector<KvSegmentChecksum> out;
    constexpr size_t kWords = 5;
    if (n < 0 || static_cast<size_t>(n) > (words_.size() - std::min(at_, words_.size())) / kWords) {
      ok_ = false;
      return out;
    }
    for (int64_t i = 0; i < n; ++i) {
      KvSegmentChecksum c;
      c.rank = static_cast<int32_t>(Int());
      c.region = static_cast<kvtransfer::RegionId>(Int());
      c.offset = static_cast<uint64_t>(Int());
      c.length = static_cast<uint64_t>(Int());
      c.checksum = static_cast<uint64_t>(Int());
      out.push_back(c);
    }
    return out;
  }
  KvPortCounters Counters() {
    KvPortCounters c;
    c.bytes_sent = Int();
    c.bytes_received = Int();
    c.transfers_sent = Int();
    c.transfers_failed = Int();
    c.writes_refused = Int();
    return c;
  }

 private:
  absl::Span<const int64_t> words_;
  size_t at_ = 0;
  bool ok_ = true;
};

Writer& Destination(Writer& w, const KvDestination& d) {
  w.Int(static_cast<int64_t>(d.token)).Int(d.num_cached_tokens).Ints(d.block_ids);
  w.Int(static_cast<int64_t>(d.ranks.size()));
  for (const KvRankLayout& l : d.ranks) w.Layout(l);
  return w;
}

KvDestination ReadDestination(Reader& r) {
  KvDestination d;
  d.token = static_cast<uint64_t>(r.Int());
  d.num_cached_tokens = static_cast<int32_t>(r.Int());
  d.block_ids = r.Ints<int32_t>();
  const int64_t ranks = r.Int();
  for (int64_t i = 0; r.ok() && i < ranks; ++i) d.ranks.push_back(r.Layout());
  return d;
}

std::vector<KvSegmentChecksum> OfRank(absl::Span<const KvSegmentChecksum> sums, int rank) {
  std::vector<KvSegmentChecksum> out;
  for (const KvSegmentChecksum& c : sums) {
    if (c.rank == rank) out.push_back(c);
  }
  return out;
}

absl::Status OnRank(int rank, const absl::Status& s) {
  if (s.ok()) return s;
  return {s.code(), absl::StrCat("replica rank ", rank, ": ", s.message())};
}

// The first follower's error (replies in rank order from rank 1), or OK.
template <typename Reply>
absl::Status FirstError(const std::vector<Reply>& replies) {
  for (size_t i = 0; i < replies.size(); ++i) {
    if (!replies[i].status.ok()) return OnRank(static_cast<int>(i) + 1, replies[i].status);
  }
  return absl::OkStatus();
}

}  // namespace

KvPortOptions KvPortOptionsFor(const parallel::ShardPlan& plan, int64_t model_kv_heads) {
  KvPortOptions o;
  o.layer_begin = static_cast<int32_t>(plan.layer_begin);
  o.head_begin = static_cast<int32_t>(plan.kv_head_begin);
  if (model_kv_heads > 0 && plan.tp_size > model_kv_heads) {
    const int64_t copies = plan.tp_size / model_kv_heads;
    o.sends = plan.tp_rank % copies == 0;
  }
  return o;
}

// --- the leader's export: its own transfers and every follower's

// Written by the posted commands' handlers (on whichever thread received the replies), taken by
// the export.
struct ReplicaKvPort::ExportInbox {
  using Replies = absl::StatusOr<std::vector<ReplicaKvPort::Reply>>;
  absl::Mutex mu;
  std::optional<Replies> start ABSL_GUARDED_BY(mu);  // the followers' start of the export or stream
  std::optional<Replies> poll ABSL_GUARDED_BY(mu);   // the latest poll's
};

class ReplicaKvExport final : public KvExport {
 public:
  using Inbox = ReplicaKvPort::ExportInbox;
  using Replies = Inbox::Replies;

  // `inbox` receives the followers' replies to the start and the polls.
  ReplicaKvExport(ReplicaKvPort& port, uint64_t id, std::unique_ptr<KvExport> local, int followers,
                  std::shared_ptr<Inbox> inbox)
      : port_(port),
        id_(id),
        local_(std::move(local)),
        remote_(static_cast<size_t>(followers)),
        inbox_(std::move(inbox)),
        start_(absl::Now()) {}
  ~ReplicaKvExport() override {
    if (!remote_done_) Cancel();
    local_.reset();
  }

  bool Done() override {
    if (remote_done_) return local_->Done();
    TakeReplies();
    if (remote_done_) return local_->Done();
    if (!local_->Done()) return false;
    // The followers are asked once this rank's sends are done, one poll at a time.
    if (!polling_) {
      polling_ = true;
      port_.Post(Writer().Int(kPoll).Int(static_cast<int64_t>(id_)).Take(),
                 [inbox = inbox_](Replies replies) {
                   absl::MutexLock lock(&inbox->mu);
                   inbox->poll = std::move(replies);
                 });
    }
    return false;
  }

  absl::StatusOr<std::vector<KvSegmentChecksum>> Wait(absl::Duration timeout) override {
    const absl::Time give_up = absl::Now() + timeout;
    while (!Done()) {
      if (absl::Now() >= give_up) return absl::DeadlineExceededError("the KV export is running");
      // Nobody may be submitting steps for the posted polls to ride with.
      if (absl::Status s = port_.executor_.FlushPosted(); !s.ok()) {
        TakeReplies();
        if (!remote_done_) return s;
      }
      absl::SleepFor(absl::Microseconds(200));
    }
    absl::StatusOr<std::vector<KvSegmentChecksum>> sums = local_->Wait(absl::ZeroDuration());
    absl::Status first = sums.status();
    for (const Remote& r : remote_) {
      if (first.ok() && !r.status.ok()) first = r.status;
    }
    if (!reported_) {
      reported_ = true;
      port_.ExportEnded(absl::Now() - start_);
    }
    if (!first.ok()) return first;
    for (const Remote& r : remote_) sums->insert(sums->end(), r.sums.begin(), r.sums.end());
    return sums;
  }

  void Cancel() override {
    local_->Cancel();
    if (remote_done_) return;
    remote_done_ = true;
    // Each follower's export ends (and its memory is no longer read) before it runs a later step.
    port_.CancelFollowers(id_);
    for (Remote& r : remote_) {
      if (r.status.ok() && !r.sent) r.status = absl::CancelledError("the KV export was cancelled");
    }
  }

 private:
  struct Remote {
    bool sent = false;
    absl::Status status;
    std::vector<KvSegmentChecksum> sums;
  };

  // Applies the replies that came: the start's (a follower that could not start has failed), then
  // the poll's.
  void TakeReplies() {
    std::optional<Replies> start;
    std::optional<Replies> poll;
    {
      absl::MutexLock lock(&inbox_->mu);
      start.swap(inbox_->start);
      poll.swap(inbox_->poll);
    }
    if (start.has_value()) {
      for (size_t i = 0; i < remote_.size(); ++i) {
        Remote& r = remote_[i];
        if (!r.status.ok()) continue;
        if (!start->ok()) {
          r.status = start->status();
        } else if (!(**start)[i].status.ok()) {
          r.status = OnRank(static_cast<int>(i) + 1, (**start)[i].status);
        }
      }
    }
    if (poll.has_value()) {
      polling_ = false;
      ApplyPoll(*poll);
    }
    bool all = true;
    for (const Remote& r : remote_) all &= r.sent || !r.status.ok();
    remote_done_ = all;
  }

  void ApplyPoll(const Replies& replies) {
    for (size_t i = 0; i < remote_.size(); ++i) {
      Remote& r = remote_[i];
      if (r.sent || !r.status.ok()) continue;
      if (!replies.ok()) {
        r.status = replies.status();
        continue;
      }
      const ReplicaKvPort::Reply& reply = (*replies)[i];
      Reader in(reply.payload);
      const int64_t state = reply.status.ok() ? in.Int() : kFailed;
      if (!reply.status.ok()) {
        r.status = OnRank(static_cast<int>(i) + 1, reply.status);
      } else if (state == kSent) {
        r.sums = in.Checksums();
        r.sent = true;
      } else if (state == kFailed) {
        r.status = OnRank(static_cast<int>(i) + 1, in.Status());
      }
      if (!in.ok()) r.status = absl::DataLossError("a malformed export poll reply");
    }
  }

  ReplicaKvPort& port_;
  const uint64_t id_;
  std::unique_ptr<KvExport> local_;
  std::vector<Remote> remote_;  // per follower (rank i + 1)
  const std::shared_ptr<Inbox> inbox_;
  bool polling_ = false;      // a poll is out
  bool remote_done_ = false;  // every follower's export has ended (or was cancelled)
  bool reported_ = false;
  const absl::Time start_;
};

// --- the leader's layer stream: its own stream, the followers' opened under the same id

class ReplicaLayerStream final : public KvLayerStream {
 public:
  ReplicaLayerStream(ReplicaKvPort& port, uint64_t id, std::unique_ptr<KvLayerStream> local,
                     int followers, std::shared_ptr<ReplicaKvPort::ExportInbox> inbox)
      : port_(port),
        id_(id),
        local_(std::move(local)),
        followers_(followers),
        inbox_(std::move(inbox)) {}
  ~ReplicaLayerStream() override {
    if (!finished_) port_.CancelFollowers(id_);
  }

  void LayerWritten(int32_t layer) override { local_->LayerWritten(layer); }

  absl::StatusOr<std::unique_ptr<KvExport>> Finish() override {
    finished_ = true;
    absl::StatusOr<std::unique_ptr<KvExport>> local = local_->Finish();
    if (!local.ok()) {
      port_.CancelFollowers(id_);
      return local.status();
    }
    // The followers finished theirs when their step ended; the export polls them.
    return std::unique_ptr<KvExport>(
        new ReplicaKvExport(port_, id_, *std::move(local), followers_, inbox_));
  }

 private:
  ReplicaKvPort& port_;
  const uint64_t id_;
  std::unique_ptr<KvLayerStream> local_;
  const int followers_;
  const std::shared_ptr<ReplicaKvPort::ExportInbox> inbox_;
  bool finished_ = false;
};

// --- the leader's port

absl::StatusOr<std::unique_ptr<ReplicaKvPort>> ReplicaKvPort::Create(KvPort& local,
                                                                     ReplicaExecutor& executor) {
  std::unique_ptr<ReplicaKvPort> port(new ReplicaKvPort(local, executor));
  port->layouts_.push_back(local.layout());
  TESSERA_ASSIGN_OR_RETURN(std::vector<Reply> replies, port->Call(Writer().Int(kLayout).Take()));
  for (size_t i = 0; i < replies.size(); ++i) {
    TESSERA_RETURN_IF_ERROR(OnRank(static_cast<int>(i) + 1, replies[i].status));
    Reader in(replies[i].payload);
    KvRankLayout l = in.Layout();
    if (!in.ok() || !in.done()) {
      return absl::DataLossError(absl::StrCat("replica rank ", i + 1, " sent a malformed layout"));
    }
    TESSERA_RETURN_IF_ERROR(OnRank(static_cast<int>(i) + 1, l.Validate()));
    port->layouts_.push_back(std::move(l));
  }
  return port;
}

ReplicaKvPort::~ReplicaKvPort() {
  // The handlers of posted commands refer to this port: every one runs before it goes.
  if (absl::Status s = executor_.Quiesce(); !s.ok() && !absl::IsFailedPrecondition(s)) {
    TESSERA_LOG(WARNING) << "KV commands to the replica's followers: " << s;
  }
}

absl::StatusOr<std::vector<ReplicaKvPort::Reply>> ReplicaKvPort::Call(
    const std::vector<int64_t>& command) {
  TESSERA_ASSIGN_OR_RETURN(std::vector<std::vector<int64_t>> words,
                           executor_.CallFollowers(command));
  return ParseReplies(words);
}

void ReplicaKvPort::Post(std::vector<int64_t> command,
                         std::function<void(absl::StatusOr<std::vector<Reply>>)> done) {
  // Every handler runs before the port goes (its destructor quiesces the executor).
  executor_.Post(std::move(command), [this, done = std::move(done)](FollowerReplies words) {
    if (!done) return;
    if (words.ok()) {
      done(ParseReplies(*words));
    } else {
      done(words.status());
    }
  });
}

std::vector<ReplicaKvPort::Reply> ReplicaKvPort::ParseReplies(
    const std::vector<std::vector<int64_t>>& words) {
  std::vector<Reply> replies;
  replies.reserve(words.size());
  absl::MutexLock lock(&mu_);
  follower_counters_.resize(words.size());
  for (size_t i = 0; i < words.size(); ++i) {
    // A reply: the command's status, the follower's counters, then the payload.
    Reader in(words[i]);
    Reply reply;
    reply.status = in.Status();
    const KvPortCounters counters = in.Counters();
    if (!in.ok()) {
      reply.status = absl::DataLossError(
          absl::StrCat("replica rank ", i + 1, " sent a malformed reply to a KV command"));
    } else {
      follower_counters_[i] = counters;
      reply.payload.assign(words[i].begin() + static_cast<std::ptrdiff_t>(in.position()),
                           words[i].end());
    }
    replies.push_back(std::move(reply));
  }
  return replies;
}

KvPortCounters ReplicaKvPort::counters() const {
  KvPortCounters c = local_.counters();
  absl::MutexLock lock(&mu_);
  for (const KvPortCounters& f : follower_counters_) {
    c.bytes_sent += f.bytes_sent;
    c.bytes_received += f.bytes_received;
    c.transfers_sent += f.transfers_sent;
    c.transfers_failed += f.transfers_failed;
    c.writes_refused += f.writes_refused;
  }
  c.commits = commits_;
  c.checksum_failures = checksum_failures_;
  c.send_seconds = send_seconds_;
  return c;
}

void ReplicaKvPort::ExportEnded(absl::Duration took) {
  absl::MutexLock lock(&mu_);
  send_seconds_ += absl::ToDoubleSeconds(took);
}

absl::Status ReplicaKvPort::Preconnect(const std::string& descriptor) {
  // Followers connect in the background; what fails there is logged there.
  Post(Writer().Int(kPreconnect).Bytes(descriptor).Take(),
       [](const absl::StatusOr<std::vector<Reply>>& replies) {
         if (!replies.ok()) TESSERA_LOG(WARNING) << "KV pre-connect: " << replies.status();
       });
  return local_.Preconnect(descriptor);
}

uint64_t ReplicaKvPort::NextExportId() {
  absl::MutexLock lock(&mu_);
  return next_export_id_++;
}

void ReplicaKvPort::CancelFollowers(uint64_t id) {
  Post(Writer().Int(kCancel).Int(static_cast<int64_t>(id)).Take(),
       [](const absl::StatusOr<std::vector<Reply>>& replies) {
         if (!replies.ok()) TESSERA_LOG(WARNING) << "cancelling a KV export: " << replies.status();
       });
}

template <typename T>
absl::StatusOr<ReplicaKvPort::Started<T>> ReplicaKvPort::StartEverywhere(
    int64_t op, absl::Span<const int32_t> blocks, const KvDestination& destination,
    const std::function<absl::StatusOr<T>()>& start_local) {
  Started<T> started;
  started.id = NextExportId();
  started.followers = executor_.size() - 1;
  started.inbox = std::make_shared<ExportInbox>();
  Writer command;
  command.Int(op).Int(static_cast<int64_t>(started.id)).Ints(blocks);
  Post(Destination(command, destination).Take(),
       [inbox = started.inbox](absl::StatusOr<std::vector<Reply>>&& replies) {
         absl::MutexLock lock(&inbox->mu);
         inbox->start = std::move(replies);
       });
  absl::StatusOr<T> local = start_local();
  if (!local.ok()) {
    CancelFollowers(started.id);  // after the start, in the same order on every follower
    return local.status();
  }
  started.local = *std::move(local);
  return started;
}

absl::StatusOr<std::unique_ptr<KvLayerStream>> ReplicaKvPort::StreamLayers(
    absl::Span<const int32_t> blocks, const KvDestination& destination) {
  // The followers open theirs before the step the engine submits next, the one that writes the
  // layers.
  TESSERA_ASSIGN_OR_RETURN(
      Started<std::unique_ptr<KvLayerStream>> s,
      StartEverywhere<std::unique_ptr<KvLayerStream>>(
          kStream, blocks, destination, [&] { return local_.StreamLayers(blocks, destination); }));
  return std::unique_ptr<KvLayerStream>(
      new ReplicaLayerStream(*this, s.id, std::move(s.local), s.followers, std::move(s.inbox)));
}

absl::StatusOr<std::unique_ptr<KvExport>> ReplicaKvPort::Export(absl::Span<const int32_t> blocks,
                                                                const KvDestination& destination) {
  TESSERA_ASSIGN_OR_RETURN(
      Started<std::unique_ptr<KvExport>> s,
      StartEverywhere<std::unique_ptr<KvExport>>(
          kExport, blocks, destination, [&] { return local_.Export(blocks, destination); }));
  return std::unique_ptr<KvExport>(
      new ReplicaKvExport(*this, s.id, std::move(s.local), s.followers, std::move(s.inbox)));
}

void ReplicaKvPort::ReserveAsync(uint64_t token, absl::Span<const int32_t> blocks, Done done) {
  // This rank's part first: its refusal needs no follower's answer.
  if (absl::Status s = local_.Reserve(token, blocks); !s.ok()) {
    done(s);
    return;
  }
  Post(Writer().Int(kReserve).Int(static_cast<int64_t>(token)).Ints(blocks).Take(),
       [this, token, done = std::move(done)](const absl::StatusOr<std::vector<Reply>>& replies) {
         absl::Status status = replies.ok() ? FirstError(*replies) : replies.status();
         if (!status.ok()) {
           // Undo it where it was made: nothing has been written into those blocks yet. The
           // followers abort before they run another step.
           Post(Writer().Int(kAbort).Int(static_cast<int64_t>(token)).Take(), nullptr);
           (void)local_.Abort(token);
         }
         done(status);
       });
}

absl::Status ReplicaKvPort::CheckChecksumRanks(uint64_t token,
                                               absl::Span<const KvSegmentChecksum> checksums) {
  for (const KvSegmentChecksum& c : checksums) {
    if (c.rank < 0 || c.rank >= static_cast<int32_t>(layouts_.size())) {
      CountCommit(absl::DataLossError("a checksum names no rank"));
      return absl::DataLossError(absl::StrCat("KV transfer ", token, ": a checksum names rank ",
                                              c.rank, " of a replica of ", layouts_.size()));
    }
  }
  return absl::OkStatus();
}

void ReplicaKvPort::CountCommit(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  if (status.ok()) {
    ++commits_;
  } else if (absl::IsDataLoss(status)) {
    ++checksum_failures_;
  }
}

void ReplicaKvPort::CommitAsync(uint64_t token, absl::Span<const KvSegmentChecksum> checksums,
                                Done done) {
  if (absl::Status s = CheckChecksumRanks(token, checksums); !s.ok()) {
    done(s);
    return;
  }
  // This rank verifies now; the followers with the next step.
  absl::Status local = local_.Commit(token, OfRank(checksums, 0));
  Post(Writer().Int(kCommit).Int(static_cast<int64_t>(token)).Checksums(checksums).Take(),
       [this, local = std::move(local),
        done = std::move(done)](const absl::StatusOr<std::vector<Reply>>& replies) {
         absl::Status status = local;
         if (status.ok()) status = replies.ok() ? FirstError(*replies) : replies.status();
         CountCommit(status);
         done(status);
       });
}

void ReplicaKvPort::AbortAsync(uint64_t token, Done done) {
  absl::Status local = local_.Abort(token);
  Post(Writer().Int(kAbort).Int(static_cast<int64_t>(token)).Take(),
       [token, local = std::move(local),
        done = std::move(done)](const absl::StatusOr<std::vector<Reply>>& replies) {
         if (!replies.ok()) {
           done(replies.status());
           return;
         }
         bool known = !absl::IsNotFound(local);
         absl::Status status = known ? local : absl::OkStatus();
         for (size_t i = 0; i < replies->size(); ++i) {
           if (absl::IsNotFound((*replies)[i].status)) continue;
           known = true;
           if (status.ok()) status = OnRank(static_cast<int>(i) + 1, (*replies)[i].status);
         }
         if (status.ok() && !known) {
           status = absl::NotFoundError(absl::StrCat("no KV reservation ", token));
         }
         done(status);
       });
}

// --- a follower's handler

FollowerKvHandler::FollowerKvHandler(KvPort& port, int replica_rank, ShardWorker* worker)
    : port_(port),
      rank_(replica_rank),
      worker_(worker),
      preconnector_([&port](const std::string& d) { return port.Preconnect(d); }) {
  if (worker_ != nullptr) worker_->SetKvLayerObserver(this);
}

FollowerKvHandler::~FollowerKvHandler() {
  if (worker_ != nullptr) worker_->SetKvLayerObserver(nullptr);
  streams_.clear();
  exports_.clear();
}

void FollowerKvHandler::LayerWritten(int32_t layer) {
  for (auto& [id, stream] : streams_) stream->LayerWritten(layer);
}

void FollowerKvHandler::StepEnded() {
  std::vector<uint64_t> ids;
  for (const auto& [id, stream] : streams_) ids.push_back(id);
  for (uint64_t id : ids) FinishStream(id);
}

void FollowerKvHandler::FinishStream(uint64_t id) {
  auto node = streams_.extract(id);
  if (node.empty()) return;
  absl::StatusOr<std::unique_ptr<KvExport>> x = node.mapped()->Finish();
  if (x.ok()) {
    exports_[id] = *std::move(x);
  } else {
    failed_[id] = x.status();
  }
}

std::vector<int64_t> FollowerKvHandler::Handle(const std::vector<int64_t>& command) {
  Reader in(command);
  const int64_t op = in.Int();
  Writer payload;
  absl::Status status;
  switch (op) {
    case kLayout:
      payload.Layout(port_.layout());
      break;
    case kReserve: {
      const auto token = static_cast<uint64_t>(in.Int());
      const auto blocks = in.Ints<int32_t>();
      if (in.ok()) status = port_.Reserve(token, blocks);
      break;
    }
    case kCommit: {
      const auto token = static_cast<uint64_t>(in.Int());
      const std::vector<KvSegmentChecksum> sums = in.Checksums();
      if (in.ok()) status = port_.Commit(token, OfRank(sums, rank_));
      break;
    }
    case kAbort: {
      const auto token = static_cast<uint64_t>(in.Int());
      if (in.ok()) status = port_.Abort(token);
      break;
    }
    case kExport: {
      const auto id = static_cast<uint64_t>(in.Int());
      const auto blocks = in.Ints<int32_t>();
      const KvDestination destination = ReadDestination(in);
      if (!in.ok()) break;
      absl::StatusOr<std::unique_ptr<KvExport>> x = port_.Export(blocks, destination);
      if (x.ok()) {
        exports_[id] = std::move(*x);
      } else {
        status = x.status();
      }
      break;
    }
    case kStream: {
      const auto id = static_cast<uint64_t>(in.Int());
      const auto blocks = in.Ints<int32_t>();
      const KvDestination destination = ReadDestination(in);
      if (!in.ok()) break;
      absl::StatusOr<std::unique_ptr<KvLayerStream>> stream =
          port_.StreamLayers(blocks, destination);
      if (stream.ok()) {
        streams_[id] = *std::move(stream);
      } else {
        status = stream.status();
      }
      break;
    }
    case kPoll: {
      const auto id = static_cast<uint64_t>(in.Int());
      if (!in.ok()) break;
      FinishStream(id);  // a stream whose step this rank did not report (no worker)
      if (auto failed = failed_.extract(id); !failed.empty()) {
        payload.Int(kFailed).Status(failed.mapped());
        break;
      }
      const auto it = exports_.find(id);
      if (it == exports_.end()) {
        status = absl::NotFoundError(absl::StrCat("no KV export ", id, " on this rank"));
        break;
      }
      if (!it->second->Done()) {
        payload.Int(kRunning);
        break;
      }
      absl::StatusOr<std::vector<KvSegmentChecksum>> sums = it->second->Wait(absl::ZeroDuration());
      exports_.erase(it);
      if (sums.ok()) {
        payload.Int(kSent).Checksums(*sums);
      } else {
        payload.Int(kFailed).Status(sums.status());
      }
      break;
    }
    case kCancel: {
      const auto id = static_cast<uint64_t>(in.Int());
      if (in.ok()) {
        streams_.erase(id);
        failed_.erase(id);
        exports_.erase(id);  // the destructor cancels and waits
      }
      break;
    }
    case kPreconnect: {
      std::string descriptor = in.Bytes();
      if (in.ok()) preconnector_.Offer({std::move(descriptor)});
      break;
    }
    default:
      status = absl::InvalidArgumentError(absl::StrCat("unknown KV command ", op));
  }
  if (!in.ok() || !in.done())
    status = absl::DataLossError("a malformed KV command from the leader");
  std::vector<int64_t> body = payload.Take();
  Writer reply;
  reply.Status(status).Counters(port_.counters());
  std::vector<int64_t> out = reply.Take();
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

}  // namespace tessera::worker
