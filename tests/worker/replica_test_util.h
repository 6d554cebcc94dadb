// Bodies of the replica tests, shared by the in-process (threads) and MPI (processes) suites:
// each runs on one rank of a replica.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "tests/worker/test_util.h"
#include "worker/engine.h"
#include "worker/replica.h"

namespace tessera::worker::testing {

struct Split {
  int tp;
  int pp;
  std::vector<int64_t> pp_layers;
  std::string name;
  int micro_batches = 0;    // 0: one per stage
  int steps_in_flight = 1;  // the leader's ReplicaExecutorOptions::max_steps_in_flight
  // In-process sends that wait for their receiver, as NCCL's do (InProcessGroupOptions).
  bool synchronous_sends = false;
  // Decode steps as graphs (LlamaModelOptions::graph_batch_sizes 1, 2, 4, 8) on CPU backends
  // that emulate them (CpuBackendOptions::emulate_graphs).
  bool graphs = false;
};

// gtest prints parameters with this (the default dumps the bytes).
inline void PrintTo(const Split& split, std::ostream* os) { *os << split.name; }

ReplicaRankOptions ReplicaOptions(const Split& split);

// The leader generates the fixture's prompts greedily into `results`, with `steps_in_flight`
// steps in the pipeline at once; followers follow.
absl::Status GreedyBody(const Fixture& f, ReplicaRank& rank, std::vector<RequestOutput>& results,
                        int steps_in_flight = 1);

// Every rank runs Forward on the fixture's longest prompt; the last stage's TP rank 0 copies the
// logits of every position into `logits`.
absl::Status LogitsBody(const Fixture& f, ReplicaRank& rank, std::vector<float>& logits);

// Checks `logits` ([len, vocab] of the fixture's longest prompt) against the fixture: within
// 1e-4 of each row's scale. Returns a description of the first mismatch, or "".
std::string CompareLogits(const Fixture& f, const std::vector<float>& logits);

}  // namespace tessera::worker::testing
