// libFuzzer target: the words a replica's ranks exchange (worker/replica_wire.h) — step plans,
// follower command batches and reply sections, each straight from another rank. The first byte
// picks the decoder (and, for reply sections, the replica's size and the number of commands); the
// rest is read as little-endian int64 words. Decoding must never crash, leak or read out of
// bounds, and what decodes must survive its own encoding. Built and run by scripts/run-fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "worker/replica_wire.h"

namespace w = tessera::worker;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::vector<int64_t> words((size - 1) / 8);
  if (!words.empty()) std::memcpy(words.data(), data + 1, words.size() * 8);
  const uint8_t pick = data[0];
  switch (pick % 3) {
    case 0: {
      int64_t kind = 0;
      auto plan = w::DecodeStepPlan(words, &kind);
      if (plan.ok()) {
        // Words wider than their field (an int32, a float's bits) narrow on decoding, so the
        // canonical encoding is what must survive a round trip.
        const std::vector<int64_t> once = w::EncodeStepPlan(*plan, kind);
        int64_t kind_again = 0;
        auto again = w::DecodeStepPlan(once, &kind_again);
        if (!again.ok() || kind_again != kind || w::EncodeStepPlan(*again, kind) != once) {
          std::abort();  // a plan that does not survive its own encoding
        }
      }
      break;
    }
    case 1: {
      size_t at = 0;
      auto batch = w::DecodeCommandBatch(words, &at);
      if (batch.ok()) {
        if (at > words.size()) std::abort();
        const std::vector<int64_t> again = w::EncodeCommandBatch(*batch);
        if (std::vector<int64_t>(words.begin(), words.begin() + static_cast<ptrdiff_t>(at)) !=
            again) {
          std::abort();
        }
      }
      break;
    }
    default: {
      // A replica of 1 to 8 ranks, 0 to 7 commands.
      const int replica_size = 1 + (pick >> 2) % 8;
      const size_t commands = (pick >> 5) % 8;
      auto replies = w::DecodeReplySection(words, replica_size, commands);
      if (replies.ok()) {
        if (replies->size() != commands) std::abort();
        for (const auto& per_command : *replies) {
          if (per_command.size() != static_cast<size_t>(replica_size - 1)) std::abort();
        }
        // Re-encoded in rank order, the entries give a section of the same replies.
        std::vector<int64_t> again;
        for (int rank = 1; rank < replica_size; ++rank) {
          std::vector<std::vector<int64_t>> of_rank;
          for (const auto& per_command : *replies) of_rank.push_back(per_command[rank - 1]);
          w::AppendReplyEntry(again, rank, of_rank);
        }
        if (again.empty()) again.push_back(0);
        auto twice = w::DecodeReplySection(again, replica_size, commands);
        if (!twice.ok() || *twice != *replies) std::abort();
      }
      break;
    }
  }
  return 0;
}
