// Disaggregated prefill → decode between replicas of different tensor and pipeline parallelism:
// every rank of each replica (threads, in-process communicators) has its own KV cache on its own
// in-process transport; the leaders' ReplicaKvPorts drive their followers' ports. The decode
// replica's tokens can only match the single-rank mixed run if every rank's slice of the KV
// (its layers, its heads) arrived from the prefill ranks that hold them.
#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtransfer/inproc/in_process_transport.h"
#include "tests/worker/replica_test_util.h"
#include "tests/worker/test_util.h"
#include "tests/worker/thread_replica.h"
#include "worker/engine.h"
#include "worker/replica.h"
#include "worker/replica_kv.h"

namespace tessera::worker {
namespace {

using testing::Fixture;
using ::testing::HasSubstr;
using testing::LoadFixture;
using testing::Split;
using testing::ThreadReplica;

// `budget`: tokens a step (16 chunks the fixture's prompts).
SchedulerConfig TestScheduler(int32_t budget = 128) {
  SchedulerConfig s;
  s.max_model_len = 64;
  s.max_num_seqs = 8;
  s.max_num_batched_tokens = budget;
  return s;
}

// A side of the tests: the fixture's model split as `split`. With split.steps_in_flight > 1 the
// prompts go in chunks of 16 tokens, so that a prompt's chunks follow each other into the
// pipeline.
std::unique_ptr<ThreadReplica> MakeReplica(const Fixture& f, const Split& split,
                                           std::shared_ptr<kvtransfer::InProcessFabric> fabric,
                                           std::string name, bool stream_layers) {
  testing::ThreadReplicaOptions o;
  o.split = split;
  o.name = std::move(name);
  o.stream_layers = stream_layers;
  o.rank = testing::ReplicaOptions(split);
  o.scheduler = TestScheduler(split.steps_in_flight > 1 ? 16 : 128);
  return std::make_unique<ThreadReplica>(f.config, *f.weights, std::move(fabric), std::move(o));
}

struct Pair {
  Split prefill;
  Split decode;
  bool stream_layers = true;  // off: each rank sends its slice after the prompt's last step
};

void PrintTo(const Pair& p, std::ostream* os) { *os << p.prefill.name << "_to_" << p.decode.name; }

Request Greedy(const std::vector<int32_t>& prompt, int32_t max_tokens) {
  Request r;
  r.prompt = prompt;
  r.sampling.max_tokens = max_tokens;
  r.sampling.ignore_eos = true;
  return r;
}

class DisaggregationParallelTest : public ::testing::TestWithParam<Pair> {
 protected:
  void SetUp() override {
    auto fixture = LoadFixture("llama_gqa");  // 8 heads, 2 KV heads, 2 layers
    ASSERT_TRUE(fixture.ok()) << fixture.status();
    fixture_ = std::move(*fixture);
    fabric_ = kvtransfer::InProcessFabric::Create();
    prefill_ =
        MakeReplica(fixture_, GetParam().prefill, fabric_, "prefill", GetParam().stream_layers);
    ASSERT_TRUE(prefill_->setup().ok()) << prefill_->setup();
    decode_ = MakeReplica(fixture_, GetParam().decode, fabric_, "decode", GetParam().stream_layers);
    ASSERT_TRUE(decode_->setup().ok()) << decode_->setup();
  }

  void TearDown() override {
    for (auto* side : {&prefill_, &decode_}) {
      if (*side == nullptr) continue;
      EngineCounters c;
      const absl::Status stopped = (*side)->Stop(&c);
      EXPECT_TRUE(stopped.ok()) << stopped;
      // Every block is back: none in use, none reserved or exporting.
      EXPECT_EQ(c.kv_blocks_in_use, 0) << "blocks leaked on a replica";
      EXPECT_EQ(c.kv_blocks_reserved, 0);
      EXPECT_EQ(c.kv_blocks_exporting, 0);
      EXPECT_EQ(c.kv_blocks_free + c.kv_blocks_cached, c.kv_blocks_total);
      side->reset();
    }
  }

  // Reserve on D, prefill on P (which sends every rank's slice). P's output; D's reservation and
  // P's checksums through the pointers.
  absl::StatusOr<RequestOutput> Prefill(const Request& request, KvDestination* destination,
                                        std::vector<KvSegmentChecksum>* checksums) {
    absl::StatusOr<testing::PrefillHandoff> h =
        testing::PrefillForDecode(prefill_->engine(), decode_->engine(), request);
    if (!h.ok()) return h.status();
    if (h->output.status.ok() && !h->handoff) return absl::InternalError("no KV handoff");
    *destination = h->destination;
    *checksums = h->checksums;
    return h->output;
  }

  absl::StatusOr<std::vector<int32_t>> Disaggregated(const Request& request) {
    return testing::GenerateDisaggregated(prefill_->engine(), decode_->engine(), request);
  }

  Fixture fixture_;
  std::shared_ptr<kvtransfer::InProcessFabric> fabric_;
  std::unique_ptr<ThreadReplica> prefill_;
  std::unique_ptr<ThreadReplica> decode_;
};

TEST_P(DisaggregationParallelTest, GreedyTokensMatchTheSingleRankMixedRun) {
  auto mixed_parts = testing::MakeTestEngine(fixture_.config, *fixture_.weights);
  ASSERT_TRUE(mixed_parts.ok()) << mixed_parts.status();
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& p : fixture_.prompts) prompts.push_back(p.ids);
  auto mixed = testing::GenerateGreedy(*mixed_parts->executor, fixture_.config, prompts, 10,
                                       TestScheduler());
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  for (size_t i = 0; i < prompts.size(); ++i) {
    absl::StatusOr<std::vector<int32_t>> tokens = Disaggregated(Greedy(prompts[i], 10));
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    EXPECT_EQ(*tokens, (*mixed)[i].token_ids) << "prompt " << i;
  }
  const KvPortCounters p = prefill_->kv().counters();
  const KvPortCounters d = decode_->kv().counters();
  EXPECT_GT(p.bytes_sent, 0);
  // Each byte of D's reserved blocks was written once: replicated KV heads are sent by one rank.
  EXPECT_EQ(p.bytes_sent, d.bytes_received);
  EXPECT_EQ(d.commits, static_cast<int64_t>(prompts.size()));
  EXPECT_EQ(d.checksum_failures, 0);
  // Prompts in one chunk (one step in flight): layer-wise streaming on every rank, followers
  // included, submits one transfer per layer each sending rank shares with each destination rank
  // (without streaming, one per destination rank it shares any with). A rank whose layers and
  // heads an earlier rank holds sends nothing. (With steps in flight the prompts go in chunks, and
  // every chunk that fills blocks sends them.)
  if (GetParam().prefill.steps_in_flight > 1 && GetParam().stream_layers) return;
  int64_t per_prompt = 0;
  const std::vector<KvRankLayout> src = prefill_->kv().layouts();
  for (size_t r = 0; r < src.size(); ++r) {
    bool duplicate = false;
    for (size_t q = 0; q < r; ++q) {
      duplicate |= src[q].layer_begin == src[r].layer_begin &&
                   src[q].head_begin == src[r].head_begin && src[q].head_end == src[r].head_end;
    }
    if (duplicate) continue;
    for (const KvRankLayout& dst : decode_->kv().layouts()) {
      const int32_t layers =
          std::min(src[r].layer_end, dst.layer_end) - std::max(src[r].layer_begin, dst.layer_begin);
      const bool heads =
          std::min(src[r].head_end, dst.head_end) > std::max(src[r].head_begin, dst.head_begin);
      if (heads && layers > 0) per_prompt += GetParam().stream_layers ? layers : 1;
    }
  }
  EXPECT_EQ(p.transfers_sent, per_prompt * static_cast<int64_t>(prompts.size()));
}

// Requests at once: the prefill replica exports (or streams) one prompt's KV while it runs
// another's steps, and the decode replica reserves and commits while it decodes others. Those
// commands ride with the steps, so neither pipeline is drained.
TEST_P(DisaggregationParallelTest, ConcurrentRequestsMigrateWithoutDrainingEitherPipeline) {
  auto mixed_parts = testing::MakeTestEngine(fixture_.config, *fixture_.weights);
  ASSERT_TRUE(mixed_parts.ok()) << mixed_parts.status();
  std::vector<std::vector<int32_t>> prompts;
  for (int copy = 0; copy < 2; ++copy) {
    for (const auto& p : fixture_.prompts) prompts.push_back(p.ids);
  }
  auto mixed =
      testing::GenerateGreedy(*mixed_parts->executor, fixture_.config, prompts, 6, TestScheduler());
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  std::vector<absl::StatusOr<std::vector<int32_t>>> got(prompts.size(),
                                                        absl::UnknownError("not run"));
  std::vector<std::thread> clients;
  for (size_t i = 0; i < prompts.size(); ++i) {
    clients.emplace_back([&, i] { got[i] = Disaggregated(Greedy(prompts[i], 6)); });
  }
  for (std::thread& t : clients) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(got[i].ok()) << "prompt " << i << ": " << got[i].status();
    EXPECT_EQ(*got[i], (*mixed)[i].token_ids) << "prompt " << i;
  }
  EXPECT_EQ(prefill_->engine().counters().pipeline_drains, 0);
  EXPECT_EQ(decode_->engine().counters().pipeline_drains, 0);
}

// While both replicas run requests, the decode replica's reservations are released before any
// KV comes (aborted on every rank) and the prefill replica pre-connects to the decode ranks again:
// those commands ride with the steps too, and every aborted reservation's blocks come back
// (TearDown checks).
TEST_P(DisaggregationParallelTest, AbortsAndPreconnectsRideWithTheStepsToo) {
  std::vector<std::vector<int32_t>> prompts;
  for (int copy = 0; copy < 2; ++copy) {
    for (const auto& p : fixture_.prompts) prompts.push_back(p.ids);
  }
  std::atomic<int> running{static_cast<int>(prompts.size())};
  std::vector<absl::StatusOr<std::vector<int32_t>>> got(prompts.size(),
                                                        absl::UnknownError("not run"));
  std::vector<std::thread> clients;
  for (size_t i = 0; i < prompts.size(); ++i) {
    clients.emplace_back([&, i] {
      got[i] = Disaggregated(Greedy(prompts[i], 12));
      --running;
    });
  }
  int aborted = 0;
  while (running > 0 || aborted < 8) {
    absl::StatusOr<KvDestination> d = decode_->engine().ReserveKv(Greedy(prompts[0], 4));
    ASSERT_TRUE(d.ok()) << d.status();
    decode_->engine().ReleaseKv(d->token);
    for (const KvRankLayout& rank : decode_->kv().layouts()) {
      EXPECT_TRUE(prefill_->kv().Preconnect(rank.descriptor).ok());
    }
    ++aborted;
  }
  for (std::thread& t : clients) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(got[i].ok()) << "prompt " << i << ": " << got[i].status();
  }
  EXPECT_EQ(prefill_->engine().counters().pipeline_drains, 0);
  EXPECT_EQ(decode_->engine().counters().pipeline_drains, 0);
  // The released reservations' blocks come back (every rank has answered the abort).
  EXPECT_TRUE(testing::Await([&] { return decode_->engine().counters().kv_blocks_reserved == 0; }))
      << decode_->engine().counters().kv_blocks_reserved << " blocks still reserved";
}

TEST_P(DisaggregationParallelTest, CorruptionOnAnyRankIsRefusedAndTheRequestRetries) {
  const Request request = Greedy(fixture_.prompts[0].ids, 8);
  const int last = GetParam().decode.tp * GetParam().decode.pp - 1;
  KvDestination d;
  std::vector<KvSegmentChecksum> sums;
  auto first = Prefill(request, &d, &sums);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(first->status.ok()) << first->status;
  // One byte flips on D's last rank after it landed.
  KvCache& cache = decode_->cache(last);
  auto* base = static_cast<uint8_t*>(cache.key(cache.config().num_layers - 1).data());
  base[static_cast<size_t>(d.block_ids[0]) * d.ranks[last].BlockBytes() + 1] ^= 0x10;
  Request r = request;
  r.kv_import = Request::KvImport{d.token, first->token_ids[0], sums};
  auto stream = decode_->engine().Submit(r);
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto out = (*stream)->Collect(absl::Seconds(30));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->status.code(), absl::StatusCode::kDataLoss) << out->status;
  EXPECT_THAT(out->status.message(), HasSubstr("checksum mismatch"));
  if (last > 0) {
    EXPECT_THAT(out->status.message(), HasSubstr(absl::StrCat("rank ", last)));
  }
  EXPECT_TRUE(out->token_ids.empty());
  EXPECT_EQ(decode_->kv().counters().checksum_failures, 1);
  // Every rank released the reservation: the request is served again from scratch.
  auto retry = Disaggregated(request);
  ASSERT_TRUE(retry.ok()) << retry.status();
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, DisaggregationParallelTest,
    ::testing::Values(
        Pair{{2, 1, {}, "tp2"}, {1, 1, {}, "tp1"}}, Pair{{1, 1, {}, "tp1"}, {2, 1, {}, "tp2"}},
        Pair{{1, 2, {}, "pp2"}, {2, 1, {}, "tp2"}}, Pair{{2, 2, {}, "tp2pp2"}, {1, 2, {}, "pp2"}},
        Pair{{4, 1, {}, "tp4_kv_replicated"}, {1, 1, {}, "tp1"}},
        Pair{{1, 1, {}, "tp1"}, {4, 1, {}, "tp4_kv_replicated"}},
        // Steps in flight where no layer-wise streaming is on.
        Pair{{1, 2, {}, "pp2_two_steps_in_flight", 0, 2},
             {2, 2, {}, "tp2pp2_two_steps_in_flight", 0, 2},
             false},
        // The same with sends that wait for their receiver
        // (NCCL's), KV commands between steps included.
        Pair{{1, 2, {}, "pp2_synchronous_sends", 0, 2, true},
             {2, 2, {}, "tp2pp2_synchronous_sends", 0, 2, true},
             false},
        // Layer-wise streaming with steps in flight: each
        // chunk's streams open with its step.
        Pair{{1, 2, {}, "pp2_streaming_two_steps", 0, 2}, {2, 2, {}, "tp2pp2_two_steps", 0, 2}},
        Pair{{2, 2, {}, "tp2pp2_streaming_synchronous", 0, 2, true},
             {1, 2, {}, "pp2_synchronous", 0, 2, true}}),
    [](const auto& info) {
      return absl::StrCat(info.param.prefill.name, "_to_", info.param.decode.name);
    });

TEST(KvPortOptionsForTest, OnlyTheFirstHolderOfAReplicatedKvHeadSends) {
  parallel::ShardPlan plan;
  plan.tp_size = 4;
  plan.layer_begin = 3;
  plan.kv_head_begin = 1;
  for (int rank = 0; rank < 4; ++rank) {
    plan.tp_rank = rank;
    const KvPortOptions o = KvPortOptionsFor(plan, /*model_kv_heads=*/2);
    EXPECT_EQ(o.layer_begin, 3);
    EXPECT_EQ(o.head_begin, 1);
    EXPECT_EQ(o.sends, rank % 2 == 0) << rank;
  }
  plan.tp_rank = 1;
  EXPECT_TRUE(KvPortOptionsFor(plan, /*model_kv_heads=*/4).sends);  // no replication
}

}  // namespace
}  // namespace tessera::worker
