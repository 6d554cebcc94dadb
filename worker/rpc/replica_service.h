// ReplicaService: the tessera.v1.Replica gRPC service of a replica leader, over its Engine.
//
//   Generate  converts the request (sampling 1:1; the RPC's deadline becomes Request::timeout),
//             submits it and streams one GenerateResponse per TokenEvent; the last one has
//             finished = true, the finish reason and, when the request ended early, its status
//             code (absl numbering = gRPC numbering) and message. Submit errors end the RPC with
//             the same code and the engine's message. A client that cancels or goes away cancels
//             the request in the engine (its KV blocks return at the next step boundary).
//   Abort     cancels the requests in flight with the coordinator's request_id.
//   Drain     refuses new Generate calls from then on (UNAVAILABLE "replica is draining"), waits
//             up to timeout_ms for the calls in flight, then cancels the rest; their last event
//             carries kUnavailable (retry elsewhere). Draining is permanent.
//   GetStats  the engine's counters (ToReplicaStats).
//
// Threads: gRPC's sync server runs each call on its own thread; a Generate call blocks its thread
// for the request's lifetime, polling every `poll_interval` for cancellation, so no wait is
// unbounded. Every method is thread-safe. The engine must outlive the service, and the service
// the server it is registered with.
#pragma once

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/sync_stream.h"
#include "tessera/v1/replica.grpc.pb.h"
#include "worker/engine.h"
#include "worker/request.h"

namespace tessera::worker::rpc {

struct ReplicaServiceOptions {
  // How often a Generate call with no event to send checks whether its client is still there.
  absl::Duration poll_interval = absl::Milliseconds(50);
  KvEndpoint* kv_port = nullptr;  // for the KV transfer counters in GetStats; not owned
};

class ReplicaService final : public tessera::v1::Replica::Service {
 public:
  explicit ReplicaService(Engine& engine, ReplicaServiceOptions options = {});

  grpc::Status Generate(grpc::ServerContext* context, const tessera::v1::GenerateRequest* request,
                        grpc::ServerWriter<tessera::v1::GenerateResponse>* writer) override;
  grpc::Status Abort(grpc::ServerContext* context, const tessera::v1::AbortRequest* request,
                     tessera::v1::AbortResponse* response) override;
  grpc::Status Drain(grpc::ServerContext* context, const tessera::v1::DrainRequest* request,
                     tessera::v1::DrainResponse* response) override;
  grpc::Status ReserveKv(grpc::ServerContext* context, const tessera::v1::ReserveKvRequest* request,
                         tessera::v1::ReserveKvResponse* response) override;
  grpc::Status ReleaseKv(grpc::ServerContext* context, const tessera::v1::ReleaseKvRequest* request,
                         tessera::v1::ReleaseKvResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext* context, const tessera::v1::StatsRequest* request,
                        tessera::v1::ReplicaStats* response) override;

  // Drain without an RPC (the worker's own shutdown): as the Drain RPC, waiting at most `timeout`;
  // returns how many requests were cancelled. Returns once they are cancelled, not ended.
  int32_t DrainFor(absl::Duration timeout);
  bool draining() const;
  // Generate calls between a successful Submit and their return.
  int64_t calls_in_flight() const;
  tessera::v1::ReplicaStats Stats() const;

 private:
  struct Call {
    std::string request_id;         // the coordinator's, for Abort
    bool aborted_by_drain = false;  // its last event reports kUnavailable
  };

  // Waits for the calls in flight until `deadline`, then cancels the rest; the count cancelled.
  int32_t DrainUntil(absl::Time deadline, const grpc::ServerContext* context);

  Engine& engine_;
  const ReplicaServiceOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<RequestId, Call> calls_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

// The proto request as an engine Request: sampling 1:1 (model::SamplingParams' defaults when the
// `sampling` message is absent), `timeout` as given; the engine validates the values.
// kInvalidArgument only for kv_destination/kv_import bytes that do not parse.
absl::StatusOr<Request> RequestFromProto(const tessera::v1::GenerateRequest& request,
                                         absl::Duration timeout);
// A replica's load as heartbeats and GetStats report it. kv_blocks_free counts the blocks a
// request can get now: free ones plus unreferenced prefix-cache blocks (evictable).
tessera::v1::ReplicaStats ToReplicaStats(const EngineCounters& counters,
                                         const KvPortCounters* kv = nullptr);

}  // namespace tessera::worker::rpc
