#include "worker/replica_wire.h"

#include <cstring>
#include <string>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace tessera::worker {
namespace {

// Adding a field to SamplingRow or StepPlan must extend the wire format below.
static_assert(sizeof(SamplingRow) == 200, "update EncodeStepPlan/DecodeStepPlan for SamplingRow");

int64_t FloatBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

float BitsFloat(int64_t word) {
  const uint32_t bits = static_cast<uint32_t>(word);
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

template <typename T>
void Append(std::vector<int64_t>& words, const std::vector<T>& values) {
  words.push_back(static_cast<int64_t>(values.size()));
  for (const T& v : values) {
    if constexpr (std::is_same_v<T, float>) {
      words.push_back(FloatBits(v));
    } else {
      words.push_back(static_cast<int64_t>(v));
    }
  }
}

template <typename T>
bool Read(const std::vector<int64_t>& words, size_t& at, std::vector<T>& out) {
  if (at >= words.size()) return false;
  const int64_t n = words[at++];
  if (n < 0 || static_cast<size_t>(n) > words.size() - at) return false;
  out.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<T, float>) {
      out[i] = BitsFloat(words[at++]);
    } else {
      out[i] = static_cast<T>(words[at++]);
    }
  }
  return true;
}

// 32-bit words two to a wire word (an allowed-token mask is ceil(vocab / 32) of them).
void AppendPacked(std::vector<int64_t>& words, const std::vector<uint32_t>& values) {
  words.push_back(static_cast<int64_t>(values.size()));
  for (size_t i = 0; i < values.size(); i += 2) {
    const uint64_t high = i + 1 < values.size() ? values[i + 1] : 0;
    words.push_back(static_cast<int64_t>(values[i] | (high << 32)));
  }
}

bool ReadPacked(const std::vector<int64_t>& words, size_t& at, std::vector<uint32_t>& out) {
  if (at >= words.size()) return false;
  const int64_t n = words[at++];
  if (n < 0 || static_cast<size_t>((n + 1) / 2) > words.size() - at) return false;
  out.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i += 2) {
    const auto word = static_cast<uint64_t>(words[at++]);
    out[i] = static_cast<uint32_t>(word);
    if (i + 1 < n) out[i + 1] = static_cast<uint32_t>(word >> 32);
  }
  return true;
}

}  // namespace

std::vector<int64_t> EncodeStepPlan(const StepPlan& plan, int64_t kind) {
  std::vector<int64_t> words = {kind};
  Append(words, plan.token_ids);
  Append(words, plan.positions);
  Append(words, plan.slot_mapping);
  Append(words, plan.query_start);
  Append(words, plan.seq_lens);
  Append(words, plan.block_tables);
  Append(words, plan.logits_rows);
  words.push_back(static_cast<int64_t>(plan.sampling.size()));
  for (const SamplingRow& r : plan.sampling) {
    words.push_back(FloatBits(r.temperature));
    words.push_back(r.top_k);
    words.push_back(FloatBits(r.top_p));
    words.push_back(r.seed);
    words.push_back(r.step);
    words.push_back(FloatBits(r.min_p));
    words.push_back(FloatBits(r.repetition_penalty));
    words.push_back(FloatBits(r.presence_penalty));
    words.push_back(FloatBits(r.frequency_penalty));
    words.push_back(r.num_top_logprobs);
    Append(words, r.penalty_token_ids);
    Append(words, r.penalty_output_counts);
    Append(words, r.banned_token_ids);
    Append(words, r.bias_token_ids);
    Append(words, r.bias_values);
    AppendPacked(words, r.allowed_mask);
  }
  return words;
}

absl::StatusOr<StepPlan> DecodeStepPlan(const std::vector<int64_t>& words, int64_t* kind) {
  size_t at = 0;
  TESSERA_ASSIGN_OR_RETURN(StepPlan plan, DecodeStepPlanAt(words, &at, kind));
  if (at != words.size()) return absl::DataLossError("a step plan from the leader is malformed");
  return plan;
}

absl::StatusOr<StepPlan> DecodeStepPlanAt(const std::vector<int64_t>& words, size_t* at_out,
                                          int64_t* kind) {
  StepPlan plan;
  size_t at = *at_out;
  const auto bad = [] { return absl::DataLossError("a step plan from the leader is malformed"); };
  if (at >= words.size()) return bad();
  *kind = words[at++];
  if (!Read(words, at, plan.token_ids) || !Read(words, at, plan.positions) ||
      !Read(words, at, plan.slot_mapping) || !Read(words, at, plan.query_start) ||
      !Read(words, at, plan.seq_lens) || !Read(words, at, plan.block_tables) ||
      !Read(words, at, plan.logits_rows) || at >= words.size()) {
    return bad();
  }
  const int64_t rows = words[at++];
  constexpr size_t kScalars = 10;
  if (rows < 0 || static_cast<size_t>(rows) > (words.size() - at) / kScalars) return bad();
  plan.sampling.resize(static_cast<size_t>(rows));
  for (SamplingRow& r : plan.sampling) {
    if (words.size() - at < kScalars) return bad();
    r.temperature = BitsFloat(words[at++]);
    r.top_k = static_cast<int32_t>(words[at++]);
    r.top_p = BitsFloat(words[at++]);
    r.seed = words[at++];
    r.step = words[at++];
    r.min_p = BitsFloat(words[at++]);
    r.repetition_penalty = BitsFloat(words[at++]);
    r.presence_penalty = BitsFloat(words[at++]);
    r.frequency_penalty = BitsFloat(words[at++]);
    r.num_top_logprobs = static_cast<int32_t>(words[at++]);
    if (!Read(words, at, r.penalty_token_ids) || !Read(words, at, r.penalty_output_counts) ||
        !Read(words, at, r.banned_token_ids) || !Read(words, at, r.bias_token_ids) ||
        !Read(words, at, r.bias_values) || r.bias_values.size() != r.bias_token_ids.size() ||
        !ReadPacked(words, at, r.allowed_mask)) {
      return bad();
    }
  }
  *at_out = at;
  return plan;
}

std::vector<int64_t> EncodeCommandBatch(const std::vector<std::vector<int64_t>>& commands) {
  std::vector<int64_t> words = {static_cast<int64_t>(commands.size())};
  for (const std::vector<int64_t>& c : commands) Append(words, c);
  return words;
}

absl::StatusOr<std::vector<std::vector<int64_t>>> DecodeCommandBatch(
    const std::vector<int64_t>& words, size_t* at) {
  const auto bad = [] {
    return absl::DataLossError("a command batch from the leader is malformed");
  };
  if (*at >= words.size()) return bad();
  const int64_t n = words[(*at)++];
  // Every command takes at least its length word.
  if (n < 0 || static_cast<size_t>(n) > words.size() - *at) return bad();
  std::vector<std::vector<int64_t>> commands(static_cast<size_t>(n));
  for (std::vector<int64_t>& c : commands) {
    if (!Read(words, *at, c)) return bad();
  }
  return commands;
}

absl::Status AppendReplySection(std::vector<int64_t>& section, const std::vector<int64_t>& other,
                                int from) {
  if (other.empty() || other[0] < 0) {
    return absl::DataLossError(absl::StrCat("rank ", from, " sent a reply section of no entries"));
  }
  if (section.empty()) section.push_back(0);
  section[0] += other[0];
  section.insert(section.end(), other.begin() + 1, other.end());
  return absl::OkStatus();
}

void AppendReplyEntry(std::vector<int64_t>& section, int rank,
                      const std::vector<std::vector<int64_t>>& replies) {
  if (section.empty()) section.push_back(0);
  ++section[0];
  section.push_back(rank);
  section.push_back(static_cast<int64_t>(replies.size()));
  for (const std::vector<int64_t>& r : replies) Append(section, r);
}

absl::StatusOr<std::vector<std::vector<std::vector<int64_t>>>> DecodeReplySection(
    const std::vector<int64_t>& section, int replica_size, size_t commands) {
  const auto bad = [](const std::string& what) {
    return absl::DataLossError(absl::StrCat("the followers' replies are malformed: ", what));
  };
  const size_t followers = replica_size > 1 ? static_cast<size_t>(replica_size - 1) : 0;
  std::vector<std::vector<std::vector<int64_t>>> replies(
      commands, std::vector<std::vector<int64_t>>(followers));
  std::vector<bool> seen(followers, false);
  size_t at = 0;
  if (section.empty()) return bad("no entry count");
  const int64_t entries = section[at++];
  if (entries != static_cast<int64_t>(followers)) {
    return bad(absl::StrCat(entries, " entries from ", followers, " followers"));
  }
  for (int64_t e = 0; e < entries; ++e) {
    if (section.size() - at < 2) return bad("a truncated entry");
    const int64_t rank = section[at++];
    const int64_t n = section[at++];
    if (rank < 1 || rank > static_cast<int64_t>(followers) || seen[rank - 1]) {
      return bad(absl::StrCat("an entry of rank ", rank));
    }
    if (n != static_cast<int64_t>(commands)) {
      return bad(absl::StrCat("rank ", rank, " answered ", n, " of ", commands, " commands"));
    }
    seen[rank - 1] = true;
    for (size_t c = 0; c < commands; ++c) {
      if (!Read(section, at, replies[c][rank - 1])) return bad(absl::StrCat("rank ", rank));
    }
  }
  if (at != section.size()) return bad("trailing words");
  return replies;
}

}  // namespace tessera::worker
