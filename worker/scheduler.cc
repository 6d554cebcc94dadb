#include "worker/scheduler.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status_macros.h"
#include "kernels/op_params.h"

namespace tessera::worker {

struct Scheduler::Sequence {
  RequestId id = 0;  // ascending in arrival order
  int32_t priority = 0;
  SamplingParams sampling;
  uint64_t salt_key = 0;
  int64_t seed = 0;
  std::unique_ptr<StopMatcher> stop_matcher;
  std::unique_ptr<model::TokenConstraint> constraint;  // structured outputs
  std::vector<int32_t> tokens;                         // prompt, then generated
  int32_t num_prompt = 0;
  int32_t num_computed = 0;  // tokens whose K/V are in `blocks`
  std::vector<int32_t> blocks;
  std::vector<uint64_t> block_hashes;  // of the full blocks of `tokens`, as far as computed
  int32_t num_registered = 0;          // leading blocks offered to the prefix cache
  bool penalties = false;
  absl::flat_hash_map<int32_t, int32_t> penalty_counts;  // prompt and output tokens -> output count
  bool admitted = false;                                 // once; for num_cached_tokens
  bool sent_first = false;
  int32_t num_cached_tokens = 0;
  std::optional<KvDestination> kv_destination;  // prefill side of disaggregated serving
  // Layer-wise streaming: leading blocks whose send a step planned (or cached at the destination).
  int32_t kv_planned_blocks = 0;
  // Steps awaiting Update that compute tokens of this sequence, and how many tokens they compute
  // in all: several only for prompt chunks (a chunk needs no token of the one before it).
  int32_t in_flight_steps = 0;
  int32_t in_flight_tokens = 0;
  bool aborted = false;  // aborted while in flight: removed when its last step is applied

  // Tokens computed or being computed: where its next step starts.
  int32_t scheduled_end() const { return num_computed + in_flight_tokens; }
  // Whether another step may take it now: its steps in flight return no token it needs.
  bool schedulable() const {
    return in_flight_steps == 0 || scheduled_end() < static_cast<int32_t>(tokens.size());
  }

  int32_t generated() const { return static_cast<int32_t>(tokens.size()) - num_prompt; }
};

Scheduler::Scheduler(const SchedulerConfig& config, const ExecutorLimits& limits,
                     const model::ModelConfig& model)
    : config_(config),
      limits_(limits),
      block_size_(limits.block_size),
      vocab_size_(model.vocab_size),
      eos_token_ids_(model.eos_token_ids),
      blocks_(limits.num_blocks, config.enable_prefix_caching) {}

Scheduler::~Scheduler() = default;

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(const SchedulerConfig& config,
                                                             const ExecutorLimits& limits,
                                                             const model::ModelConfig& model) {
  auto error = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("Scheduler: ", parts...));
  };
  if (config.max_model_len <= 0 || config.max_num_seqs <= 0 || config.max_num_batched_tokens <= 0) {
    return error("max_model_len (", config.max_model_len, "), max_num_seqs (", config.max_num_seqs,
                 ") and max_num_batched_tokens (", config.max_num_batched_tokens,
                 ") must be positive");
  }
  if (config.max_steps_in_flight < 1) {
    return error("max_steps_in_flight (", config.max_steps_in_flight, ") must be at least 1");
  }
  if (limits.num_blocks <= 0 || limits.block_size <= 0) {
    return error("the executor has ", limits.num_blocks, " KV blocks of ", limits.block_size,
                 " tokens");
  }
  if (model.vocab_size <= 0) return error("the model has no vocabulary");
  const int64_t blocks_per_seq =
      (int64_t{config.max_model_len} + limits.block_size - 1) / limits.block_size;
  if (config.max_num_batched_tokens > limits.max_num_tokens ||
      config.max_num_seqs > limits.max_num_seqs || blocks_per_seq > limits.max_blocks_per_seq) {
    return error("the options exceed the executor's limits: max_num_batched_tokens ",
                 config.max_num_batched_tokens, " (at most ", limits.max_num_tokens,
                 "), max_num_seqs ", config.max_num_seqs, " (at most ", limits.max_num_seqs,
                 "), max_model_len ", config.max_model_len, " = ", blocks_per_seq,
                 " blocks (at most ", limits.max_blocks_per_seq, ")");
  }
  if (config.max_num_batched_tokens < config.max_num_seqs) {
    return error("max_num_batched_tokens (", config.max_num_batched_tokens,
                 ") must be at least max_num_seqs (", config.max_num_seqs,
                 "): every running sequence needs a token per step");
  }
  if (!config.enable_chunked_prefill && config.max_num_batched_tokens < config.max_model_len) {
    return error("without chunked prefill max_num_batched_tokens (", config.max_num_batched_tokens,
                 ") must cover max_model_len (", config.max_model_len, ")");
  }
  return std::unique_ptr<Scheduler>(new Scheduler(config, limits, model));
}

absl::Status Scheduler::Validate(const Request& request) const {
  const SamplingParams& s = request.sampling;
  auto error = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (request.prompt.empty()) return error("empty prompt");
  for (int32_t id : request.prompt) {
    if (id < 0 || id >= vocab_size_) {
      return error("prompt token ", id, " outside the vocabulary [0, ", vocab_size_, ")");
    }
  }
  TESSERA_RETURN_IF_ERROR(model::ValidateSamplingParams(s, vocab_size_));
  const int64_t total = static_cast<int64_t>(request.prompt.size()) + s.max_tokens;
  if (total > config_.max_model_len) {
    return error("prompt (", request.prompt.size(), " tokens) + max_tokens (", s.max_tokens,
                 ") exceeds max_model_len ", config_.max_model_len);
  }
  // The last generated token is never run, so total - 1 tokens need K/V.
  const int64_t blocks = (total - 1 + block_size_ - 1) / block_size_;
  if (blocks > limits_.num_blocks) {
    return error("prompt (", request.prompt.size(), " tokens) + max_tokens (", s.max_tokens,
                 ") needs ", blocks, " KV blocks of ", block_size_,
                 " tokens but the whole cache has ", limits_.num_blocks,
                 ": the request could never run");
  }
  if (request.timeout < absl::ZeroDuration()) {
    return error("timeout must not be negative, got ", absl::FormatDuration(request.timeout));
  }
  if (request.priority != 0 && !config_.priority_scheduling) {
    return error("priority ", request.priority,
                 " needs priority scheduling, which this replica does not use (start it with "
                 "--scheduling-policy priority)");
  }
  if (request.kv_destination.has_value() && request.kv_import.has_value()) {
    return error("a request cannot both send (kv_destination) and receive (kv_import) its KV");
  }
  const int64_t len = static_cast<int64_t>(request.prompt.size());
  if (const auto& d = request.kv_destination; d.has_value()) {
    const int64_t cached = d->num_cached_tokens;
    if (cached < 0 || cached % block_size_ != 0 || cached > len / block_size_ * block_size_) {
      return error("kv_destination: num_cached_tokens ", cached,
                   " must be a multiple of the block size ", block_size_,
                   " covering only full blocks of the ", len, "-token prompt");
    }
    const int64_t want = (len + block_size_ - 1) / block_size_ - cached / block_size_;
    if (static_cast<int64_t>(d->block_ids.size()) != want) {
      return error("kv_destination: ", d->block_ids.size(), " destination blocks for the ", want,
                   " blocks of the prompt past its cached prefix");
    }
    if (d->token == 0) return error("kv_destination: token 0 is reserved");
    if (d->ranks.empty()) return error("kv_destination: no destination ranks");
  }
  if (const auto& i = request.kv_import; i.has_value()) {
    if (i->first_token < 0 || i->first_token >= vocab_size_) {
      return error("kv_import: first token ", i->first_token, " outside the vocabulary [0, ",
                   vocab_size_, ")");
    }
    if (s.max_tokens < 2) {
      return error("kv_import: max_tokens ", s.max_tokens,
                   " leaves nothing to decode after the first token");
    }
  }
  return absl::OkStatus();
}

absl::Status Scheduler::Add(RequestId id, Request request,
                            std::unique_ptr<StopMatcher> stop_matcher,
                            std::unique_ptr<model::TokenConstraint> constraint) {
  if (sequences_.contains(id)) {
    return absl::AlreadyExistsError(absl::StrCat("request ", id, " is already scheduled"));
  }
  if (absl::Status s = Validate(request); !s.ok()) return s;
  auto seq = std::make_unique<Sequence>();
  seq->id = id;
  seq->priority = request.priority;
  seq->sampling = std::move(request.sampling);
  seq->salt_key = CacheSaltKey(request.cache_salt);
  seq->seed = seq->sampling.seed.has_value()
                  ? *seq->sampling.seed
                  : static_cast<int64_t>(kernels::SplitMix64(config_.seed ^ id));
  seq->stop_matcher = std::move(stop_matcher);
  seq->constraint = std::move(constraint);
  seq->tokens = std::move(request.prompt);
  seq->num_prompt = static_cast<int32_t>(seq->tokens.size());
  seq->kv_destination = std::move(request.kv_destination);
  const SamplingParams& s = seq->sampling;
  seq->penalties =
      s.repetition_penalty != 1.0f || s.presence_penalty != 0.0f || s.frequency_penalty != 0.0f;
  if (seq->penalties) {
    for (int32_t t : seq->tokens) seq->penalty_counts.emplace(t, 0);
  }
  Enqueue(waiting_, seq.get(), /*front=*/false);
  sequences_.emplace(id, std::move(seq));
  return absl::OkStatus();
}

bool Scheduler::Abort(RequestId id) {
  const auto it = sequences_.find(id);
  if (it == sequences_.end() || it->second->aborted) return false;
  if (it->second->in_flight_steps > 0) {
    // Its steps still run on the replica: the blocks go when the last of them is applied.
    it->second->aborted = true;
    std::erase(running_, it->second.get());
    ++counters_.requests_aborted;
    return true;
  }
  ReleaseBlocks(*it->second);
  Remove(it->second.get());
  ++counters_.requests_aborted;
  return true;
}

std::vector<RequestId> Scheduler::request_ids() const {
  std::vector<RequestId> ids;
  for (const auto& [id, seq] : sequences_) {
    if (!seq->aborted) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::vector<RequestId> Scheduler::TakeAdmitted() {
  std::vector<RequestId> out;
  out.swap(admitted_);
  return out;
}

void Scheduler::ComputeBlockHashes(Sequence& seq, int32_t full_blocks) const {
  ExtendBlockHashes(seq.tokens, seq.salt_key, full_blocks, seq.block_hashes);
}

void Scheduler::ExtendBlockHashes(absl::Span<const int32_t> tokens, uint64_t salt_key,
                                  int32_t full_blocks, std::vector<uint64_t>& hashes) const {
  while (static_cast<int32_t>(hashes.size()) < full_blocks) {
    const size_t i = hashes.size();
    const uint64_t parent = i == 0 ? kRootBlockHash : hashes[i - 1];
    hashes.push_back(BlockHash(parent, salt_key, tokens.subspan(i * block_size_, block_size_)));
  }
}

void Scheduler::ReleaseBlocks(Sequence& seq) {
  TESSERA_CHECK_OK(blocks_.Release(seq.blocks));
  seq.blocks.clear();
  seq.num_computed = 0;
  seq.num_registered = 0;
}

void Scheduler::Remove(Sequence* seq) {
  std::erase(running_, seq);
  if (auto it = std::find(waiting_.begin(), waiting_.end(), seq); it != waiting_.end()) {
    waiting_.erase(it);
  }
  const RequestId id = seq->id;
  sequences_.erase(id);  // destroys seq
}

void Scheduler::Preempt(Sequence& seq) {
  if (seq.kv_destination.has_value() && seq.kv_planned_blocks > 0) {
    kv_sends_to_cancel_.push_back(seq.id);
    seq.kv_planned_blocks = 0;
  }
  ReleaseBlocks(seq);
  std::erase(running_, &seq);
  Enqueue(waiting_, &seq, /*front=*/true);
  ++counters_.preemptions;
}

template <typename Queue>
void Scheduler::Enqueue(Queue& queue, Sequence* seq, bool front) const {
  if (!config_.priority_scheduling) {
    queue.insert(front ? queue.begin() : queue.end(), seq);
    return;
  }
  // (priority, arrival) ascending: after every sequence at least as urgent.
  const auto after =
      std::upper_bound(queue.begin(), queue.end(), seq, [](const Sequence* a, const Sequence* b) {
        return a->priority != b->priority ? a->priority < b->priority : a->id < b->id;
      });
  queue.insert(after, seq);
}

StepPlan Scheduler::Schedule() {
  TESSERA_CHECK(scheduled_.empty()) << "Schedule while building a step";
  TESSERA_CHECK(static_cast<int32_t>(in_flight_.size()) < config_.max_steps_in_flight)
      << "Schedule with " << in_flight_.size() << " steps in flight";
  const size_t live = running_.size() + waiting_.size();
  const auto share = static_cast<size_t>(config_.max_steps_in_flight);  // >= 1 (Create)
  seq_cap_ = std::max<size_t>(1, (live + share - 1) / share);
  int32_t budget = config_.max_num_batched_tokens;
  bool preempted = false;
  if (config_.enable_chunked_prefill) {
    ScheduleRunning(budget, preempted);
    // As vLLM: no admissions in a step that had to preempt (the cache is short already).
    if (!preempted) ScheduleWaiting(budget);
  } else if (!ScheduleWaiting(budget)) {
    // Without chunked prefill whole prompts run in steps of their own, before decodes.
    ScheduleRunning(budget, preempted);
  }
  StepPlan plan = BuildPlan();
  newest_sends_.clear();
  if (!scheduled_.empty()) {
    for (const auto& [seq, n] : scheduled_) {
      ++seq->in_flight_steps;
      seq->in_flight_tokens += n;
      PlanKvSend(*seq, n);
    }
    in_flight_.push_back(std::move(scheduled_));
    scheduled_.clear();
  }
  return plan;
}

bool Scheduler::ScheduleRunning(int32_t& budget, bool& preempted) {
  bool any = false;
  for (size_t i = 0; i < running_.size() && budget > 0 && RoomForSequence();) {
    Sequence* seq = running_[i];
    if (!seq->schedulable()) {  // its next token is not known yet
      ++i;
      continue;
    }
    // From where its steps in flight end: a prompt's next chunk may follow its previous one into
    // the pipeline, as every rank runs them in order.
    const int32_t start = seq->scheduled_end();
    const int32_t pending = static_cast<int32_t>(seq->tokens.size()) - start;
    const int32_t n = std::min(pending, budget);
    const int32_t need = BlocksFor(start + n) - static_cast<int32_t>(seq->blocks.size());
    bool preempted_self = false;
    bool stalled = false;
    while (need > blocks_.num_available()) {
      // The most recently admitted sequence of no step in flight, not yet in this step: one
      // after seq, or seq itself (unless its earlier chunks are in flight).
      Sequence* victim = seq;
      for (size_t v = running_.size() - 1; v > i; --v) {
        if (running_[v]->in_flight_steps == 0) {
          victim = running_[v];
          break;
        }
      }
      if (victim->in_flight_steps > 0 || (victim == seq && !in_flight_.empty())) {
        stalled = true;  // rather than preempt itself, wait for the blocks the steps in flight free
        break;
      }
      Preempt(*victim);
      preempted = true;
      if (victim == seq) {
        preempted_self = true;
        break;
      }
    }
    // Preempted itself: everything after it was preempted first. Stalled: what comes after it
    // was admitted later and waits too.
    if (preempted_self || stalled) break;
    if (need > 0) {
      absl::StatusOr<std::vector<int32_t>> fresh = blocks_.Allocate(need);
      TESSERA_CHECK(fresh.ok()) << fresh.status();
      seq->blocks.insert(seq->blocks.end(), fresh->begin(), fresh->end());
    }
    scheduled_.push_back({seq, n});
    budget -= n;
    any = true;
    ++i;
  }
  return any;
}

bool Scheduler::ScheduleWaiting(int32_t& budget) {
  bool any = false;
  while (!waiting_.empty() && static_cast<int32_t>(running_.size()) < config_.max_num_seqs &&
         budget > 0 && RoomForSequence()) {
    Sequence* seq = waiting_.front();
    const int32_t len = static_cast<int32_t>(seq->tokens.size());
    if (!seq->blocks.empty()) {
      // Imported (AddPrefilled): the prompt's KV is in its blocks; only the first token is left.
      const int32_t n = std::min(len - seq->num_computed, budget);
      const int32_t need =
          BlocksFor(seq->num_computed + n) - static_cast<int32_t>(seq->blocks.size());
      if (need > blocks_.num_available()) break;
      if (need > 0) {
        absl::StatusOr<std::vector<int32_t>> fresh = blocks_.Allocate(need);
        TESSERA_CHECK(fresh.ok()) << fresh.status();
        seq->blocks.insert(seq->blocks.end(), fresh->begin(), fresh->end());
      }
      waiting_.pop_front();
      Enqueue(running_, seq, /*front=*/false);
      scheduled_.push_back({seq, n});
      budget -= n;
      any = true;
      continue;
    }
    // The longest cached prefix of full blocks, short of the last token (it must be computed
    // for the logits).
    int32_t hits = 0;
    if (blocks_.prefix_caching()) {
      const int32_t max_hits = (len - 1) / block_size_;
      ComputeBlockHashes(*seq, max_hits);
      hits = blocks_.LookUp(absl::MakeConstSpan(seq->block_hashes).first(max_hits));
    }
    const auto hit_hashes = absl::MakeConstSpan(seq->block_hashes).first(hits);
    const int32_t computed = hits * block_size_;
    const int32_t pending = len - computed;
    int32_t n = pending;
    if (pending > budget) {
      if (!config_.enable_chunked_prefill) break;
      n = budget;
    }
    const int32_t need = BlocksFor(computed + n) - hits;
    if (need > blocks_.num_available() - blocks_.CountEvictable(hit_hashes)) break;
    seq->blocks = blocks_.AcquireCached(hit_hashes);
    absl::StatusOr<std::vector<int32_t>> fresh = blocks_.Allocate(need);
    TESSERA_CHECK(fresh.ok()) << fresh.status();
    seq->blocks.insert(seq->blocks.end(), fresh->begin(), fresh->end());
    seq->num_computed = computed;
    seq->num_registered = hits;
    if (!seq->admitted) {
      seq->num_cached_tokens = computed;
      admitted_.push_back(seq->id);
    }
    seq->admitted = true;
    if (blocks_.prefix_caching()) {
      counters_.prefix_cache_queries += len;
      counters_.prefix_cache_hits += computed;
    }
    waiting_.pop_front();
    Enqueue(running_, seq, /*front=*/false);
    scheduled_.push_back({seq, n});
    budget -= n;
    any = true;
  }
  return any;
}

void Scheduler::DiscardStep() {
  std::vector<Sequence*> aborted;
  for (const std::vector<Scheduled>& step : in_flight_) {
    for (const auto& [seq, n] : step) {
      if (seq->in_flight_steps == 0) continue;  // a later step of it was seen already
      seq->in_flight_steps = 0;
      seq->in_flight_tokens = 0;
      if (seq->aborted) aborted.push_back(seq);
    }
  }
  in_flight_.clear();
  for (Sequence* seq : aborted) {
    ReleaseBlocks(*seq);
    Remove(seq);
  }
}

namespace {
// Blocks [first, end) of a prompt with a KV destination that a step computing its tokens up to
// `computed_after` makes ready to send, given `sent` already sent.
std::pair<int32_t, int32_t> KvBlocksReady(int32_t sent, int32_t cached_blocks,
                                          int32_t computed_after, int32_t num_prompt,
                                          int32_t block_size) {
  const int32_t first = std::max(sent, cached_blocks);
  const int32_t end = computed_after >= num_prompt ? (num_prompt + block_size - 1) / block_size
                                                   : computed_after / block_size;
  return {first, std::max(first, end)};
}
}  // namespace

void Scheduler::PlanKvSend(Sequence& seq, int32_t n) {
  // This step computes the sequence's tokens [end - n, end): it is its newest step in flight.
  const int32_t end_token = seq.scheduled_end();
  if (!seq.kv_destination.has_value() || end_token - n >= seq.num_prompt) return;
  const KvDestination& d = *seq.kv_destination;
  const int32_t cached = d.num_cached_tokens / block_size_;
  const auto [first, end] =
      KvBlocksReady(seq.kv_planned_blocks, cached, end_token, seq.num_prompt, block_size_);
  // Planned now, not when the step is applied: the prompt's next chunk may follow this one into
  // the pipeline and sends from where this one ends.
  seq.kv_planned_blocks = end;
  if (first == end) return;
  KvSend send;
  send.id = seq.id;
  send.blocks.assign(seq.blocks.begin() + first, seq.blocks.begin() + end);
  send.destination.token = d.token;
  send.destination.num_cached_tokens = d.num_cached_tokens;
  send.destination.block_ids.assign(d.block_ids.begin() + (first - cached),
                                    d.block_ids.begin() + (end - cached));
  send.destination.ranks = d.ranks;
  newest_sends_.push_back(std::move(send));
}

std::vector<RequestId> Scheduler::TakeKvSendsToCancel() {
  return std::exchange(kv_sends_to_cancel_, {});
}

SamplingRow Scheduler::MakeSamplingRow(const Sequence& seq) const {
  const SamplingParams& s = seq.sampling;
  SamplingRow row;
  row.temperature = s.temperature;
  row.top_k = std::max(s.top_k, 0);
  row.top_p = s.top_p;
  row.min_p = s.min_p;
  row.seed = seq.seed;
  row.step = seq.generated();
  row.num_top_logprobs = s.logprobs;
  if (seq.penalties) {
    row.repetition_penalty = s.repetition_penalty;
    row.presence_penalty = s.presence_penalty;
    row.frequency_penalty = s.frequency_penalty;
    row.penalty_token_ids.reserve(seq.penalty_counts.size());
    row.penalty_output_counts.reserve(seq.penalty_counts.size());
    for (const auto& [token, count] : seq.penalty_counts) {
      row.penalty_token_ids.push_back(token);
      row.penalty_output_counts.push_back(count);
    }
  }
  row.bias_token_ids.reserve(s.logit_bias.size());
  row.bias_values.reserve(s.logit_bias.size());
  for (const model::LogitBias& b : s.logit_bias) {
    row.bias_token_ids.push_back(b.token_id);
    row.bias_values.push_back(b.bias);
  }
  if (seq.generated() < s.min_tokens) {
    row.banned_token_ids = s.stop_token_ids;
    if (!s.ignore_eos) {
      for (int64_t eos : eos_token_ids_) {
        if (eos >= 0 && eos < vocab_size_)
          row.banned_token_ids.push_back(static_cast<int32_t>(eos));
      }
    }
  }
  if (seq.constraint != nullptr && !seq.constraint->waiting_for_start()) {
    row.allowed_mask.resize(static_cast<size_t>((vocab_size_ + 31) / 32));
    // A mask that allows nothing (the vocabulary cannot spell what must come) samples a token the
    // constraint then refuses: the request ends with that error in Update.
    seq.constraint->FillMask(absl::MakeSpan(row.allowed_mask));
  }
  return row;
}

StepPlan Scheduler::BuildPlan() const {
  StepPlan plan;
  const int32_t width = limits_.max_blocks_per_seq;
  for (const auto& [seq, n] : scheduled_) {
    const int32_t start = seq->scheduled_end();  // past its chunks in flight
    for (int32_t j = 0; j < n; ++j) {
      const int32_t pos = start + j;
      plan.token_ids.push_back(seq->tokens[pos]);
      plan.positions.push_back(pos);
      plan.slot_mapping.push_back(
          static_cast<int64_t>(seq->blocks[pos / block_size_]) * block_size_ + pos % block_size_);
    }
    plan.query_start.push_back(static_cast<int32_t>(plan.token_ids.size()));
    plan.seq_lens.push_back(start + n);
    for (int32_t j = 0; j < width; ++j) {
      plan.block_tables.push_back(j < static_cast<int32_t>(seq->blocks.size()) ? seq->blocks[j]
                                                                               : 0);
    }
    if (start + n == static_cast<int32_t>(seq->tokens.size())) {
      plan.logits_rows.push_back(static_cast<int32_t>(plan.token_ids.size()) - 1);
      plan.sampling.push_back(MakeSamplingRow(*seq));
    }
  }
  return plan;
}

std::optional<FinishReason> Scheduler::CheckStop(Sequence& seq, int32_t token) const {
  const SamplingParams& s = seq.sampling;
  // The matcher sees every token, to keep its text whole, but min_tokens holds it back.
  const bool text_stop = seq.stop_matcher != nullptr && seq.stop_matcher->Matches(token);
  if (seq.generated() >= s.min_tokens) {
    const bool eos = !s.ignore_eos && std::find(eos_token_ids_.begin(), eos_token_ids_.end(),
                                                token) != eos_token_ids_.end();
    const bool stop_id = std::find(s.stop_token_ids.begin(), s.stop_token_ids.end(), token) !=
                         s.stop_token_ids.end();
    if (eos || stop_id || text_stop) return FinishReason::kStop;
  }
  if (seq.generated() >= s.max_tokens ||
      static_cast<int32_t>(seq.tokens.size()) >= config_.max_model_len) {
    return FinishReason::kLength;
  }
  return std::nullopt;
}

absl::StatusOr<std::vector<TokenEvent>> Scheduler::Update(const StepResult& result) {
  if (in_flight_.empty()) return absl::InternalError("a step result with no step in flight");
  std::vector<Scheduled> scheduled = std::move(in_flight_.front());
  in_flight_.pop_front();
  std::vector<Sequence*> aborted;
  for (const auto& [seq, n] : scheduled) {
    --seq->in_flight_steps;
    seq->in_flight_tokens -= n;
    if (seq->aborted && seq->in_flight_steps == 0) aborted.push_back(seq);
  }
  // Sequences aborted while their steps ran go once the last is back, their rows unread.
  absl::Cleanup remove_aborted = [&] {
    for (Sequence* seq : aborted) {
      ReleaseBlocks(*seq);
      Remove(seq);
    }
  };
  // Whether a sequence's part of the step ends its tokens, so that it has a logits row.
  const auto has_row = [](const Sequence& seq, int32_t n) {
    return seq.num_computed + n == static_cast<int32_t>(seq.tokens.size());
  };
  size_t rows = 0;
  for (const auto& [seq, n] : scheduled) rows += has_row(*seq, n) ? 1 : 0;
  const size_t top_n = result.top_n > 0 ? static_cast<size_t>(result.top_n) : 0;
  if (result.token_ids.size() != rows || result.logprobs.size() != rows ||
      result.top_token_ids.size() != rows * top_n || result.top_logprobs.size() != rows * top_n) {
    return absl::InternalError(absl::StrCat("the executor returned ", result.token_ids.size(),
                                            " tokens for ", rows, " logits rows"));
  }
  ++counters_.steps;
  counters_.last_step_prefill_tokens = 0;
  counters_.last_step_decode_tokens = 0;
  counters_.last_step_seqs = static_cast<int64_t>(scheduled.size());
  std::vector<TokenEvent> events;
  std::vector<Sequence*> finished;
  std::vector<Sequence*> handoffs;  // finished with kv_handoff (a subset of finished)
  size_t row = 0;
  for (const auto& [seq, n] : scheduled) {
    if (seq->aborted) {
      row += has_row(*seq, n) ? 1 : 0;
      continue;
    }
    // A decode feeds back the one token generated last step; anything else is a prefill
    // (prompt chunks, and recomputation after preemption).
    const bool decode = n == 1 && seq->num_computed >= seq->num_prompt &&
                        seq->num_computed + 1 == static_cast<int32_t>(seq->tokens.size());
    (decode ? counters_.last_step_decode_tokens : counters_.last_step_prefill_tokens) += n;
    seq->num_computed += n;
    if (blocks_.prefix_caching()) {
      const int32_t full = seq->num_computed / block_size_;
      ComputeBlockHashes(*seq, full);
      for (int32_t i = seq->num_registered; i < full; ++i) {
        blocks_.Register(seq->blocks[i], seq->block_hashes[i]);
      }
      seq->num_registered = std::max(seq->num_registered, full);
    }
    if (seq->num_computed != static_cast<int32_t>(seq->tokens.size())) continue;  // no row
    const int32_t token = result.token_ids[row];
    if (token < 0 || token >= vocab_size_) {
      return absl::InternalError(absl::StrCat("the executor sampled token ", token,
                                              " outside the vocabulary [0, ", vocab_size_, ")"));
    }
    TokenEvent event;
    event.request_id = seq->id;
    event.token_id = token;
    event.logprob = result.logprobs[row];
    const size_t wanted = std::min<size_t>(static_cast<size_t>(seq->sampling.logprobs), top_n);
    for (size_t j = 0; j < wanted; ++j) {
      event.top_logprobs.push_back(
          {result.top_token_ids[row * top_n + j], result.top_logprobs[row * top_n + j]});
    }
    if (!seq->sent_first) event.num_cached_tokens = seq->num_cached_tokens;
    seq->sent_first = true;
    ++row;
    if (seq->constraint != nullptr) {
      if (absl::Status s = seq->constraint->Accept(token); !s.ok()) {
        event.token_id = -1;
        event.logprob = 0.0f;
        event.top_logprobs.clear();
        event.finish_reason = FinishReason::kAbort;
        event.status = absl::InternalError(absl::StrCat("structured output: ", s.message()));
        finished.push_back(seq);
        events.push_back(std::move(event));
        continue;
      }
    }
    seq->tokens.push_back(token);
    if (seq->penalties) ++seq->penalty_counts[token];
    event.finish_reason = CheckStop(*seq, token);
    if (!event.finish_reason.has_value() && seq->constraint != nullptr &&
        seq->constraint->IsTerminated()) {
      event.finish_reason = FinishReason::kStop;  // the output is whole; nothing may follow
    }
    if (!event.finish_reason.has_value() && seq->kv_destination.has_value()) {
      // Prefill done: decoding goes on at the decode replica once the KV is there.
      event.finish_reason = FinishReason::kLength;
      event.kv_handoff = true;
      handoffs.push_back(seq);
    }
    if (event.finish_reason.has_value()) finished.push_back(seq);
    events.push_back(std::move(event));
  }
  counters_.prefill_tokens += counters_.last_step_prefill_tokens;
  counters_.decode_tokens += counters_.last_step_decode_tokens;
  for (Sequence* seq : handoffs) {
    // Keep the blocks (in use) until the engine has sent them; ReleaseBlocks below finds none.
    KvExportBlocks& x = exports_[seq->id];
    const auto from =
        static_cast<std::ptrdiff_t>(seq->kv_destination->num_cached_tokens / block_size_);
    const auto to = static_cast<std::ptrdiff_t>(BlocksFor(seq->num_prompt));
    x.blocks.assign(seq->blocks.begin() + from, seq->blocks.begin() + to);
    x.destination = std::move(*seq->kv_destination);
    x.held = std::move(seq->blocks);
    seq->blocks.clear();
  }
  for (Sequence* seq : finished) {
    ReleaseBlocks(*seq);
    Remove(seq);
    ++counters_.requests_finished;
  }
  return events;
}

absl::StatusOr<Scheduler::KvReservationBlocks> Scheduler::Reserve(uint64_t token,
                                                                  const Request& request) {
  TESSERA_RETURN_IF_ERROR(Validate(request));
  if (reservations_.contains(token)) {
    return absl::AlreadyExistsError(absl::StrCat("KV reservation ", token, " exists already"));
  }
  const auto len = static_cast<int32_t>(request.prompt.size());
  const int32_t full = len / block_size_;
  std::vector<uint64_t> hashes;
  int32_t hits = 0;
  if (blocks_.prefix_caching()) {
    ExtendBlockHashes(request.prompt, CacheSaltKey(request.cache_salt), full, hashes);
    hits = blocks_.LookUp(hashes);
  }
  const auto hit_hashes = absl::MakeConstSpan(hashes).first(hits);
  const int32_t need = BlocksFor(len) - hits;
  const int32_t available = blocks_.num_available() - blocks_.CountEvictable(hit_hashes);
  if (need > available) {
    return absl::ResourceExhaustedError(absl::StrCat("the ", len, "-token prompt needs ", need,
                                                     " KV blocks and ", available,
                                                     " are available now"));
  }
  Reservation r;
  r.blocks = blocks_.AcquireCached(hit_hashes);
  absl::StatusOr<std::vector<int32_t>> fresh = blocks_.Allocate(need);
  TESSERA_CHECK(fresh.ok()) << fresh.status();
  r.blocks.insert(r.blocks.end(), fresh->begin(), fresh->end());
  r.num_cached_tokens = hits * block_size_;
  KvReservationBlocks out{*fresh, r.num_cached_tokens};
  reservations_.emplace(token, std::move(r));
  return out;
}

absl::Status Scheduler::ReleaseReservation(uint64_t token) {
  const auto it = reservations_.find(token);
  if (it == reservations_.end()) {
    return absl::NotFoundError(absl::StrCat("no KV reservation ", token));
  }
  TESSERA_CHECK_OK(blocks_.Release(it->second.blocks));
  reservations_.erase(it);
  return absl::OkStatus();
}

absl::Status Scheduler::AddPrefilled(RequestId id, Request request,
                                     std::unique_ptr<StopMatcher> stop_matcher,
                                     std::unique_ptr<model::TokenConstraint> constraint) {
  if (!request.kv_import.has_value()) {
    return absl::InvalidArgumentError("AddPrefilled needs a request with kv_import");
  }
  const uint64_t token = request.kv_import->token;
  const int32_t first = request.kv_import->first_token;
  const auto it = reservations_.find(token);
  if (it == reservations_.end()) {
    return absl::NotFoundError(absl::StrCat("no KV reservation ", token));
  }
  Reservation r = std::move(it->second);
  reservations_.erase(it);
  const int32_t num_cached = r.num_cached_tokens;
  if (constraint != nullptr) {
    if (absl::Status s = constraint->Accept(first); !s.ok()) {
      TESSERA_CHECK_OK(blocks_.Release(r.blocks));
      return absl::InvalidArgumentError(
          absl::StrCat("kv_import: the first token breaks the structured output: ", s.message()));
    }
  }
  if (absl::Status added =
          Add(id, std::move(request), std::move(stop_matcher), std::move(constraint));
      !added.ok()) {
    TESSERA_CHECK_OK(blocks_.Release(r.blocks));
    return added;
  }
  Sequence& seq = *sequences_.at(id);
  seq.blocks = std::move(r.blocks);
  seq.num_computed = seq.num_prompt;
  seq.admitted = true;
  admitted_.push_back(id);
  seq.sent_first = true;
  seq.num_cached_tokens = num_cached;
  if (blocks_.prefix_caching()) {
    const int32_t full = seq.num_prompt / block_size_;
    ComputeBlockHashes(seq, full);
    for (int32_t i = 0; i < full; ++i) blocks_.Register(seq.blocks[i], seq.block_hashes[i]);
    seq.num_registered = full;
  }
  seq.tokens.push_back(first);
  if (seq.penalties) ++seq.penalty_counts[first];
  return absl::OkStatus();
}

const Scheduler::KvExportBlocks* Scheduler::ExportOf(RequestId id) const {
  const auto it = exports_.find(id);
  return it == exports_.end() ? nullptr : &it->second;
}

void Scheduler::ReleaseExport(RequestId id) {
  const auto it = exports_.find(id);
  if (it == exports_.end()) return;
  TESSERA_CHECK_OK(blocks_.Release(it->second.held));
  exports_.erase(it);
}

SchedulerCounters Scheduler::counters() const {
  SchedulerCounters c = counters_;
  c.num_running = static_cast<int64_t>(running_.size());
  c.num_waiting = static_cast<int64_t>(waiting_.size());
  c.kv_blocks_total = blocks_.num_blocks();
  c.kv_blocks_free = blocks_.num_free();
  c.kv_blocks_in_use = blocks_.num_in_use();
  c.kv_blocks_cached = blocks_.num_cached();
  c.prefix_cache_evictions = blocks_.evictions();
  for (const auto& [token, r] : reservations_) {
    c.kv_blocks_reserved += static_cast<int64_t>(r.blocks.size());
  }
  for (const auto& [id, x] : exports_) {
    c.kv_blocks_exporting += static_cast<int64_t>(x.held.size());
  }
  return c;
}

}  // namespace tessera::worker
