// The scheduling policy on a FakeExecutor (tests/worker/fake_executor.h): no model, so hundreds
// of steps take milliseconds, and every plan is checked as a paged cache would see it.
#include "worker/scheduler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "tests/worker/fake_executor.h"

namespace tessera::worker {
namespace {

using ::testing::ElementsAreArray;
using testing::FakeAlone;
using testing::FakeExecutor;
using ::testing::HasSubstr;

constexpr int64_t kVocab = 1000;
constexpr int32_t kEos = 2;

model::ModelConfig Model() {
  model::ModelConfig c;
  c.vocab_size = kVocab;
  c.eos_token_ids = {kEos};
  return c;
}

ExecutorLimits Limits(int32_t num_blocks, int32_t block_size = 4) {
  ExecutorLimits l;
  l.num_blocks = num_blocks;
  l.block_size = block_size;
  l.max_blocks_per_seq = 64;
  l.max_num_tokens = 512;
  l.max_num_seqs = 64;
  return l;
}

SchedulerConfig Config(int32_t budget = 64, int32_t max_seqs = 16) {
  SchedulerConfig c;
  c.max_model_len = 256;
  c.max_num_batched_tokens = budget;
  c.max_num_seqs = max_seqs;
  return c;
}

Request MakeRequest(std::vector<int32_t> prompt, int32_t max_tokens) {
  Request r;
  r.prompt = std::move(prompt);
  r.sampling.max_tokens = max_tokens;
  r.sampling.ignore_eos = true;
  return r;
}

std::vector<int32_t> RandomPrompt(std::mt19937& rng, int len) {
  std::vector<int32_t> p;
  for (int i = 0; i < len; ++i) p.push_back(3 + static_cast<int32_t>(rng() % (kVocab - 3)));
  return p;
}

struct Outcome {
  std::vector<int32_t> tokens;
  std::optional<FinishReason> finish;
  int32_t num_cached_tokens = 0;
};

// Runs the scheduler on the executor until every request has finished; request i arrives before
// step arrivals[i].first. `between` runs before every step. With config.max_steps_in_flight > 1
// it keeps that many steps in flight as the engine does (the fake executes each at once, in
// submission order, as every rank of a pipeline does) and applies the oldest's result when no
// more fit.
class Driver {
 public:
  Driver(const SchedulerConfig& config, const ExecutorLimits& limits)
      : executor_(limits, kVocab), config_(config) {
    auto s = Scheduler::Create(config, limits, Model());
    EXPECT_TRUE(s.ok()) << s.status();
    scheduler_ = *std::move(s);
  }

  // Request i gets id i.
  std::map<RequestId, Outcome> Run(const std::vector<std::pair<int, Request>>& arrivals,
                                   const std::function<void(int)>& between = {}) {
    std::vector<size_t> order(arrivals.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return arrivals[a].first < arrivals[b].first; });
    size_t next = 0;
    for (int step = 0; step < 100000; ++step) {
      while (next < order.size() && arrivals[order[next]].first <= step) {
        EXPECT_TRUE(scheduler_->Add(order[next], arrivals[order[next]].second).ok());
        ++next;
      }
      if (between) between(step);
      if (!scheduler_->HasWork() && pending_.empty()) {
        if (next == order.size()) break;
        continue;
      }
      if (scheduler_->HasWork() &&
          static_cast<int32_t>(pending_.size()) < config_.max_steps_in_flight) {
        const StepPlan plan = scheduler_->Schedule();
        EXPECT_TRUE(!plan.token_ids.empty() || !pending_.empty()) << "step " << step;
        EXPECT_LE(plan.token_ids.size(), static_cast<size_t>(config_.max_num_batched_tokens));
        EXPECT_LE(plan.seq_lens.size(), static_cast<size_t>(config_.max_num_seqs));
        if (!plan.token_ids.empty()) {
          auto result = executor_.Execute(plan);
          EXPECT_TRUE(result.ok()) << result.status() << " at step " << step;
          if (!result.ok()) break;
          pending_.push_back(*std::move(result));
          max_pending_ = std::max(max_pending_, pending_.size());
          if (static_cast<int32_t>(pending_.size()) < config_.max_steps_in_flight) continue;
        }
      }
      if (pending_.empty()) break;
      const StepResult result = std::move(pending_.front());
      pending_.pop_front();
      auto events = scheduler_->Update(result);
      EXPECT_TRUE(events.ok()) << events.status();
      for (const TokenEvent& e : *events) {
        Outcome& o = outcomes_[e.request_id];
        if (o.tokens.empty()) o.num_cached_tokens = e.num_cached_tokens;
        o.tokens.push_back(e.token_id);
        EXPECT_FALSE(o.finish.has_value()) << "event after the last";
        o.finish = e.finish_reason;
      }
      const absl::Status invariants = scheduler_->blocks().CheckInvariants();
      EXPECT_TRUE(invariants.ok()) << invariants;
      if (!invariants.ok()) break;
    }
    return outcomes_;
  }

  Scheduler& scheduler() { return *scheduler_; }
  FakeExecutor& executor() { return executor_; }
  size_t max_steps_in_flight_seen() const { return max_pending_; }
  const std::map<RequestId, Outcome>& outcomes() const { return outcomes_; }

 private:
  FakeExecutor executor_;
  SchedulerConfig config_;
  std::unique_ptr<Scheduler> scheduler_;
  std::map<RequestId, Outcome> outcomes_;
  std::deque<StepResult> pending_;  // results of the steps in flight, oldest first
  size_t max_pending_ = 0;
};

void ExpectAllAlone(const std::vector<std::pair<int, Request>>& arrivals,
                    const std::map<RequestId, Outcome>& outcomes) {
  ASSERT_EQ(outcomes.size(), arrivals.size());
  for (size_t i = 0; i < arrivals.size(); ++i) {
    const Request& r = arrivals[i].second;
    const Outcome& o = outcomes.at(i);
    EXPECT_THAT(o.tokens, ElementsAreArray(FakeAlone(r.prompt, r.sampling.max_tokens, kVocab)))
        << "request " << i;
    EXPECT_EQ(o.finish, FinishReason::kLength) << "request " << i;
  }
}

void ExpectAllBlocksBack(const Scheduler& s) {
  const SchedulerCounters c = s.counters();
  EXPECT_EQ(c.kv_blocks_in_use, 0);
  EXPECT_EQ(c.kv_blocks_free + c.kv_blocks_cached, c.kv_blocks_total);
  EXPECT_EQ(c.num_running + c.num_waiting, 0);
}

TEST(SchedulerTest, RequestsArrivingAtRandomStepsMatchEachAlone) {
  std::mt19937 rng(17);
  SCOPED_TRACE("seed 17");
  std::vector<std::pair<int, Request>> arrivals;
  for (int i = 0; i < 64; ++i) {
    arrivals.emplace_back(static_cast<int>(rng() % 120),
                          MakeRequest(RandomPrompt(rng, 1 + static_cast<int>(rng() % 60)),
                                      1 + static_cast<int32_t>(rng() % 40)));
  }
  Driver d(Config(/*budget=*/48), Limits(/*num_blocks=*/512));
  const auto outcomes = d.Run(arrivals);
  ExpectAllAlone(arrivals, outcomes);
  ExpectAllBlocksBack(d.scheduler());
  const SchedulerCounters c = d.scheduler().counters();
  EXPECT_EQ(c.requests_finished, 64);
  EXPECT_EQ(c.preemptions, 0);
  EXPECT_GT(c.decode_tokens, 0);
  EXPECT_LT(c.steps, 64 * 40);  // batched: far fewer steps than one request at a time
}

TEST(SchedulerTest, ChunkedPrefillSplitsLongPromptsAndDecodesComeFirst) {
  Driver d(Config(/*budget=*/8, /*max_seqs=*/8), Limits(64));
  std::mt19937 rng(3);
  std::vector<std::pair<int, Request>> arrivals = {{0, MakeRequest(RandomPrompt(rng, 3), 20)},
                                                   {2, MakeRequest(RandomPrompt(rng, 30), 2)}};
  const auto outcomes = d.Run(arrivals);
  ExpectAllAlone(arrivals, outcomes);
  // The 30-token prompt takes ceil(30 / 7) steps, each led by the running request's decode.
  int full_steps = 0;
  for (const StepPlan& plan : d.executor().plans()) {
    if (plan.seq_lens.size() == 2) {
      EXPECT_EQ(plan.query_start[1], 1) << "the decode goes first";
    }
    full_steps += plan.token_ids.size() == 8 ? 1 : 0;
  }
  EXPECT_EQ(full_steps, 4);  // 1 decode + 7 prompt tokens, four times, then the last 2
  EXPECT_LE(d.executor().max_step_tokens(), 8);
}

TEST(SchedulerTest, WithoutChunkedPrefillWholePromptsRunInTheirOwnSteps) {
  SchedulerConfig config = Config(/*budget=*/256);
  config.enable_chunked_prefill = false;
  Driver d(config, Limits(128));
  std::mt19937 rng(4);
  std::vector<std::pair<int, Request>> arrivals = {{0, MakeRequest(RandomPrompt(rng, 3), 20)},
                                                   {3, MakeRequest(RandomPrompt(rng, 100), 2)}};
  const auto outcomes = d.Run(arrivals);
  ExpectAllAlone(arrivals, outcomes);
  bool saw_whole_prompt = false;
  for (const StepPlan& plan : d.executor().plans()) {
    if (plan.token_ids.size() == 100) {
      saw_whole_prompt = true;
      EXPECT_EQ(plan.seq_lens.size(), 1u) << "a prefill step has no decodes";
    }
  }
  EXPECT_TRUE(saw_whole_prompt);
  config.max_num_batched_tokens = 100;
  EXPECT_THAT(Scheduler::Create(config, Limits(128), Model()).status().message(),
              HasSubstr("without chunked prefill"));
}

TEST(SchedulerTest, SharedPrefixReusesCachedBlocksButNeverTheLastToken) {
  Driver d(Config(), Limits(64));
  std::mt19937 rng(5);
  const std::vector<int32_t> prefix = RandomPrompt(rng, 12);  // 3 blocks of 4
  std::vector<int32_t> a = prefix, b = prefix;
  a.push_back(7);
  b.insert(b.end(), {8, 9});
  std::vector<std::pair<int, Request>> arrivals = {
      {0, MakeRequest(a, 5)}, {20, MakeRequest(b, 5)}, {40, MakeRequest(prefix, 5)}};
  const auto outcomes = d.Run(arrivals);
  ExpectAllAlone(arrivals, outcomes);
  EXPECT_EQ(outcomes.at(0).num_cached_tokens, 0);
  EXPECT_EQ(outcomes.at(1).num_cached_tokens, 12);
  // The bare prefix is exactly 3 blocks: its last token must be computed, so 2 blocks hit.
  EXPECT_EQ(outcomes.at(2).num_cached_tokens, 8);
  const SchedulerCounters c = d.scheduler().counters();
  EXPECT_EQ(c.prefix_cache_hits, 20);
  EXPECT_EQ(c.prefix_cache_queries, 13 + 14 + 12);
  EXPECT_GT(c.kv_blocks_cached, 0);
  ExpectAllBlocksBack(d.scheduler());
}

TEST(SchedulerTest, RunningRequestsSharePrefixBlocks) {
  Driver d(Config(), Limits(64));
  std::mt19937 rng(6);
  const std::vector<int32_t> prefix = RandomPrompt(rng, 16);
  std::vector<std::pair<int, Request>> arrivals;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p = prefix;
    p.push_back(10 + i);
    arrivals.emplace_back(i == 0 ? 0 : 2, MakeRequest(p, 30));
  }
  int32_t max_shared = 0;
  const auto outcomes = d.Run(arrivals, [&](int) {
    for (int32_t b = 0; b < 64; ++b) {
      max_shared = std::max(max_shared, d.scheduler().blocks().references(b));
    }
  });
  ExpectAllAlone(arrivals, outcomes);
  EXPECT_EQ(max_shared, 6);  // the first prefix block, held by all six at once
  for (int i = 1; i < 6; ++i) EXPECT_EQ(outcomes.at(i).num_cached_tokens, 16);
}

TEST(SchedulerTest, CacheSaltSeparatesPrefixes) {
  Driver d(Config(), Limits(64));
  std::mt19937 rng(7);
  const std::vector<int32_t> prompt = RandomPrompt(rng, 13);
  Request a = MakeRequest(prompt, 3), b = MakeRequest(prompt, 3), c = MakeRequest(prompt, 3);
  b.cache_salt = "tenant-b";
  c.cache_salt = "tenant-b";
  const auto outcomes = d.Run({{0, a}, {10, b}, {20, c}});
  EXPECT_EQ(outcomes.at(1).num_cached_tokens, 0);
  EXPECT_EQ(outcomes.at(2).num_cached_tokens, 12);
  EXPECT_EQ(outcomes.at(0).tokens, outcomes.at(2).tokens);
}

TEST(SchedulerTest, EvictionUnderPressureKeepsOutputsCorrect) {
  std::mt19937 rng(8);
  SCOPED_TRACE("seed 8");
  std::vector<std::vector<int32_t>> prefixes;
  for (int i = 0; i < 6; ++i) prefixes.push_back(RandomPrompt(rng, 20));
  std::vector<std::pair<int, Request>> arrivals;
  for (int i = 0; i < 60; ++i) {
    std::vector<int32_t> p = prefixes[rng() % prefixes.size()];
    const auto tail = RandomPrompt(rng, static_cast<int>(rng() % 6));
    p.insert(p.end(), tail.begin(), tail.end());
    arrivals.emplace_back(i * 3, MakeRequest(p, 1 + static_cast<int32_t>(rng() % 12)));
  }
  Driver d(Config(/*budget=*/32, /*max_seqs=*/4), Limits(/*num_blocks=*/24));
  const auto outcomes = d.Run(arrivals);
  ExpectAllAlone(arrivals, outcomes);
  const SchedulerCounters c = d.scheduler().counters();
  EXPECT_GT(c.prefix_cache_evictions, 0);
  EXPECT_GT(c.prefix_cache_hits, 0);
  ExpectAllBlocksBack(d.scheduler());
}

TEST(SchedulerTest, TinyCacheForcesPreemptionAndEveryRequestCompletes) {
  // FCFS with and without prefix caching; priority scheduling (random priorities: the least
  // urgent are preempted and go back to their place in the queue) with 1 and 2 steps in flight.
  struct Case {
    bool prefix_caching;
    bool priority;
    int32_t steps_in_flight;
  };
  for (const Case c :
       {Case{true, false, 1}, Case{false, false, 1}, Case{true, true, 1}, Case{true, true, 2}}) {
    SCOPED_TRACE(absl::StrCat(c.prefix_caching ? "prefix caching, " : "no prefix caching, ",
                              c.priority ? "priority, " : "fcfs, ", c.steps_in_flight,
                              " steps in flight"));
    std::mt19937 rng(c.priority ? 19 : 9);
    std::vector<std::pair<int, Request>> arrivals;
    for (int i = 0; i < 24; ++i) {
      Request r = MakeRequest(RandomPrompt(rng, 1 + static_cast<int>(rng() % 20)),
                              10 + static_cast<int32_t>(rng() % 25));
      if (c.priority) r.priority = static_cast<int32_t>(rng() % 5) - 2;
      arrivals.emplace_back(i % 3, std::move(r));
    }
    SchedulerConfig config = Config(/*budget=*/32);
    config.enable_prefix_caching = c.prefix_caching;
    config.priority_scheduling = c.priority;
    config.max_steps_in_flight = c.steps_in_flight;
    // 14 blocks of 4 hold one 50-token request; several at once need more.
    Driver d(config, Limits(/*num_blocks=*/14));
    const auto outcomes = d.Run(arrivals);
    ExpectAllAlone(arrivals, outcomes);
    EXPECT_GT(d.scheduler().counters().preemptions, 0);
    ExpectAllBlocksBack(d.scheduler());
  }
}

TEST(SchedulerTest, PrioritySchedulingAdmitsTheMostUrgentFirst) {
  SchedulerConfig config = Config(/*budget=*/64, /*max_seqs=*/1);
  config.priority_scheduling = true;
  Driver d(config, Limits(64));
  // Ids 0..4 arrive together with priorities 3, 0, -2, 0, -2: one runs at a time, so they are
  // admitted by (priority, arrival): 2, 4, 1, 3, 0.
  std::vector<std::pair<int, Request>> arrivals;
  std::mt19937 rng(5);
  for (int32_t priority : {3, 0, -2, 0, -2}) {
    Request r = MakeRequest(RandomPrompt(rng, 5), 3);
    r.priority = priority;
    arrivals.emplace_back(0, std::move(r));
  }
  std::vector<RequestId> admitted;
  const auto outcomes = d.Run(arrivals, [&](int) {
    for (RequestId id : d.scheduler().TakeAdmitted()) admitted.push_back(id);
  });
  for (RequestId id : d.scheduler().TakeAdmitted()) admitted.push_back(id);
  EXPECT_EQ(admitted, (std::vector<RequestId>{2, 4, 1, 3, 0}));
  ExpectAllAlone(arrivals, outcomes);
  ExpectAllBlocksBack(d.scheduler());
}

TEST(SchedulerTest, APriorityNeedsPriorityScheduling) {
  Driver d(Config(), Limits(64));
  Request r = MakeRequest({5, 6, 7}, 2);
  r.priority = 1;
  const absl::Status status = d.scheduler().Add(0, r);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("--scheduling-policy priority"));
  r.priority = 0;
  EXPECT_TRUE(d.scheduler().Add(0, r).ok());
}

TEST(SchedulerTest, AbortAtRandomPointsReturnsEveryBlock) {
  std::mt19937 rng(10);
  SCOPED_TRACE("seed 10");
  std::vector<std::pair<int, Request>> arrivals;
  for (int i = 0; i < 40; ++i) {
    arrivals.emplace_back(static_cast<int>(rng() % 30),
                          MakeRequest(RandomPrompt(rng, 1 + static_cast<int>(rng() % 30)), 25));
  }
  Driver d(Config(/*budget=*/24), Limits(/*num_blocks=*/40));
  int aborted = 0;
  d.Run(arrivals, [&](int) {
    const auto ids = d.scheduler().request_ids();
    if (!ids.empty() && rng() % 4 == 0) aborted += d.scheduler().Abort(ids[rng() % ids.size()]);
    const absl::Status ok = d.scheduler().blocks().CheckInvariants();
    EXPECT_TRUE(ok.ok()) << ok;
  });
  EXPECT_GT(aborted, 5);
  EXPECT_FALSE(d.scheduler().Abort(12345));
  EXPECT_EQ(d.scheduler().counters().requests_aborted, aborted);
  ExpectAllBlocksBack(d.scheduler());
}

TEST(SchedulerTest, RejectsRequestsThatCanNeverRun) {
  auto s = Scheduler::Create(Config(), Limits(/*num_blocks=*/8), Model());
  ASSERT_TRUE(s.ok());
  auto expect = [&](const Request& r, const std::string& text) {
    const absl::Status status = (*s)->Validate(r);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr(text));
    EXPECT_FALSE((*s)->Add(99, r).ok());
  };
  // 8 blocks of 4 = 32 tokens: 30 + 3 needs K/V for 32 (fits); 30 + 4 needs 33.
  EXPECT_TRUE((*s)->Validate(MakeRequest(std::vector<int32_t>(30, 5), 3)).ok());
  expect(MakeRequest(std::vector<int32_t>(30, 5), 4), "could never run");
  expect(MakeRequest(std::vector<int32_t>(250, 5), 7), "exceeds max_model_len 256");
  expect(MakeRequest({}, 1), "empty prompt");
  expect(MakeRequest({5, 1000}, 1), "outside the vocabulary");
  Request r = MakeRequest({5}, 4);
  r.sampling.min_tokens = 5;
  expect(r, "min_tokens");
  r = MakeRequest({5}, 4);
  r.sampling.top_p = 1.5f;
  expect(r, "top_p");
  r.sampling.top_p = 1.0f;
  r.sampling.min_p = -0.1f;
  expect(r, "min_p");
  r.sampling.min_p = 0.0f;
  r.sampling.repetition_penalty = 0.0f;
  expect(r, "repetition_penalty");
  r.sampling.repetition_penalty = 1.0f;
  r.sampling.presence_penalty = 2.5f;
  expect(r, "presence_penalty");
  r.sampling.presence_penalty = 0.0f;
  r.sampling.logprobs = 21;
  expect(r, "logprobs");
  r.sampling.logprobs = 0;
  r.sampling.stop_token_ids = {-1};
  expect(r, "stop token");
  EXPECT_THAT(Scheduler::Create(Config(1024), Limits(8), Model()).status().message(),
              HasSubstr("executor's limits"));
  EXPECT_THAT(Scheduler::Create(Config(8, 16), Limits(8), Model()).status().message(),
              HasSubstr("at least max_num_seqs"));
}

TEST(SchedulerTest, StopsOnStopTokensEosAndLengthAfterMinTokens) {
  const std::vector<int32_t> prompt = {11, 12, 13};
  const std::vector<int32_t> free_run = FakeAlone(prompt, 12, kVocab);
  Request stop = MakeRequest(prompt, 12);
  stop.sampling.stop_token_ids = {free_run[4]};
  Request eos = MakeRequest(prompt, 12);
  eos.sampling.ignore_eos = false;
  Request min_tokens = stop;
  min_tokens.sampling.min_tokens = 8;
  Driver d(Config(), Limits(64));
  const auto outcomes = d.Run({{0, stop}, {0, eos}, {0, min_tokens}});
  const auto first = std::find(free_run.begin(), free_run.end(), free_run[4]) - free_run.begin();
  EXPECT_EQ(outcomes.at(0).tokens.size(), static_cast<size_t>(first + 1));
  EXPECT_EQ(outcomes.at(0).finish, FinishReason::kStop);
  EXPECT_EQ(outcomes.at(1).tokens, free_run);  // the fake never samples EOS (id 2)
  EXPECT_EQ(outcomes.at(1).finish, FinishReason::kLength);
  // min_tokens: the stop token is banned (in the sampling row) until 8 tokens are out.
  EXPECT_GE(outcomes.at(2).tokens.size(), 8u);
  bool banned = false;
  for (const StepPlan& plan : d.executor().plans()) {
    for (const SamplingRow& row : plan.sampling) {
      if (std::find(row.banned_token_ids.begin(), row.banned_token_ids.end(), free_run[4]) !=
          row.banned_token_ids.end()) {
        banned = true;
        EXPECT_LT(row.step, 8);
        EXPECT_THAT(row.banned_token_ids, ::testing::Contains(kEos).Times(0));  // ignore_eos
      }
    }
  }
  EXPECT_TRUE(banned);
}

TEST(SchedulerTest, SamplingRowsCarryPenaltyTokensSeedsAndSteps) {
  Request r = MakeRequest({5, 6, 5, 7}, 6);
  r.sampling.temperature = 0.7f;
  r.sampling.seed = 42;
  r.sampling.frequency_penalty = 0.5f;
  r.sampling.logprobs = 3;
  Request unseeded = MakeRequest({5}, 2);
  unseeded.sampling.temperature = 1.0f;
  Driver d(Config(), Limits(64));
  const auto outcomes = d.Run({{0, r}, {0, unseeded}});
  SamplingRow want;
  want.temperature = 0.7f;
  want.seed = 42;
  EXPECT_EQ(outcomes.at(0).tokens, FakeAlone(r.prompt, 6, kVocab, want));
  const StepPlan& last = d.executor().plans().back();
  ASSERT_EQ(last.sampling.size(), 1u);
  const SamplingRow& row = last.sampling[0];
  EXPECT_EQ(row.step, 5);
  EXPECT_EQ(row.num_top_logprobs, 3);
  EXPECT_EQ(row.frequency_penalty, 0.5f);
  // Distinct tokens of prompt and output, each once, with output counts.
  std::map<int32_t, int32_t> counts;
  for (size_t i = 0; i < row.penalty_token_ids.size(); ++i) {
    EXPECT_TRUE(counts.emplace(row.penalty_token_ids[i], row.penalty_output_counts[i]).second);
  }
  std::map<int32_t, int32_t> want_counts = {{5, 0}, {6, 0}, {7, 0}};
  for (size_t i = 0; i < 5; ++i) ++want_counts[outcomes.at(0).tokens[i]];
  EXPECT_EQ(counts, want_counts);
  // The unseeded request got a seed of its own (not 0) all the same.
  EXPECT_NE(d.executor().plans()[0].sampling[1].seed, 0);
}

// A prompt with a KV destination: `cached` tokens already at the destination, whose block i (past
// the cached ones) is 1000 + i.
TEST(SchedulerTest, PipelinedStepsMatchEachAloneUnderArrivalsPreemptionAndAborts) {
  for (auto [depth, budget] : {std::pair{2, 48}, std::pair{3, 48}, std::pair{2, 8}}) {
    SCOPED_TRACE(absl::StrCat(depth, " steps in flight, ", budget, " tokens a step"));
    std::mt19937 rng(23 + depth);
    std::vector<std::pair<int, Request>> arrivals;
    for (int i = 0; i < 48; ++i) {
      arrivals.emplace_back(static_cast<int>(rng() % 60),
                            MakeRequest(RandomPrompt(rng, 1 + static_cast<int>(rng() % 20)),
                                        1 + static_cast<int32_t>(rng() % 30)));
    }
    // Roomy cache: every request's tokens are those it would get alone.
    SchedulerConfig config = Config(budget, /*max_seqs=*/8);
    config.max_steps_in_flight = depth;
    Driver roomy(config, Limits(/*num_blocks=*/512));
    ExpectAllAlone(arrivals, roomy.Run(arrivals));
    ExpectAllBlocksBack(roomy.scheduler());
    EXPECT_EQ(roomy.max_steps_in_flight_seen(), static_cast<size_t>(depth));
    // A cache that forces preemptions (of sequences of no step in flight only).
    Driver tight(config, Limits(/*num_blocks=*/14));
    ExpectAllAlone(arrivals, tight.Run(arrivals));
    EXPECT_GT(tight.scheduler().counters().preemptions, 0);
    ExpectAllBlocksBack(tight.scheduler());
    // Aborts at random points, of sequences in flight too: their blocks come back once their
    // step is applied, and no event follows.
    Driver aborting(config, Limits(/*num_blocks=*/40));
    std::map<RequestId, size_t> aborted;  // id -> tokens it had had when aborted
    const auto outcomes = aborting.Run(arrivals, [&](int) {
      const auto ids = aborting.scheduler().request_ids();
      if (!ids.empty() && rng() % 4 == 0) {
        const RequestId id = ids[rng() % ids.size()];
        ASSERT_TRUE(aborting.scheduler().Abort(id));
        EXPECT_FALSE(aborting.scheduler().Abort(id));  // once
        const auto it = aborting.outcomes().find(id);
        aborted[id] = it == aborting.outcomes().end() ? 0 : it->second.tokens.size();
      }
      EXPECT_TRUE(aborting.scheduler().blocks().CheckInvariants().ok());
    });
    EXPECT_GT(aborted.size(), 5u);
    EXPECT_EQ(aborting.scheduler().counters().requests_aborted,
              static_cast<int64_t>(aborted.size()));
    for (size_t i = 0; i < arrivals.size(); ++i) {
      const auto it = outcomes.find(i);
      if (aborted.contains(i)) {
        // No event after the abort, though its step was in flight.
        EXPECT_EQ(it == outcomes.end() ? 0 : it->second.tokens.size(), aborted[i]) << i;
        continue;
      }
      ASSERT_NE(it, outcomes.end()) << i;
      const Request& r = arrivals[i].second;
      EXPECT_THAT(it->second.tokens,
                  ElementsAreArray(FakeAlone(r.prompt, r.sampling.max_tokens, kVocab)))
          << "request " << i;
    }
    ExpectAllBlocksBack(aborting.scheduler());
  }
}

TEST(SchedulerTest, APromptsChunksFollowEachOtherIntoThePipeline) {
  SchedulerConfig config = Config(/*budget=*/8, /*max_seqs=*/8);
  config.max_steps_in_flight = 2;
  auto s = Scheduler::Create(config, Limits(64), Model());
  ASSERT_TRUE(s.ok()) << s.status();
  FakeExecutor executor(Limits(64), kVocab);
  std::mt19937 rng(6);
  const Request request = MakeRequest(RandomPrompt(rng, 30), 4);
  ASSERT_TRUE((*s)->Add(7, request).ok());
  std::deque<StepResult> in_flight;
  std::vector<int32_t> tokens;
  std::vector<int32_t> chunk_starts;
  while ((*s)->HasWork() || !in_flight.empty()) {
    if ((*s)->HasWork() && (*s)->steps_in_flight() < 2) {
      const StepPlan plan = (*s)->Schedule();
      if (!plan.token_ids.empty()) {
        if (plan.positions[0] < 30) {
          chunk_starts.push_back(plan.positions[0]);
          // A chunk goes in while the one before it is still out.
          EXPECT_EQ((*s)->steps_in_flight(), std::min<int>(chunk_starts.size(), 2));
        }
        auto result = executor.Execute(plan);
        ASSERT_TRUE(result.ok()) << result.status();
        in_flight.push_back(*std::move(result));
        if ((*s)->steps_in_flight() < 2) continue;
      }
    }
    ASSERT_FALSE(in_flight.empty());
    auto events = (*s)->Update(in_flight.front());
    in_flight.pop_front();
    ASSERT_TRUE(events.ok()) << events.status();
    for (const TokenEvent& e : *events) tokens.push_back(e.token_id);
  }
  EXPECT_EQ(chunk_starts, (std::vector<int32_t>{0, 8, 16, 24}));
  EXPECT_THAT(tokens, ElementsAreArray(FakeAlone(request.prompt, 4, kVocab)));
  ExpectAllBlocksBack(**s);
}

TEST(SchedulerTest, StepsInFlightShareTheBatchAndNeverASequence) {
  SchedulerConfig config = Config(/*budget=*/64);
  config.max_steps_in_flight = 2;
  auto s = Scheduler::Create(config, Limits(128), Model());
  ASSERT_TRUE(s.ok()) << s.status();
  FakeExecutor executor(Limits(128), kVocab);
  std::mt19937 rng(4);
  for (RequestId id = 0; id < 8; ++id) {
    ASSERT_TRUE((*s)->Add(id, MakeRequest(RandomPrompt(rng, 5), 20)).ok());
  }
  // The first token of each sequence: prompts in two steps of four.
  std::deque<std::pair<StepPlan, StepResult>> in_flight;
  auto submit = [&] {
    StepPlan plan = (*s)->Schedule();
    auto result = executor.Execute(plan);
    ASSERT_TRUE(result.ok()) << result.status();
    in_flight.emplace_back(std::move(plan), *std::move(result));
  };
  auto first_slots = [](const StepPlan& plan) {
    std::set<int64_t> blocks;
    for (size_t i = 0; i + 1 < plan.query_start.size(); ++i) {
      blocks.insert(plan.slot_mapping[plan.query_start[i]] / 4);
    }
    return blocks;
  };
  for (int round = 0; round < 6; ++round) {
    while ((*s)->steps_in_flight() < 2) submit();
    const StepPlan& a = in_flight[0].first;
    const StepPlan& b = in_flight[1].first;
    EXPECT_EQ(a.seq_lens.size(), 4u) << "round " << round;
    EXPECT_EQ(b.seq_lens.size(), 4u) << "round " << round;
    // Disjoint sequences: no block of one step's sequences is written by the other.
    std::set<int64_t> both = first_slots(a);
    const std::set<int64_t> second = first_slots(b);
    both.insert(second.begin(), second.end());
    EXPECT_EQ(both.size(), 8u) << "round " << round;
    auto events = (*s)->Update(in_flight.front().second);
    ASSERT_TRUE(events.ok()) << events.status();
    EXPECT_EQ(events->size(), 4u);
    in_flight.pop_front();
  }
}

Request KvDestinationRequest(std::vector<int32_t> prompt, int32_t cached, int32_t block_size) {
  Request r = MakeRequest(std::move(prompt), 4);
  KvDestination d;
  d.token = 77;
  d.num_cached_tokens = cached;
  d.ranks.resize(1);
  const auto blocks = static_cast<int32_t>((r.prompt.size() + block_size - 1) / block_size);
  for (int32_t i = cached / block_size; i < blocks; ++i) d.block_ids.push_back(1000 + i);
  r.kv_destination = std::move(d);
  return r;
}

// Drives one step; returns its KV sends (and the plan, to read the local block table).
std::vector<Scheduler::KvSend> StepWithSends(Scheduler& s, FakeExecutor& executor,
                                             StepPlan* plan_out = nullptr) {
  const StepPlan plan = s.Schedule();
  std::vector<Scheduler::KvSend> sends = s.KvSendsInStep();
  if (plan_out != nullptr) *plan_out = plan;
  if (plan.token_ids.empty()) return sends;  // nothing to run: no step was put in flight
  auto result = executor.Execute(plan);
  EXPECT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(s.Update(*result).ok());
  return sends;
}

TEST(SchedulerTest, KvSendsFollowTheChunksBlockByBlock) {
  // 40 tokens in blocks of 4, chunks of 16, the first 8 tokens cached at the destination.
  std::mt19937 rng(5);
  auto s = Scheduler::Create(Config(/*budget=*/16), Limits(64), Model());
  ASSERT_TRUE(s.ok()) << s.status();
  FakeExecutor executor(Limits(64), kVocab);
  ASSERT_TRUE((*s)->Add(1, KvDestinationRequest(RandomPrompt(rng, 40), 8, 4)).ok());
  std::vector<int32_t> dst;
  // Blocks 2-3 fill in the first chunk, 4-7 in the second, 8-9 (the last partly) in the third.
  const std::vector<std::pair<int32_t, int32_t>> want = {{2, 4}, {4, 8}, {8, 10}};
  for (size_t step = 0; step < want.size(); ++step) {
    StepPlan plan;
    const std::vector<Scheduler::KvSend> sends = StepWithSends(**s, executor, &plan);
    ASSERT_EQ(sends.size(), 1u) << "step " << step;
    const Scheduler::KvSend& send = sends[0];
    EXPECT_EQ(send.id, 1u);
    const auto [first, end] = want[step];
    std::vector<int32_t> local(plan.block_tables.begin() + first, plan.block_tables.begin() + end);
    EXPECT_EQ(send.blocks, local) << "step " << step;
    ASSERT_EQ(send.destination.block_ids.size(), static_cast<size_t>(end - first));
    EXPECT_EQ(send.destination.token, 77u);
    dst.insert(dst.end(), send.destination.block_ids.begin(), send.destination.block_ids.end());
  }
  // Every destination block once, in order.
  EXPECT_EQ(dst, (std::vector<int32_t>{1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009}));
  EXPECT_TRUE(StepWithSends(**s, executor).empty());  // the prompt is done (its handoff ended it)
}

// With steps in flight, a prompt's chunks follow each other into the pipeline before the first is
// applied; each step still sends only the blocks it makes ready, so every block goes once.
TEST(SchedulerTest, KvSendsOfChunksInFlightAtOnceSendEachBlockOnce) {
  std::mt19937 rng(5);
  SchedulerConfig config = Config(/*budget=*/16);
  config.max_steps_in_flight = 4;
  auto s = Scheduler::Create(config, Limits(64), Model());
  ASSERT_TRUE(s.ok()) << s.status();
  FakeExecutor executor(Limits(64), kVocab);
  ASSERT_TRUE((*s)->Add(1, KvDestinationRequest(RandomPrompt(rng, 40), 8, 4)).ok());
  // Three chunks of 16, 16 and 8 tokens planned before any is applied.
  const std::vector<std::pair<int32_t, int32_t>> want = {{2, 4}, {4, 8}, {8, 10}};
  std::vector<StepPlan> plans;
  std::vector<int32_t> dst;
  for (size_t step = 0; step < want.size(); ++step) {
    plans.push_back((*s)->Schedule());
    ASSERT_FALSE(plans.back().token_ids.empty()) << "step " << step;
    const std::vector<Scheduler::KvSend> sends = (*s)->KvSendsInStep();
    ASSERT_EQ(sends.size(), 1u) << "step " << step;
    const auto [first, end] = want[step];
    const StepPlan& plan = plans.back();
    std::vector<int32_t> local(plan.block_tables.begin() + first, plan.block_tables.begin() + end);
    EXPECT_EQ(sends[0].blocks, local) << "step " << step;
    dst.insert(dst.end(), sends[0].destination.block_ids.begin(),
               sends[0].destination.block_ids.end());
  }
  EXPECT_EQ((*s)->steps_in_flight(), 3);
  EXPECT_EQ(dst, (std::vector<int32_t>{1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009}));
  // A step that plans nothing (the prompt's tokens are all in flight) sends nothing, not the
  // last step's sends again.
  EXPECT_TRUE((*s)->Schedule().token_ids.empty());
  EXPECT_TRUE((*s)->KvSendsInStep().empty());
  for (const StepPlan& plan : plans) {
    auto result = executor.Execute(plan);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_TRUE((*s)->Update(*result).ok());
  }
}

TEST(SchedulerTest, APreemptedKvDestinationPromptSendsAgainFromTheStart) {
  // A long decode (request 0) and a chunked prompt with a KV destination (request 1) share a cache
  // too small for both: the prompt, admitted last, is preempted while partly sent.
  std::mt19937 rng(3);
  auto s =
      Scheduler::Create(Config(/*budget=*/8, /*max_seqs=*/4), Limits(/*num_blocks=*/10), Model());
  ASSERT_TRUE(s.ok()) << s.status();
  FakeExecutor executor(Limits(10), kVocab);
  ASSERT_TRUE((*s)->Add(0, MakeRequest(RandomPrompt(rng, 4), 30)).ok());
  ASSERT_TRUE((*s)->Add(1, KvDestinationRequest(RandomPrompt(rng, 36), 0, 4)).ok());
  std::vector<int32_t> dst;  // destination blocks sent since the last cancel
  bool cancelled = false;
  for (int step = 0; step < 200 && (*s)->HasWork(); ++step) {
    for (const Scheduler::KvSend& send : StepWithSends(**s, executor)) {
      dst.insert(dst.end(), send.destination.block_ids.begin(), send.destination.block_ids.end());
    }
    for (RequestId id : (*s)->TakeKvSendsToCancel()) {
      EXPECT_EQ(id, 1u);
      cancelled = true;
      dst.clear();
    }
  }
  EXPECT_GT((*s)->counters().preemptions, 0);
  EXPECT_TRUE(cancelled);
  std::vector<int32_t> all(9);
  std::iota(all.begin(), all.end(), 1000);
  EXPECT_EQ(dst, all);
}

}  // namespace
}  // namespace tessera::worker
