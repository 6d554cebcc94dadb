// Conversions between the worker's KV-migration structs (worker/kv_migration.h) and their
// tessera.v1 messages. Parsing validates what a peer could get wrong (sizes, dtype names, ranges)
// and returns kInvalidArgument naming the field.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tessera/v1/replica.pb.h"
#include "worker/kv_migration.h"

namespace tessera::worker::rpc {

tessera::v1::KvDestination ToProto(const KvDestination& destination);
absl::StatusOr<KvDestination> KvDestinationFromBytes(absl::string_view bytes);

std::string ChecksumsToBytes(const std::vector<KvSegmentChecksum>& checksums);
absl::StatusOr<std::vector<KvSegmentChecksum>> ChecksumsFromBytes(absl::string_view bytes);

}  // namespace tessera::worker::rpc
