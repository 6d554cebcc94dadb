// How the coordinator sees a replica: what it registered (ReplicaInfo), the load it reports with
// each heartbeat (ReplicaLoad), and the client seam through which requests reach it
// (ReplicaClient / ReplicaCall), implemented over gRPC in coordinator/rpc/ and by in-process
// fakes in tests. Plain structs: protobuf stops in coordinator/rpc/.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "model/sampling.h"

namespace tessera::coordinator {

struct ReplicaInfo {
  std::string name;     // unique per replica; logs and metric labels
  std::string address;  // host:port of its Replica service
  std::string role = "mixed";
  std::string model_name;
  int32_t max_model_len = 0;
  int32_t vocab_size = 0;
  int32_t block_size = 0;
  int64_t kv_blocks_total = 0;
  int32_t max_num_seqs = 0;
  int32_t tensor_parallel_size = 1;
  int32_t pipeline_parallel_size = 1;
  // Prefill/decode: each rank's KV transport descriptor (opaque), replica rank order.
  std::vector<std::string> kv_descriptors;
  // Prefill/decode: the KV cache's element type (DataTypeName); empty when not said.
  std::string kv_cache_dtype;
  // The host the registration came from (the coordinator's view of the peer); empty: unknown.
  std::string registered_from;
};

struct ReplicaLoad {
  int32_t num_requests_running = 0;
  int32_t num_requests_waiting = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_free = 0;
  int64_t prompt_tokens_total = 0;
  int64_t generation_tokens_total = 0;
  int64_t preemptions_total = 0;
  int64_t prefix_cache_queries_total = 0;
  int64_t prefix_cache_hits_total = 0;
  int64_t requests_in_flight = 0;
  // KV blocks by state and KV transfer counters (disaggregated serving).
  int64_t kv_blocks_cached = 0;
  int64_t kv_blocks_reserved = 0;
  int64_t kv_blocks_exporting = 0;
  int64_t kv_bytes_sent = 0;
  int64_t kv_bytes_received = 0;
  int64_t kv_transfers_failed = 0;
  int64_t kv_writes_refused = 0;
  int64_t kv_checksum_failures = 0;
  int64_t pipeline_drains_total = 0;  // worker::EngineCounters::pipeline_drains
};

// A request as a replica runs it: token ids, sampling without stop strings (the coordinator
// matches those on the text), and its deadline.
struct ReplicaRequest {
  std::string request_id;
  std::vector<int32_t> prompt;
  model::SamplingParams sampling;
  std::string cache_salt;
  int32_t priority = 0;  // vLLM's: lower first, on replicas that schedule by priority
  absl::Time deadline = absl::InfiniteFuture();
  // Disaggregated serving (docs/decisions/0008-disaggregation.md); opaque to the coordinator.
  // To a prefill replica: a decode replica's reservation (KvReservation::destination); the
  // replica ends after the first token with kv_handoff.
  std::string kv_destination;
  // To a decode replica: the prompt's KV is in reservation `token`; continue after first_token.
  struct KvImport {
    uint64_t token = 0;
    int32_t first_token = -1;
    std::string checksums;  // ReplicaEvent::kv_checksums of the prefill replica's last event
  };
  std::optional<KvImport> kv_import;
};

// A decode replica's blocks reserved for one prompt's KV.
struct KvReservation {
  uint64_t token = 0;
  int32_t num_cached_tokens = 0;  // prompt tokens the decode replica holds already
  std::string destination;        // opaque; for the prefill replica
};

// Where a request's time went (the replica's RequestTimings; for a disaggregated request, the
// prefill replica's queue and prefill, its KV send, and the decode replica's whole time as decode).
struct RequestTimings {
  double queue_seconds = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double kv_transfer_seconds = 0;
};

struct ReplicaEvent {
  std::vector<int32_t> token_ids;
  std::vector<float> logprobs;
  std::vector<std::vector<model::TokenLogprob>> top_logprobs;
  bool finished = false;
  std::optional<model::FinishReason> finish_reason;
  absl::Status status;  // when finished: OK or why it ended early
  int32_t num_cached_tokens = 0;
  // Prefill replica, finished event: the KV went to the decode replica, which verifies
  // kv_checksums (opaque) when it continues the request.
  bool kv_handoff = false;
  std::string kv_checksums;
  std::optional<RequestTimings> timings;  // finished events, when the replica measured them
};

// One request on one replica. Next() is for one reader thread; Cancel() for any thread.
class ReplicaCall {
 public:
  virtual ~ReplicaCall() = default;  // cancels the request when it has not finished
  // The next event within `timeout`: kDeadlineExceeded when none came (call again). A broken
  // connection surfaces as a finished event with kUnavailable. kOutOfRange after the finished
  // event.
  virtual absl::StatusOr<ReplicaEvent> Next(absl::Duration timeout) = 0;
  virtual void Cancel() = 0;
};

// A connection to one replica. Thread-safe.
class ReplicaClient {
 public:
  virtual ~ReplicaClient() = default;
  // Starts a request. Errors the replica returns before any token (kInvalidArgument,
  // kResourceExhausted, kUnavailable when it is draining or gone) come back here or as the first
  // event's status.
  virtual absl::StatusOr<std::unique_ptr<ReplicaCall>> Generate(ReplicaRequest request) = 0;
  // Decode replicas: reserve blocks for `request`'s prompt KV / give them back.
  // kResourceExhausted when it has no room now, kFailedPrecondition when it has no KV transport.
  virtual absl::StatusOr<KvReservation> ReserveKv(const ReplicaRequest& request) {
    return absl::UnimplementedError("this replica client cannot reserve KV blocks");
  }
  virtual absl::Status ReleaseKv(uint64_t token) {
    return absl::UnimplementedError("this replica client cannot release KV blocks");
  }
};

// Makes clients for registered replicas (gRPC channels in production, fakes in tests).
class ReplicaConnector {
 public:
  virtual ~ReplicaConnector() = default;
  virtual absl::StatusOr<std::unique_ptr<ReplicaClient>> Connect(const ReplicaInfo& info) = 0;
};

}  // namespace tessera::coordinator
