// KvPort: one rank's KV cache on a kvtransfer::Transport — the sending side of a prefill replica
// and the receiving side of a decode replica (a replica may be both).
//
// Receiving. The port registers every layer's K and V tensor with the transport and installs
// itself as the transport's WriteListener. Reserve(token, blocks) opens a reservation; from then
// on a write is admitted only when its tag is that token and every block it touches is owned by
// that reservation — so a write from any other transfer, and a late write from an aborted one into
// blocks that were released and reused, is refused before its bytes land (the reservation token is
// each reserved block's generation tag). Commit verifies that every byte of the reserved blocks
// arrived and that the XXH3 checksums the sender computed match the bytes in place; only then may
// the engine use the blocks. Abort closes the reservation and waits (bounded) until writes that
// were admitted before it have landed, so the blocks are safe to reuse when it returns OK.
//
// Sending. Export plans the segments from local blocks into a destination's reserved blocks for
// every destination rank that shares layers and heads with this one (worker/kv_migration.h),
// submits one transfer per destination rank, and computes the segments' checksums on the port's
// checksum thread meanwhile (the export is done when both are). Connections to peers
// are cached by descriptor; Preconnect makes them before the first request.
//
// Staging. A cache in device memory (the CUDA backend) is not what the transports move: the port
// then keeps a host mirror of the cache with the same layout (page-locked memory from the backend,
// Backend::AllocateHost) and registers the mirror instead.
// A send first copies its blocks (of the layers it sends) from the device into the mirror, and a
// reservation's blocks go from the mirror to the device once Commit has verified them. A block
// is only read by a send while the engine holds it for that send, and only written by the
// transport while a reservation owns it, so the mirror needs no other coordination. The copies
// use the cache's backend on a stream of the port's own, after the compute stream's writes (the
// engine exports blocks of finished steps; layer-wise streaming reports a layer after the
// compute stream has synchronised). On the CPU backend the cache is registered directly, unless
// KvPortOptions::stage_through_host asks for the staged path (tests).
//
// Ownership: the cache and transport must outlive the port. Threads: every method may be called
// from any thread; the listener methods run on transport threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kvtransfer/transport.h"
#include "worker/kv_cache.h"
#include "worker/kv_migration.h"

namespace tessera::worker {

struct KvPortOptions {
  int32_t layer_begin = 0;  // the global index of the cache's first layer (pipeline stage)
  int32_t head_begin = 0;   // the global index of the cache's first KV head (tensor rank)
  // False on a tensor rank whose KV heads another rank of the replica also holds and sends (KV
  // heads replicated when TP exceeds them): its exports send nothing, so that no destination
  // byte is written twice.
  bool sends = true;
  // How long Abort waits for writes admitted before it to land.
  absl::Duration quiesce_timeout = absl::Seconds(10);
  // Stage through a host mirror even when the cache is host memory (always on for device memory).
  bool stage_through_host = false;
};

// Counters for metrics (tessera_kv_transfer_*).
struct KvPortCounters {
  int64_t bytes_sent = 0;
  int64_t bytes_received = 0;
  int64_t transfers_sent = 0;
  int64_t transfers_failed = 0;   // sends that ended with an error
  int64_t writes_refused = 0;     // incoming writes refused by the token/block check
  int64_t commits = 0;            // reservations verified and committed
  int64_t checksum_failures = 0;  // commits refused because bytes were missing or damaged
  int64_t reservations_open = 0;  // now
  int64_t blocks_reserved = 0;    // now, in open reservations
  double send_seconds = 0;        // summed from each export\'s start to its completion
};

// One export in flight: a transfer per destination rank.
class KvExport {
 public:
  virtual ~KvExport() = default;  // cancels and waits (bounded) until local memory is not read
  virtual bool Done() = 0;
  // The checksums of what was sent once every transfer is OK; the first error otherwise;
  // kDeadlineExceeded while still running after `timeout`.
  virtual absl::StatusOr<std::vector<KvSegmentChecksum>> Wait(absl::Duration timeout) = 0;
  virtual void Cancel() = 0;
};

// Layer-wise streaming of one send (local blocks into a destination's blocks), made before the
// step that writes the blocks' last tokens. As the step writes each layer, the executor reports it
// and the layer is sent at once; Finish, after the step, sends what was not reported (a rank or
// executor that cannot report layers sends everything then) and returns the export of it all.
// Destroying a stream cancels what it started (returning once local memory is no longer read).
// Thread-compatible; on a multi-rank replica each follower reports its own layers.
class KvLayerStream {
 public:
  virtual ~KvLayerStream() = default;
  // This rank's global layer `layer` is in the cache. Layers it does not hold, and layers already
  // sent, are ignored; an error is kept for Finish.
  virtual void LayerWritten(int32_t layer) = 0;
  // The export of every layer: done when all its transfers are; the first error otherwise.
  virtual absl::StatusOr<std::unique_ptr<KvExport>> Finish() = 0;
};

// A replica's KV cache on transports, as the engine and the serving layer use it: one rank's
// KvPort, or a multi-rank replica's leader (worker/replica_kv.h), which does the same on every
// rank. Every method may be called from any thread.
class KvEndpoint {
 public:
  virtual ~KvEndpoint() = default;
  // Every rank's layout, in replica rank order (KvDestination::ranks of a reservation here).
  virtual std::vector<KvRankLayout> layouts() const = 0;
  // Summed over the ranks (a multi-rank replica's followers as of their last report).
  virtual KvPortCounters counters() const = 0;
  // Connects every rank to the peer rank `descriptor` describes (in the background on followers,
  // whose part may ride with the next step; their failures are logged there).
  virtual absl::Status Preconnect(const std::string& descriptor) = 0;
  // Sends local `blocks` (the same block ids on every rank) into `destination`; checksums carry
  // the receiving rank. Errors as KvPort::Export.
  virtual absl::StatusOr<std::unique_ptr<KvExport>> Export(absl::Span<const int32_t> blocks,
                                                           const KvDestination& destination) = 0;
  // A layer-wise stream of the same send (every rank's layers). Errors as Export.
  virtual absl::StatusOr<std::unique_ptr<KvLayerStream>> StreamLayers(
      absl::Span<const int32_t> blocks, const KvDestination& destination) = 0;
  // KvPort's Reserve, Commit and Abort on every rank (Commit hands each rank the checksums that
  // name it), with the answer handed to `done` instead of returned: a multi-rank replica's leader
  // answers once every follower has, and its followers' parts ride with its next step, so a
  // pipeline keeps its steps in flight meanwhile. `done` runs either before the call returns (one
  // rank) or later, inside a call to the replica's executor (on that caller's thread: the
  // engine's).
  using Done = std::function<void(absl::Status)>;
  virtual void ReserveAsync(uint64_t token, absl::Span<const int32_t> blocks, Done done) = 0;
  virtual void CommitAsync(uint64_t token, absl::Span<const KvSegmentChecksum> checksums,
                           Done done) = 0;
  // Answers as KvPort::Abort: OK when the blocks may be reused on every rank, kNotFound when no
  // rank knew the token, else the first rank's error (the blocks must stay out of use).
  virtual void AbortAsync(uint64_t token, Done done) = 0;
};

// One export made of several (a request's layers sent one by one): done when all are; the
// checksums of all; the first error.
std::unique_ptr<KvExport> CombineExports(std::vector<std::unique_ptr<KvExport>> parts);

class KvPort final : public KvEndpoint, public kvtransfer::WriteListener {
 public:
  // Registers the cache's tensors. Errors from the transport (registration, descriptor).
  static absl::StatusOr<std::unique_ptr<KvPort>> Create(KvCache& cache,
                                                        kvtransfer::Transport& transport,
                                                        const KvPortOptions& options = {});
  ~KvPort() override;  // uninstalls the listener, deregisters the regions

  const KvRankLayout& layout() const { return layout_; }
  std::vector<KvRankLayout> layouts() const override { return {layout_}; }
  KvPortCounters counters() const override;

  // --- sending
  // Connects to the peer `descriptor` describes now, so the first export does not pay for it.
  absl::Status Preconnect(const std::string& descriptor) override;
  // Starts copying local `blocks` (this rank's slice) into `destination`'s reserved blocks on
  // every destination rank that shares layers and heads with this one. kInvalidArgument when the
  // block counts differ or the layouts cannot exchange; kUnavailable when a peer cannot be reached.
  absl::StatusOr<std::unique_ptr<KvExport>> Export(absl::Span<const int32_t> blocks,
                                                   const KvDestination& destination) override;
  // Export of the global layers [layer_begin, layer_end) only. kInvalidArgument for layers this
  // rank does not hold.
  absl::StatusOr<std::unique_ptr<KvExport>> ExportLayers(absl::Span<const int32_t> blocks,
                                                         const KvDestination& destination,
                                                         int32_t layer_begin, int32_t layer_end);
  // This rank's layers, one ExportLayers per reported layer.
  absl::StatusOr<std::unique_ptr<KvLayerStream>> StreamLayers(
      absl::Span<const int32_t> blocks, const KvDestination& destination) override;

  // --- receiving
  // Opens a reservation: `blocks` (all of whose bytes will be written) may receive writes tagged
  // `token`. kAlreadyExists for a token in use, kFailedPrecondition for a block another open
  // reservation owns, kInvalidArgument for token 0 or a block out of range.
  absl::Status Reserve(uint64_t token, absl::Span<const int32_t> blocks);
  // Verifies and closes the reservation: every byte of its blocks (every layer, K and V) arrived
  // and `checksums` — the sender's, covering exactly those bytes — match. kNotFound for an
  // unknown token; kDataLoss naming the first damaged or missing range: the reservation is then
  // closed, and the caller calls Abort to learn whether its blocks may be reused. The checksums'
  // rank is not looked at (a multi-rank replica hands each rank its own).
  absl::Status Commit(uint64_t token, absl::Span<const KvSegmentChecksum> checksums);
  // KvEndpoint: Reserve and Commit, then `done`.
  void ReserveAsync(uint64_t token, absl::Span<const int32_t> blocks, Done done) override {
    done(Reserve(token, blocks));
  }
  void CommitAsync(uint64_t token, absl::Span<const KvSegmentChecksum> checksums,
                   Done done) override {
    done(Commit(token, checksums));
  }
  // Closes the reservation: later writes are refused. Waits up to quiesce_timeout for writes
  // admitted earlier to land: OK when the blocks may be reused, kDeadlineExceeded when they must
  // not (a write may still land in them). kNotFound for an unknown token.
  absl::Status Abort(uint64_t token);
  void AbortAsync(uint64_t token, Done done) override { done(Abort(token)); }

  // kvtransfer::WriteListener
  absl::Status Admit(const kvtransfer::WriteInfo& write) override;
  void Written(const kvtransfer::WriteInfo& write) override;
  // The admitted write stopped short: it no longer counts as in flight (the reservation's bytes
  // fall short, so its Commit fails and the request is placed again).
  void NotWritten(const kvtransfer::WriteInfo& write, const absl::Status& why) override;

  // Internal: an export's checksums, computed on the port's own thread while its transfers run.
  struct ChecksumJob;
  class ChecksumThread;

 private:
  struct Region {
    int32_t layer = 0;  // index into the cache's layers
    bool key = true;
    uint8_t* base = nullptr;    // the registered memory: the cache's, or its host mirror
    uint8_t* device = nullptr;  // staged: the cache's device memory the mirror copies
  };
  struct Reservation {
    std::vector<int32_t> blocks;
    bool open = true;
    uint64_t bytes_written = 0;
    int32_t writes_in_flight = 0;
  };

  KvPort(kvtransfer::Transport& transport, const KvPortOptions& options);
  const uint8_t* LocalBase(kvtransfer::RegionId region) const;
  // Staged: copies `blocks` of the global layers [layer_begin, layer_end) from the device into
  // the mirror (to_host), or of every layer from the mirror to the device. No-op unstaged.
  absl::Status Stage(absl::Span<const int32_t> blocks, int32_t layer_begin, int32_t layer_end,
                     bool to_host);
  // Commit's verification; the reservation's blocks in `blocks`.
  absl::Status Verify(uint64_t token, absl::Span<const KvSegmentChecksum> checksums,
                      std::vector<int32_t>* blocks);
  // Export from `src`: this rank's layout, or a layer range of it.
  absl::StatusOr<std::unique_ptr<KvExport>> ExportFrom(const KvRankLayout& src,
                                                       absl::Span<const int32_t> blocks,
                                                       const KvDestination& destination);
  absl::StatusOr<kvtransfer::PeerId> PeerFor(const std::string& descriptor);
  uint64_t ReservationBytes(const Reservation& r) const;
  // Closes `r` and waits for its writes in flight. Requires mu_.
  absl::Status CloseLocked(uint64_t token, Reservation& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The blocks a write touches, when it lies in one of our regions.
  absl::Status CheckWriteLocked(const kvtransfer::WriteInfo& write) ABSL_SHARED_LOCKS_REQUIRED(mu_);

  kvtransfer::Transport& transport_;
  const KvPortOptions options_;
  KvRankLayout layout_;
  uint64_t block_bytes_ = 0;
  absl::flat_hash_map<kvtransfer::RegionId, Region> regions_;  // fixed after Create
  // Staged only (backend_ set): the mirror's memory, the copies' backend and stream.
  std::vector<kernels::DeviceBuffer> mirrors_;  // Backend::AllocateHost
  kernels::Backend* backend_ = nullptr;
  absl::Mutex stage_mu_;
  std::unique_ptr<Stream> stage_stream_ ABSL_GUARDED_BY(stage_mu_);

  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Reservation> reservations_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> block_owner_ ABSL_GUARDED_BY(mu_);  // token per block, 0 when none
  absl::flat_hash_map<std::string, kvtransfer::PeerId> peers_ ABSL_GUARDED_BY(mu_);
  KvPortCounters counters_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<ChecksumThread> checksum_thread_;  // joined before the regions go
};

}  // namespace tessera::worker
