// The words a replica's leader and followers exchange (worker/replica.h): step plans, batches of
// follower commands, and the followers' reply sections, as int64 words. Everything decoded here
// came from another rank: a malformed message is kDataLoss, never a crash or an out-of-bounds
// read (tests/worker/fuzz/replica_wire_fuzz.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/step.h"

namespace tessera::worker {

// The wire form of a plan: a header of sizes, then every field, as int64 words (floats bit-cast).
// kind 0 = stop, 1 = step, 2 = keep-alive (3, a follower command, is not a plan).
std::vector<int64_t> EncodeStepPlan(const StepPlan& plan, int64_t kind);
absl::StatusOr<StepPlan> DecodeStepPlan(const std::vector<int64_t>& words, int64_t* kind);
// As DecodeStepPlan, reading from words[*at] and leaving *at after the plan (words may go on).
absl::StatusOr<StepPlan> DecodeStepPlanAt(const std::vector<int64_t>& words, size_t* at,
                                          int64_t* kind);

// Follower commands on the wire. A batch: [n, then each command as (length, words)]. A reply
// section: [m, then m entries, each (replica rank, n, then each reply as (length, words))]: the
// replies of m followers to a batch of n commands.
std::vector<int64_t> EncodeCommandBatch(const std::vector<std::vector<int64_t>>& commands);
absl::StatusOr<std::vector<std::vector<int64_t>>> DecodeCommandBatch(
    const std::vector<int64_t>& words, size_t* at);
// Adds the entries of `other` (a section from replica rank `from`) to `section` (empty: none
// yet). kDataLoss when `other` has no entry count.
absl::Status AppendReplySection(std::vector<int64_t>& section, const std::vector<int64_t>& other,
                                int from);
// Adds one follower's entry (its replies to a batch) to `section`.
void AppendReplyEntry(std::vector<int64_t>& section, int rank,
                      const std::vector<std::vector<int64_t>>& replies);
// Splits a whole section from a replica of `replica_size` ranks into replies[command][follower]
// (follower = rank - 1). kDataLoss unless every follower answered every one of `commands`
// commands exactly once.
absl::StatusOr<std::vector<std::vector<std::vector<int64_t>>>> DecodeReplySection(
    const std::vector<int64_t>& section, int replica_size, size_t commands);

}  // namespace tessera::worker
