// ReplicaConnector over the internal tessera.v1.Replica gRPC service: one channel per replica;
// each request is a server-streaming Generate call read by its own thread into a queue (so
// ReplicaCall::Next can wait with a timeout). Cancel cancels the RPC, which the replica turns
// into Engine::Cancel. The request's deadline becomes the RPC's deadline. A broken stream ends
// the request with kUnavailable naming the replica.
#pragma once

#include <memory>

#include "coordinator/replica.h"

namespace tessera::coordinator {

struct GrpcConnectorOptions {
  int max_message_bytes = 64 << 20;
};

std::unique_ptr<ReplicaConnector> MakeGrpcReplicaConnector(
    const GrpcConnectorOptions& options = {});

}  // namespace tessera::coordinator
