// Tensor and pipeline parallelism on the CPU with ranks as threads (in-process communicators):
// every split of the transformers fixtures gives the fixture's greedy tokens and logits within
// the fixture tolerance of the single-rank run.
#include "worker/replica.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <functional>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "kernels/cpu/cpu_backend.h"
#include "parallel/comm/inproc/in_process_communicator.h"
#include "parallel/comm/timed_communicator.h"
#include "tests/worker/replica_test_util.h"

namespace tessera::worker {
namespace {

using testing::Fixture;
using ::testing::HasSubstr;
using testing::LoadFixture;

using testing::CompareLogits;
using testing::GreedyBody;
using testing::LogitsBody;
using testing::ReplicaOptions;
using testing::Split;

// Runs `body(rank, replica rank resources)` on tp * pp threads, each with its own CPU backend.
// Returns the first error of any rank.
absl::Status RunReplica(const Fixture& f, const Split& split,
                        const std::function<absl::Status(int, ReplicaRank&)>& body,
                        const DeviceGroupFactory& device_groups = nullptr) {
  const int n = split.tp * split.pp;
  auto group = parallel::CreateInProcessGroup(
      n, {.timeout = absl::Seconds(30), .synchronous_sends = split.synchronous_sends});
  if (!group.ok()) return group.status();
  std::vector<absl::Status> status(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      auto backend = kernels::CreateCpuBackend({.num_threads = 1, .emulate_graphs = split.graphs});
      if (!backend.ok()) {
        status[r] = backend.status();
        return;
      }
      ReplicaRankOptions options = ReplicaOptions(split);
      options.device_groups = device_groups;
      auto rank = CreateReplicaRank(f.config, *f.weights, **backend, *(*group)[r], options);
      if (!rank.ok()) {
        status[r] = rank.status();
        (*group)[r]->Abort();
        return;
      }
      status[r] = body(r, *rank);
      if (!status[r].ok()) (*group)[r]->Abort();
    });
  }
  for (auto& t : threads) t.join();
  for (const absl::Status& s : status) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

class ReplicaTest : public ::testing::TestWithParam<std::tuple<std::string, Split>> {};

TEST_P(ReplicaTest, GreedyTokensMatchTransformers) {
  const auto& [fixture_name, split] = GetParam();
  auto f = LoadFixture(fixture_name);
  ASSERT_TRUE(f.ok()) << f.status();
  std::vector<RequestOutput> results;
  const absl::Status status = RunReplica(*f, split, [&](int, ReplicaRank& rank) {
    return GreedyBody(*f, rank, results, split.steps_in_flight);
  });
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(results.size(), f->prompts.size());
  for (size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].token_ids, f->prompts[i].greedy) << split.name << " prompt " << i;
  }
}

TEST_P(ReplicaTest, LogitsMatchTransformers) {
  const auto& [fixture_name, split] = GetParam();
  auto f = LoadFixture(fixture_name);
  ASSERT_TRUE(f.ok()) << f.status();
  std::vector<float> logits;
  const absl::Status status =
      RunReplica(*f, split, [&](int, ReplicaRank& rank) { return LogitsBody(*f, rank, logits); });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(CompareLogits(*f, logits), "") << split.name;
}

INSTANTIATE_TEST_SUITE_P(
    Splits, ReplicaTest,
    ::testing::Combine(
        ::testing::Values("llama_gqa", "qwen2_bias", "qwen3_qknorm"),
        ::testing::Values(Split{2, 1, {}, "tp2"}, Split{1, 2, {}, "pp2"}, Split{2, 2, {}, "tp2pp2"},
                          Split{1, 2, {1, 1}, "pp2_one_micro_batch", 1},
                          Split{1, 2, {}, "pp2_two_steps_in_flight", 1, 2},
                          Split{2, 2, {}, "tp2pp2_two_steps_in_flight", 0, 2},
                          Split{4, 1, {}, "tp4_kv_replicated"},
                          // Every send waits for its receiver, as NCCL's: the pipeline
                          // protocol must not deadlock on that (decision 0011).
                          Split{1, 2, {}, "pp2_synchronous_sends", 0, 1, true},
                          Split{1, 2, {}, "pp2_two_steps_synchronous_sends", 1, 2, true},
                          Split{2, 2, {}, "tp2pp2_two_steps_synchronous_sends", 0, 2, true})),
    [](const auto& info) {
      return absl::StrCat(std::get<0>(info.param), "_", std::get<1>(info.param).name);
    });

// Decode steps recorded as graphs under tensor parallelism (the all-reduces inside them, and
// the vocab-parallel greedy sampler reading ungathered logits): every rank pads and replays alike
// and the tokens are the fixture's. Pipeline stages stay eager.
TEST(ReplicaGraphsTest, DecodeGraphsUnderTensorParallelismGiveTheFixtureTokens) {
  auto f = LoadFixture("llama_gqa");
  ASSERT_TRUE(f.ok()) << f.status();
  for (const Split& split : {Split{2, 1, {}, "tp2_graphs", 0, 1, false, true},
                             Split{4, 1, {}, "tp4_graphs", 0, 1, false, true},
                             Split{1, 2, {}, "pp2_graphs", 0, 2, false, true}}) {
    std::vector<RequestOutput> results;
    std::vector<GraphStats> stats(static_cast<size_t>(split.tp * split.pp));
    const absl::Status status = RunReplica(*f, split, [&](int r, ReplicaRank& rank) {
      absl::Status s = GreedyBody(*f, rank, results, split.steps_in_flight);
      stats[r] = rank.model->graph_stats();
      return s;
    });
    ASSERT_TRUE(status.ok()) << split.name << ": " << status;
    ASSERT_EQ(results.size(), f->prompts.size());
    for (size_t i = 0; i < results.size(); ++i) {
      EXPECT_EQ(results[i].token_ids, f->prompts[i].greedy) << split.name << " prompt " << i;
    }
    for (size_t r = 0; r < stats.size(); ++r) {
      EXPECT_EQ(stats[r].failed, 0) << split.name << " rank " << r;
      if (split.pp == 1) {
        EXPECT_GT(stats[r].replayed, 0) << split.name << " rank " << r;
      } else {
        EXPECT_EQ(stats[r].recorded, 0) << split.name << " rank " << r << ": a stage recorded";
      }
    }
  }
}

// A GPU replica's TP and PP data go over communicators made from the host groups (NCCL, through
// ReplicaRankOptions::device_groups); here a counting wrapper stands in for NCCL.
TEST(ReplicaDeviceGroupsTest, TheModelRunsOnTheGroupsTheFactoryMakes) {
  auto f = LoadFixture("llama_gqa");
  ASSERT_TRUE(f.ok()) << f.status();
  std::atomic<int> made{0};
  parallel::CommStats device_traffic;
  DeviceGroupFactory factory =
      [&](parallel::Communicator& host,
          kernels::Backend& backend) -> absl::StatusOr<std::unique_ptr<parallel::Communicator>> {
    EXPECT_EQ(backend.name(), "cpu");
    ++made;
    return std::unique_ptr<parallel::Communicator>(
        std::make_unique<parallel::TimedCommunicator>(host, device_traffic));
  };
  std::vector<RequestOutput> results;
  const absl::Status status = RunReplica(
      *f, Split{2, 2, {}, "tp2pp2"},
      [&](int, ReplicaRank& rank) {
        EXPECT_NE(rank.tp_device, nullptr);
        EXPECT_NE(rank.pp_device, nullptr);
        return GreedyBody(*f, rank, results);
      },
      factory);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(made.load(), 8);  // 4 ranks x (TP group, PP group)
  // The all-reduces and the stage-to-stage activations went over the made groups.
  EXPECT_GT(device_traffic.calls.load(), 0);
  EXPECT_GT(device_traffic.bytes.load(), 0);
  ASSERT_EQ(results.size(), f->prompts.size());
  for (size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].token_ids, f->prompts[i].greedy) << "prompt " << i;
  }
}

TEST(ReplicaDeviceGroupsTest, AFactoryErrorFailsTheRankWithIt) {
  auto f = LoadFixture("llama_gqa");
  ASSERT_TRUE(f.ok()) << f.status();
  const absl::Status status = RunReplica(
      *f, Split{2, 1, {}, "tp2"}, [](int, ReplicaRank&) { return absl::OkStatus(); },
      [](parallel::Communicator&,
         kernels::Backend&) -> absl::StatusOr<std::unique_ptr<parallel::Communicator>> {
        return absl::UnavailableError("ncclCommInitRankConfig: no GPU");
      });
  EXPECT_TRUE(absl::IsUnavailable(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr("no GPU"));
}

TEST(ReplicaSetupTest, RejectsSplitsThatCannotWork) {
  auto f = LoadFixture("qwen2_bias");  // 4 heads, 2 KV heads, intermediate 128
  ASSERT_TRUE(f.ok()) << f.status();
  auto expect = [&](const Split& split, int ranks, const std::string& text) {
    auto group = parallel::CreateInProcessGroup(ranks, absl::Seconds(5));
    ASSERT_TRUE(group.ok());
    auto backend = kernels::CreateCpuBackend({.num_threads = 1});
    ASSERT_TRUE(backend.ok());
    auto rank =
        CreateReplicaRank(f->config, *f->weights, **backend, *(*group)[0], ReplicaOptions(split));
    ASSERT_FALSE(rank.ok()) << split.name;
    EXPECT_EQ(rank.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(rank.status().message(), HasSubstr(text)) << split.name;
  };
  expect({3, 1, {}, "tp3"}, 3, "does not divide the model's 4 attention heads");
  expect({2, 2, {}, "ranks"}, 2, "needs 4 ranks, got 2");
  expect({1, 3, {}, "pp3"}, 3, "exceeds the 2 layers");
  expect({1, 2, {2, 1}, "split"}, 2, "adds up to 3 layers");
}

TEST(ReplicaSetupTest, AMissingRankEndsWithDeadlineExceeded) {
  auto f = LoadFixture("llama_gqa");
  ASSERT_TRUE(f.ok()) << f.status();
  auto group = parallel::CreateInProcessGroup(2, absl::Milliseconds(300));
  ASSERT_TRUE(group.ok());
  auto backend = kernels::CreateCpuBackend({.num_threads = 1});
  ASSERT_TRUE(backend.ok());
  // Rank 1 never arrives.
  auto rank = CreateReplicaRank(f->config, *f->weights, **backend, *(*group)[0],
                                ReplicaOptions({2, 1, {}, "tp2"}));
  ASSERT_FALSE(rank.ok());
  EXPECT_EQ(rank.status().code(), absl::StatusCode::kDeadlineExceeded) << rank.status();
}

// Followers wait for plans with the communicator's timeout; an idle leader's keep-alives must keep
// them waiting past it (here 4 s of idling against a 1 s timeout).
TEST(ReplicaExecutorTest, KeepAlivesHoldIdleFollowersPastTheTimeout) {
  auto f = LoadFixture("llama_gqa");
  ASSERT_TRUE(f.ok()) << f.status();
  auto group = parallel::CreateInProcessGroup(2, absl::Seconds(1));
  ASSERT_TRUE(group.ok());
  std::vector<absl::Status> status(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      auto backend = kernels::CreateCpuBackend({.num_threads = 1});
      auto rank = CreateReplicaRank(f->config, *f->weights, **backend, *(*group)[r],
                                    ReplicaOptions({1, 2, {}, "pp2"}));
      if (!rank.ok()) {
        status[r] = rank.status();
        return;
      }
      if (r == 1) {
        status[r] = RunFollower(*rank->worker);
        return;
      }
      auto executor =
          ReplicaExecutor::Create(*rank->worker, {.keepalive_interval = absl::Milliseconds(100)});
      if (!executor.ok()) {
        status[r] = executor.status();
        return;
      }
      const absl::Time end = absl::Now() + absl::Seconds(4);
      while (status[r].ok() && absl::Now() < end) {
        status[r] = (*executor)->Idle();
        absl::SleepFor(absl::Milliseconds(20));  // real idle time is what is under test
      }
      status[r].Update((*executor)->Stop());
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_TRUE(status[0].ok()) << status[0];
  EXPECT_TRUE(status[1].ok()) << status[1];
}

// One sequence's step over tokens [from, tokens.size()), the logits of the last; sequence `seq`
// owns blocks [16 seq, 16 seq + 16) of ReplicaOptions' cache (blocks of 4, tables 32 wide).
StepPlan OneSequencePlan(int seq, const std::vector<int32_t>& tokens, int32_t from) {
  StepPlan plan;
  const auto len = static_cast<int32_t>(tokens.size());
  for (int32_t pos = from; pos < len; ++pos) {
    plan.token_ids.push_back(tokens[pos]);
    plan.positions.push_back(pos);
    plan.slot_mapping.push_back(int64_t{seq} * 64 + pos);
  }
  plan.query_start.push_back(len - from);
  plan.seq_lens.push_back(len);
  for (int32_t j = 0; j < 32; ++j) plan.block_tables.push_back(j < 16 ? seq * 16 + j : 0);
  plan.logits_rows.push_back(len - from - 1);
  plan.sampling.emplace_back();
  return plan;
}

// Two sequences decoded as two steps in flight through a two-stage pipeline: the first stage
// takes step n+1 while the second still runs step n, the results come back in order, and the
// tokens are the fixture's. Keep-alives and follower commands wait for the steps in flight.
TEST(ReplicaExecutorTest, TwoStepsInFlightThroughTwoStagesGiveTheFixtureTokens) {
  auto f = LoadFixture("llama_gqa");
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_GE(f->prompts.size(), 2u);
  for (const Split& split : {Split{1, 2, {}, "pp2", 1, 2}, Split{2, 2, {}, "tp2pp2", 2, 2}}) {
    SCOPED_TRACE(split.name);
    std::vector<std::vector<int32_t>> tokens(2);
    std::atomic<int> commands = 0;
    const absl::Status status = RunReplica(*f, split, [&](int, ReplicaRank& rank) -> absl::Status {
      if (!rank.worker->is_leader()) {
        return RunFollower(*rank.worker, [&](const std::vector<int64_t>& command) {
          ++commands;
          return command;  // echoed
        });
      }
      TESSERA_ASSIGN_OR_RETURN(
          auto executor, ReplicaExecutor::Create(
                             *rank.worker, {.keepalive_interval = {}, .max_steps_in_flight = 2}));
      EXPECT_EQ(executor->max_steps_in_flight(), 2);
      const size_t steps = f->prompts[0].greedy.size();
      std::vector<int32_t> computed(2);
      for (int s = 0; s < 2; ++s) {
        tokens[s] = f->prompts[s].ids;
        TESSERA_ASSIGN_OR_RETURN(StepResult r, executor->Execute(OneSequencePlan(s, tokens[s], 0)));
        computed[s] = static_cast<int32_t>(tokens[s].size());
        tokens[s].push_back(r.token_ids.at(0));
      }
      // Decode: sequence 0's step and sequence 1's step in flight at once.
      TESSERA_RETURN_IF_ERROR(executor->Submit(OneSequencePlan(0, tokens[0], computed[0])));
      computed[0] = static_cast<int32_t>(tokens[0].size());
      TESSERA_RETURN_IF_ERROR(executor->Submit(OneSequencePlan(1, tokens[1], computed[1])));
      computed[1] = static_cast<int32_t>(tokens[1].size());
      EXPECT_EQ(executor->Submit(OneSequencePlan(0, tokens[0], computed[0])).code(),
                absl::StatusCode::kFailedPrecondition);
      EXPECT_EQ(executor->Execute(OneSequencePlan(0, tokens[0], computed[0])).status().code(),
                absl::StatusCode::kFailedPrecondition);
      // Each collect gives the oldest step's sequence its token; its next step goes in at once.
      for (size_t n = 0; n < 2 * (steps - 1); ++n) {
        const int s = static_cast<int>(n % 2);
        if (n == 5) TESSERA_RETURN_IF_ERROR(executor->Idle());  // a keep-alive mid-pipeline
        if (n == 7) {
          TESSERA_ASSIGN_OR_RETURN(auto replies, executor->CallFollowers({42, 7}));
          EXPECT_EQ(replies.size(), static_cast<size_t>(split.tp * split.pp - 1));
          for (const auto& reply : replies) EXPECT_EQ(reply, (std::vector<int64_t>{42, 7}));
        }
        TESSERA_ASSIGN_OR_RETURN(StepResult r, executor->Collect());
        tokens[s].push_back(r.token_ids.at(0));
        if (tokens[s].size() - f->prompts[s].ids.size() < steps) {
          TESSERA_RETURN_IF_ERROR(executor->Submit(OneSequencePlan(s, tokens[s], computed[s])));
          computed[s] = static_cast<int32_t>(tokens[s].size());
        }
      }
      EXPECT_EQ(executor->Collect().status().code(), absl::StatusCode::kFailedPrecondition);
      return executor->Stop();
    });
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(commands.load(), split.tp * split.pp - 1);
    for (int s = 0; s < 2; ++s) {
      const std::vector<int32_t> generated(tokens[s].begin() + f->prompts[s].ids.size(),
                                           tokens[s].end());
      const std::vector<int32_t>& want = f->prompts[s].greedy;
      EXPECT_EQ(generated, want) << "sequence " << s;
    }
  }
}

// Commands posted while steps are in flight ride with the next step: every follower runs them
// before that step's forward pass, in the order they were posted (and before a command called
// after them), their replies come back with the step's tokens, and no message between steps has
// to wait for the pipeline. The tokens stay the fixture's.
TEST(ReplicaExecutorTest, PostedCommandsRideWithStepsWithoutDrainingThePipeline) {
  auto f = LoadFixture("llama_gqa");
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_GE(f->prompts.size(), 2u);
  for (const Split& split :
       {Split{1, 2, {}, "pp2", 1, 2}, Split{2, 2, {}, "tp2pp2", 2, 2},
        Split{1, 2, {}, "pp2_synchronous_sends", 1, 2, true},
        Split{2, 2, {}, "tp2pp2_synchronous_sends", 2, 2, true}, Split{2, 1, {}, "tp2"}}) {
    SCOPED_TRACE(split.name);
    const int ranks = split.tp * split.pp;
    const int depth = split.steps_in_flight;
    absl::Mutex mu;
    std::vector<std::vector<int64_t>> ran(ranks);  // per follower, the commands in order
    std::vector<std::vector<int32_t>> tokens(2);
    std::vector<int64_t> posted;                 // the commands posted, in order
    std::map<int64_t, FollowerReplies> replies;  // their replies, as handed out
    int64_t drains_while_decoding = -1;
    int64_t drains_after_call = -1;
    const absl::Status status =
        RunReplica(*f, split, [&](int r, ReplicaRank& rank) -> absl::Status {
          if (!rank.worker->is_leader()) {
            return RunFollower(*rank.worker, [&, r](const std::vector<int64_t>& command) {
              absl::MutexLock lock(&mu);
              ran[r].push_back(command.at(0));
              return std::vector<int64_t>{r, command.at(0)};
            });
          }
          TESSERA_ASSIGN_OR_RETURN(
              auto executor, ReplicaExecutor::Create(*rank.worker, {.keepalive_interval = {},
                                                                    .max_steps_in_flight = depth}));
          const auto post = [&](int64_t c) {
            posted.push_back(c);
            executor->Post({c}, [&, c](FollowerReplies got) {
              absl::MutexLock lock(&mu);
              EXPECT_FALSE(replies.contains(c)) << "command " << c << " answered twice";
              replies.emplace(c, std::move(got));
            });
          };
          const size_t steps = f->prompts[0].greedy.size();
          std::vector<int32_t> computed(2);
          for (int s = 0; s < 2; ++s) {
            tokens[s] = f->prompts[s].ids;
            post(s);  // with the prefill
            TESSERA_ASSIGN_OR_RETURN(StepResult r,
                                     executor->Execute(OneSequencePlan(s, tokens[s], 0)));
            computed[s] = static_cast<int32_t>(tokens[s].size());
            tokens[s].push_back(r.token_ids.at(0));
          }
          // Decode with `depth` steps in flight; every step but the first carries a command or two.
          int64_t next = 2;
          for (int s = 0; s < depth; ++s) {
            TESSERA_RETURN_IF_ERROR(executor->Submit(OneSequencePlan(s, tokens[s], computed[s])));
            computed[s] = static_cast<int32_t>(tokens[s].size());
          }
          for (size_t n = 0; n < depth * (steps - 1); ++n) {
            const int s = static_cast<int>(n % depth);
            TESSERA_ASSIGN_OR_RETURN(StepResult r, executor->Collect());
            tokens[s].push_back(r.token_ids.at(0));
            if (tokens[s].size() - f->prompts[s].ids.size() < steps) {
              post(next++);
              if (n % 3 == 0) post(next++);
              TESSERA_RETURN_IF_ERROR(executor->Submit(OneSequencePlan(s, tokens[s], computed[s])));
              computed[s] = static_cast<int32_t>(tokens[s].size());
            }
          }
          drains_while_decoding = executor->pipeline_drains();
          {
            // Each came back with the step it rode with, all of which are collected.
            absl::MutexLock lock(&mu);
            EXPECT_EQ(replies.size(), posted.size());
          }
          // A called command waits for the step in flight (with a pipeline) and follows the posted.
          post(next++);
          TESSERA_RETURN_IF_ERROR(executor->Submit(OneSequencePlan(0, tokens[0], computed[0])));
          post(next++);
          TESSERA_ASSIGN_OR_RETURN(auto called, executor->CallFollowers({1000}));
          EXPECT_EQ(called.size(), static_cast<size_t>(ranks - 1));
          drains_after_call = executor->pipeline_drains();
          TESSERA_RETURN_IF_ERROR(executor->Collect().status());
          // With no step to ride: FlushPosted, then Stop, send them between steps.
          post(next++);
          TESSERA_RETURN_IF_ERROR(executor->FlushPosted());
          post(next++);
          TESSERA_RETURN_IF_ERROR(executor->Stop());
          // After Stop: the error, at once.
          bool refused = false;
          executor->Post({2000}, [&](FollowerReplies got) {
            refused = got.status().code() == absl::StatusCode::kFailedPrecondition;
          });
          EXPECT_TRUE(refused);
          return absl::OkStatus();
        });
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(drains_while_decoding, 0);
    EXPECT_EQ(drains_after_call, split.pp > 1 ? 1 : 0);
    for (int s = 0; s < depth; ++s) {
      const std::vector<int32_t> generated(
          tokens[s].begin() + f->prompts[s].ids.size(),
          tokens[s].begin() + f->prompts[s].ids.size() + f->prompts[s].greedy.size());
      EXPECT_EQ(generated, f->prompts[s].greedy) << "sequence " << s;
    }
    // Every posted command was answered once, by every follower, with its own reply.
    ASSERT_EQ(replies.size(), posted.size());
    for (int64_t c : posted) {
      ASSERT_TRUE(replies[c].ok()) << "command " << c << ": " << replies[c].status();
      ASSERT_EQ(replies[c]->size(), static_cast<size_t>(ranks - 1)) << "command " << c;
      for (int r = 1; r < ranks; ++r) {
        EXPECT_EQ((*replies[c])[r - 1], (std::vector<int64_t>{r, c})) << "command " << c;
      }
    }
    // Each follower ran them in order, the called one after the two posted before it.
    std::vector<int64_t> order = posted;
    order.insert(order.end() - 2, 1000);
    for (int r = 1; r < ranks; ++r) EXPECT_EQ(ran[r], order) << "rank " << r;
  }
}

TEST(ReplicaExecutorTest, StepsInFlightAreOneToTheNumberOfStages) {
  auto f = LoadFixture("llama_gqa");
  ASSERT_TRUE(f.ok()) << f.status();
  ReplicaRankOptions options = ReplicaOptions({1, 1, {}, "one"});
  options.pp_steps_in_flight = 2;
  auto group = parallel::CreateInProcessGroup(1, absl::Seconds(5));
  ASSERT_TRUE(group.ok());
  auto backend = kernels::CreateCpuBackend({.num_threads = 1});
  ASSERT_TRUE(backend.ok());
  auto rank = CreateReplicaRank(f->config, *f->weights, **backend, *(*group)[0], options);
  ASSERT_FALSE(rank.ok());
  EXPECT_THAT(rank.status().message(),
              HasSubstr("between 1 and the number of pipeline stages (1)"));
  options.pp_steps_in_flight = 1;
  rank = CreateReplicaRank(f->config, *f->weights, **backend, *(*group)[0], options);
  ASSERT_TRUE(rank.ok()) << rank.status();
  for (int bad : {0, 2}) {
    auto executor = ReplicaExecutor::Create(*rank->worker, {.max_steps_in_flight = bad});
    EXPECT_EQ(executor.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(SplitStepPlanTest, SplitsWholeSequencesBalancedByTokens) {
  // Three sequences: a 6-token prefill chunk and two decodes; blocks tables 2 wide.
  StepPlan plan;
  plan.token_ids = {1, 2, 3, 4, 5, 6, 7, 8};
  plan.positions = {0, 1, 2, 3, 4, 5, 9, 3};
  plan.slot_mapping = {0, 1, 2, 3, 4, 5, 19, 23};
  plan.query_start = {0, 6, 7, 8};
  plan.seq_lens = {6, 10, 4};
  plan.block_tables = {0, 1, 2, 3, 5, 0};
  plan.logits_rows = {5, 6, 7};
  plan.sampling = {{0.0f, 1}, {0.5f, 2}, {1.0f, 3}};
  std::vector<std::vector<size_t>> origin;
  const std::vector<StepPlan> parts = SplitStepPlan(plan, 2, &origin);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0].token_ids, (std::vector<int32_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(parts[0].query_start, (std::vector<int32_t>{0, 6}));
  EXPECT_EQ(parts[0].logits_rows, (std::vector<int32_t>{5}));
  EXPECT_EQ(parts[1].token_ids, (std::vector<int32_t>{7, 8}));
  EXPECT_EQ(parts[1].query_start, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(parts[1].seq_lens, (std::vector<int32_t>{10, 4}));
  EXPECT_EQ(parts[1].block_tables, (std::vector<int32_t>{2, 3, 5, 0}));
  EXPECT_EQ(parts[1].slot_mapping, (std::vector<int64_t>{19, 23}));
  EXPECT_EQ(parts[1].logits_rows, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(parts[1].sampling[1].top_k, 3);
  EXPECT_EQ(origin, (std::vector<std::vector<size_t>>{{0}, {1, 2}}));
  // More parts than sequences: one per sequence.
  EXPECT_EQ(SplitStepPlan(plan, 8, &origin).size(), 3u);
}

TEST(StepPlanWireTest, RoundTripsEveryField) {
  StepPlan plan;
  plan.token_ids = {1, 2, 3};
  plan.positions = {0, 1, 5};
  plan.slot_mapping = {10, 11, (int64_t{1} << 40)};
  plan.query_start = {0, 2, 3};
  plan.seq_lens = {2, 6};
  plan.block_tables = {0, 1, 2, 3};
  plan.logits_rows = {1, 2};
  plan.sampling = {{0.5f, 40, 0.9f, -7, 3}, {0.0f, 0, 1.0f, 1, 0}};
  plan.sampling[1].bias_token_ids = {4, 9};
  plan.sampling[1].bias_values = {-100.0f, 2.5f};
  plan.sampling[1].banned_token_ids = {2};
  plan.sampling[1].allowed_mask = {0xFFFFFFFFu, 0x80000001u, 7u};  // odd: packed two a word
  int64_t kind = -1;
  auto decoded = DecodeStepPlan(EncodeStepPlan(plan, 1), &kind);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(kind, 1);
  EXPECT_EQ(decoded->token_ids, plan.token_ids);
  EXPECT_EQ(decoded->positions, plan.positions);
  EXPECT_EQ(decoded->slot_mapping, plan.slot_mapping);
  EXPECT_EQ(decoded->query_start, plan.query_start);
  EXPECT_EQ(decoded->seq_lens, plan.seq_lens);
  EXPECT_EQ(decoded->block_tables, plan.block_tables);
  EXPECT_EQ(decoded->logits_rows, plan.logits_rows);
  ASSERT_EQ(decoded->sampling.size(), 2u);
  EXPECT_EQ(decoded->sampling[0].temperature, 0.5f);
  EXPECT_EQ(decoded->sampling[0].top_k, 40);
  EXPECT_EQ(decoded->sampling[0].top_p, 0.9f);
  EXPECT_EQ(decoded->sampling[0].seed, -7);
  EXPECT_EQ(decoded->sampling[0].step, 3);
  EXPECT_TRUE(decoded->sampling[0].bias_token_ids.empty());
  EXPECT_EQ(decoded->sampling[1].bias_token_ids, plan.sampling[1].bias_token_ids);
  EXPECT_EQ(decoded->sampling[1].bias_values, plan.sampling[1].bias_values);
  EXPECT_EQ(decoded->sampling[1].banned_token_ids, plan.sampling[1].banned_token_ids);
  EXPECT_EQ(decoded->sampling[1].allowed_mask, plan.sampling[1].allowed_mask);
  EXPECT_TRUE(decoded->sampling[0].allowed_mask.empty());
  std::vector<int64_t> truncated = EncodeStepPlan(plan, 1);
  truncated.pop_back();
  EXPECT_EQ(DecodeStepPlan(truncated, &kind).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace tessera::worker
