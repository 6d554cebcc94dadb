// Disaggregated prefill → decode at the engine level: a prefill engine and a decode engine, each
// with its own real tiny Llama (the llama_gqa fixture) and KV cache, exchange the prompt's KV
// through KvPorts over an in-process transport. The decode engine's tokens can only match the
// mixed run if every byte of the KV arrived in the right block.
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtransfer/fault_injecting_transport.h"
#include "kvtransfer/inproc/in_process_transport.h"
#include "tests/kernels/test_backends.h"
#include "tests/worker/test_util.h"
#include "worker/engine.h"
#include "worker/kv_port.h"

namespace tessera::worker {
namespace {

using testing::Await;
using testing::Fixture;
using ::testing::HasSubstr;
using testing::LoadFixture;
using testing::MakeTestEngine;
using testing::TestEngine;

// A KvEndpoint whose ReserveAsync and CommitAsync answers wait until Release(), as a multi-rank
// replica's do until its followers' replies come back with a step. Everything else forwards.
class DeferredKv final : public KvEndpoint {
 public:
  explicit DeferredKv(KvEndpoint& inner) : inner_(inner) {}
  std::vector<KvRankLayout> layouts() const override { return inner_.layouts(); }
  KvPortCounters counters() const override { return inner_.counters(); }
  absl::Status Preconnect(const std::string& d) override { return inner_.Preconnect(d); }
  absl::StatusOr<std::unique_ptr<KvExport>> Export(absl::Span<const int32_t> blocks,
                                                   const KvDestination& d) override {
    return inner_.Export(blocks, d);
  }
  absl::StatusOr<std::unique_ptr<KvLayerStream>> StreamLayers(absl::Span<const int32_t> blocks,
                                                              const KvDestination& d) override {
    return inner_.StreamLayers(blocks, d);
  }
  void AbortAsync(uint64_t token, Done done) override { inner_.AbortAsync(token, std::move(done)); }
  // The inner endpoint answers at once (a KvPort); its answer is held.
  void ReserveAsync(uint64_t token, absl::Span<const int32_t> blocks, Done done) override {
    inner_.ReserveAsync(token, blocks, [&, done](absl::Status s) { Hold(done, std::move(s)); });
  }
  void CommitAsync(uint64_t token, absl::Span<const KvSegmentChecksum> sums, Done done) override {
    inner_.CommitAsync(token, sums, [&, done](absl::Status s) { Hold(done, std::move(s)); });
  }

  // Answers every call held so far; how many.
  size_t Release() {
    std::vector<std::pair<Done, absl::Status>> held;
    {
      absl::MutexLock lock(&mu_);
      held.swap(held_);
    }
    for (auto& [done, status] : held) done(status);
    return held.size();
  }
  size_t held() const {
    absl::MutexLock lock(&mu_);
    return held_.size();
  }

 private:
  void Hold(Done done, absl::Status status) {
    absl::MutexLock lock(&mu_);
    held_.emplace_back(std::move(done), std::move(status));
  }

  KvEndpoint& inner_;
  mutable absl::Mutex mu_;
  std::vector<std::pair<Done, absl::Status>> held_ ABSL_GUARDED_BY(mu_);
};

// One replica: model, cache, transport, port, engine.
struct Side {
  TestEngine parts;
  std::unique_ptr<kvtransfer::Transport> transport;
  std::unique_ptr<KvPort> port;
  std::unique_ptr<DeferredKv> deferred;  // between port and engine when answers are deferred
  std::unique_ptr<Engine> engine;
};

class DisaggregationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto fixture = LoadFixture("llama_gqa");
    ASSERT_TRUE(fixture.ok()) << fixture.status();
    fixture_ = std::move(*fixture);
    fabric_ = kvtransfer::InProcessFabric::Create();
    MakeSide("prefill", prefill_);
    MakeSide("decode", decode_);
  }
  void TearDown() override {
    for (Side* side : {&prefill_, &decode_}) {
      if (side->engine != nullptr) {
        (void)side->engine->Shutdown(absl::Seconds(5));
        // Every block is back: none in use, none reserved or exporting.
        const EngineCounters c = side->engine->counters();
        EXPECT_EQ(c.kv_blocks_in_use, 0) << "blocks leaked on a replica";
        EXPECT_EQ(c.kv_blocks_reserved, 0);
        EXPECT_EQ(c.kv_blocks_exporting, 0);
        EXPECT_EQ(c.kv_blocks_free + c.kv_blocks_cached, c.kv_blocks_total);
      }
      side->engine.reset();
      side->deferred.reset();
      side->port.reset();
      side->transport.reset();
    }
  }

  void MakeSide(const std::string& name, Side& side) {
    testing::TestEngineOptions options;
    options.num_blocks = 64;
    options.backend = backend_;
    auto parts = MakeTestEngine(fixture_.config, *fixture_.weights, options);
    ASSERT_TRUE(parts.ok()) << parts.status();
    side.parts = std::move(*parts);
    kvtransfer::TransportOptions t;
    t.name = name;
    auto transport = kvtransfer::InProcessTransport::Create(fabric_, t);
    ASSERT_TRUE(transport.ok()) << transport.status();
    side.transport = std::move(*transport);
    if (transfer_delay_ > absl::ZeroDuration()) {
      auto slow = kvtransfer::FaultInjectingTransport::Create(std::move(side.transport),
                                                              {.transfer_delay = transfer_delay_});
      ASSERT_TRUE(slow.ok()) << slow.status();
      side.transport = std::move(*slow);
    }
    auto port = KvPort::Create(*side.parts.cache, *side.transport, {.stage_through_host = staged_});
    ASSERT_TRUE(port.ok()) << port.status();
    side.port = std::move(*port);
    EngineOptions e;
    e.scheduler.max_model_len = 128;
    e.scheduler.max_num_seqs = 16;
    e.scheduler.max_num_batched_tokens = batched_tokens_;
    e.kv_port = side.port.get();
    if (defer_kv_answers_) {
      side.deferred = std::make_unique<DeferredKv>(*side.port);
      e.kv_port = side.deferred.get();
    }
    e.kv_reservation_lease = lease_;
    e.kv_stream_layers = stream_layers_;
    auto engine = Engine::Create(*side.parts.executor, fixture_.config, e);
    ASSERT_TRUE(engine.ok()) << engine.status();
    side.engine = std::move(*engine);
  }

  static Request Greedy(const std::vector<int32_t>& prompt, int32_t max_tokens) {
    Request r;
    r.prompt = prompt;
    r.sampling.max_tokens = max_tokens;
    r.sampling.ignore_eos = true;
    return r;
  }

  // The prefill half: reserve on D, prefill on P (which sends the KV). Returns P's output.
  absl::StatusOr<RequestOutput> Prefill(const Request& request, KvDestination* destination,
                                        std::vector<KvSegmentChecksum>* checksums) {
    absl::StatusOr<testing::PrefillHandoff> h =
        testing::PrefillForDecode(*prefill_.engine, *decode_.engine, request);
    if (!h.ok()) return h.status();
    *destination = h->destination;
    *checksums = h->checksums;
    handoff_ = h->handoff;
    return h->output;
  }

  // The whole disaggregated request: P's first token, then D's tokens.
  absl::StatusOr<std::vector<int32_t>> Disaggregated(const Request& request) {
    return testing::GenerateDisaggregated(*prefill_.engine, *decode_.engine, request);
  }

  // Both replicas again, with the options as they are now.
  void Remake() {
    TearDown();
    MakeSide("prefill", prefill_);
    MakeSide("decode", decode_);
  }

  Fixture fixture_;
  std::shared_ptr<kvtransfer::InProcessFabric> fabric_;
  absl::Duration lease_ = absl::Seconds(30);
  bool stream_layers_ = true;
  int32_t batched_tokens_ = 256;
  bool staged_ = false;            // KvPortOptions::stage_through_host, the path of a GPU cache
  bool defer_kv_answers_ = false;  // DeferredKv in front of each port
  absl::Duration transfer_delay_;  // > 0: every KV transfer takes at least this long
  std::string backend_ = "cpu";
  Side prefill_;
  Side decode_;
  bool handoff_ = false;
};

TEST_F(DisaggregationTest, GreedyTokensMatchTheMixedRun) {
  for (const auto& prompt : fixture_.prompts) {
    const Request request = Greedy(prompt.ids, 12);
    // A third replica, mixed, as the reference.
    auto parts = MakeTestEngine(fixture_.config, *fixture_.weights);
    ASSERT_TRUE(parts.ok()) << parts.status();
    auto mixed = testing::GenerateGreedy(*parts->executor, fixture_.config, {prompt.ids}, 12,
                                         prefill_.engine->config());
    ASSERT_TRUE(mixed.ok()) << mixed.status();
    absl::StatusOr<std::vector<int32_t>> tokens = Disaggregated(request);
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    EXPECT_EQ(*tokens, (*mixed)[0].token_ids);
    // The fixture's transformers greedy tokens agree too (as far as they go).
    const size_t n = std::min(tokens->size(), prompt.greedy.size());
    EXPECT_EQ(std::vector<int32_t>(tokens->begin(), tokens->begin() + n),
              std::vector<int32_t>(prompt.greedy.begin(), prompt.greedy.begin() + n));
  }
  EXPECT_GT(decode_.port->counters().commits, 0);
  EXPECT_GT(prefill_.port->counters().bytes_sent, 0);
  EXPECT_EQ(prefill_.port->counters().bytes_sent, decode_.port->counters().bytes_received);
}

// A cache in device memory goes through a host mirror (KvPort's staging): sends copy their
// blocks out of the cache first, commits copy them in. The CPU cache takes the same path here.
TEST_F(DisaggregationTest, ThroughAHostMirrorTheTokensAreTheSame) {
  std::vector<std::vector<int32_t>> want;
  for (const auto& prompt : fixture_.prompts) {
    auto direct = Disaggregated(Greedy(prompt.ids, 12));
    ASSERT_TRUE(direct.ok()) << direct.status();
    want.push_back(*direct);
  }
  staged_ = true;
  for (bool stream : {true, false}) {
    SCOPED_TRACE(stream ? "layer-wise streaming" : "whole sends");
    stream_layers_ = stream;
    batched_tokens_ = 16;  // chunked prompts: several sends per request when streaming
    Remake();
    for (size_t i = 0; i < fixture_.prompts.size(); ++i) {
      absl::StatusOr<std::vector<int32_t>> tokens =
          Disaggregated(Greedy(fixture_.prompts[i].ids, 12));
      ASSERT_TRUE(tokens.ok()) << tokens.status();
      EXPECT_EQ(*tokens, want[i]) << "prompt " << i;
    }
    EXPECT_GT(prefill_.port->counters().bytes_sent, 0);
    EXPECT_EQ(decode_.port->counters().commits, static_cast<int64_t>(fixture_.prompts.size()));
  }
}

// Both replicas on the GPU: the caches are device memory, so the KV goes through each port's host
// mirror on its own (no stage_through_host). f32 weights and KV: the fixture's greedy tokens.
// Skips without a GPU (`ctest -L gpu` runs it).
TEST_F(DisaggregationTest, GpuCachesMigrateThroughTheHostMirror_cuda) {
  if (auto gpu = kernels::testing::MakeBackend("cuda"); !gpu.ok()) GTEST_SKIP() << gpu.status();
  backend_ = "cuda";
  for (bool stream : {true, false}) {
    SCOPED_TRACE(stream ? "layer-wise streaming" : "whole sends");
    stream_layers_ = stream;
    batched_tokens_ = 16;
    Remake();
    for (const auto& prompt : fixture_.prompts) {
      const auto n = static_cast<int32_t>(prompt.greedy.size());
      absl::StatusOr<std::vector<int32_t>> tokens = Disaggregated(Greedy(prompt.ids, n));
      ASSERT_TRUE(tokens.ok()) << tokens.status();
      EXPECT_EQ(*tokens, prompt.greedy);
    }
    EXPECT_EQ(decode_.port->counters().commits, static_cast<int64_t>(fixture_.prompts.size()));
  }
}

TEST_F(DisaggregationTest, StreamingSendsEachLayerOnItsOwnWithTheSameBytesAndTokens) {
  // Streaming (the default): one transfer per layer per request, from inside the prefill step.
  std::vector<std::vector<int32_t>> streamed;
  for (const auto& prompt : fixture_.prompts) {
    auto tokens = Disaggregated(Greedy(prompt.ids, 8));
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    streamed.push_back(*tokens);
  }
  const auto requests = static_cast<int64_t>(fixture_.prompts.size());
  const int64_t layers = fixture_.config.num_hidden_layers;
  EXPECT_EQ(prefill_.port->counters().transfers_sent, requests * layers);
  const int64_t bytes = prefill_.port->counters().bytes_sent;
  // The same requests sent whole after the step, between fresh replicas (D's prefix cache would
  // spare blocks): one transfer each, the same bytes and tokens.
  for (Side* side : {&prefill_, &decode_}) {
    (void)side->engine->Shutdown(absl::Seconds(5));
    side->engine.reset();
    side->port.reset();
    side->transport.reset();
  }
  stream_layers_ = false;
  MakeSide("prefill-whole", prefill_);
  MakeSide("decode-whole", decode_);
  for (size_t i = 0; i < fixture_.prompts.size(); ++i) {
    auto tokens = Disaggregated(Greedy(fixture_.prompts[i].ids, 8));
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    EXPECT_EQ(*tokens, streamed[i]) << "prompt " << i;
  }
  EXPECT_EQ(prefill_.port->counters().transfers_sent, requests);
  EXPECT_EQ(prefill_.port->counters().bytes_sent, bytes);
}

TEST_F(DisaggregationTest, AChunkedPromptStreamsEachChunksBlocksAsTheyFill) {
  // Prompts longer than a step's token budget are prefilled in chunks; each chunk's step sends,
  // layer by layer, the blocks it fills, and the last one the rest: every block once.
  for (Side* side : {&prefill_, &decode_}) {
    (void)side->engine->Shutdown(absl::Seconds(5));
    side->engine.reset();
    side->port.reset();
    side->transport.reset();
  }
  batched_tokens_ = 16;  // the least max_num_seqs allows
  MakeSide("prefill-chunked", prefill_);
  MakeSide("decode-chunked", decode_);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back(3 + (7 * i) % 200);
  auto tokens = Disaggregated(Greedy(prompt, 6));
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  auto parts = MakeTestEngine(fixture_.config, *fixture_.weights);
  ASSERT_TRUE(parts.ok()) << parts.status();
  auto mixed = testing::GenerateGreedy(*parts->executor, fixture_.config, {prompt}, 6,
                                       prefill_.engine->config());
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  EXPECT_EQ(*tokens, (*mixed)[0].token_ids);
  // 40 tokens in chunks of 16 (blocks of 4): three steps, each sending every layer once.
  const int64_t layers = fixture_.config.num_hidden_layers;
  EXPECT_EQ(prefill_.port->counters().transfers_sent, 3 * layers);
  EXPECT_EQ(prefill_.port->counters().bytes_sent,
            static_cast<int64_t>(10 * prefill_.port->layout().BlockBytes() * 2 * layers));
}

TEST_F(DisaggregationTest, ADecodeCachedPrefixIsNotSentAgain) {
  std::vector<int32_t> prompt = fixture_.prompts[0].ids;
  const size_t n = prompt.size();
  for (size_t i = 0; prompt.size() < 20; ++i) prompt.push_back(prompt[i % n]);
  prompt.resize(20);
  auto first = Disaggregated(Greedy(prompt, 6));
  ASSERT_TRUE(first.ok()) << first.status();
  const int64_t sent = prefill_.port->counters().bytes_sent;
  KvDestination d;
  std::vector<KvSegmentChecksum> sums;
  auto again = decode_.engine->ReserveKv(Greedy(prompt, 6));
  ASSERT_TRUE(again.ok()) << again.status();
  // 20 tokens in blocks of 4: all 5 full blocks are cached on D; the last is recomputed by P and
  // only blocks past the cached prefix travel.
  EXPECT_EQ(again->num_cached_tokens, 20);
  EXPECT_TRUE(again->block_ids.empty());
  decode_.engine->ReleaseKv(again->token);
  auto second = Disaggregated(Greedy(prompt, 6));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(*second, *first);
  EXPECT_EQ(prefill_.port->counters().bytes_sent, sent) << "cached blocks were sent again";
}

TEST_F(DisaggregationTest, CorruptedKvIsRefusedAndEveryBlockReturns) {
  const Request request = Greedy(fixture_.prompts[0].ids, 8);
  KvDestination d;
  std::vector<KvSegmentChecksum> sums;
  auto first = Prefill(request, &d, &sums);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(handoff_);
  // One byte of one block flips after it landed (a bad link, a buggy kernel).
  auto* base = static_cast<uint8_t*>(decode_.parts.cache->value(1).data());
  base[static_cast<size_t>(d.block_ids[0]) * decode_.port->layout().BlockBytes() + 3] ^= 0x40;
  Request r = request;
  r.kv_import = Request::KvImport{d.token, first->token_ids[0], sums};
  auto stream = decode_.engine->Submit(r);
  ASSERT_TRUE(stream.ok());
  auto out = (*stream)->Collect(absl::Seconds(30));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->status.code(), absl::StatusCode::kDataLoss) << out->status;
  EXPECT_THAT(out->status.message(), HasSubstr("checksum mismatch"));
  EXPECT_TRUE(out->token_ids.empty());
  EXPECT_EQ(decode_.port->counters().checksum_failures, 1);
  // The request can be served again from scratch.
  auto retry = Disaggregated(request);
  ASSERT_TRUE(retry.ok()) << retry.status();
}

TEST_F(DisaggregationTest, AWriteIntoAReleasedReservationIsRefused) {
  const Request request = Greedy(fixture_.prompts[0].ids, 8);
  auto d = decode_.engine->ReserveKv(request);
  ASSERT_TRUE(d.ok()) << d.status();
  decode_.engine->ReleaseKv(d->token);
  ASSERT_TRUE(Await([&] { return decode_.engine->counters().kv_blocks_reserved == 0; }));
  // The blocks are reused by another reservation; a late writer with the old token is refused.
  auto other = decode_.engine->ReserveKv(request);
  ASSERT_TRUE(other.ok()) << other.status();
  Request p = request;
  p.kv_destination = *d;
  auto stream = prefill_.engine->Submit(p);
  ASSERT_TRUE(stream.ok());
  auto out = (*stream)->Collect(absl::Seconds(30));
  ASSERT_TRUE(out.ok());
  // The prefill ends kAborted (retryable, not its own fault) naming the transport's refusal.
  EXPECT_EQ(out->status.code(), absl::StatusCode::kAborted) << out->status;
  EXPECT_THAT(std::string(out->status.message()), ::testing::HasSubstr("PERMISSION_DENIED"));
  EXPECT_GT(decode_.port->counters().writes_refused, 0);
  decode_.engine->ReleaseKv(other->token);
  ASSERT_TRUE(Await([&] { return decode_.engine->counters().kv_blocks_reserved == 0; }));
}

TEST_F(DisaggregationTest, AnUncommittedReservationLapsesWithItsLease) {
  decode_.engine.reset();
  decode_.port.reset();
  decode_.transport.reset();
  lease_ = absl::Milliseconds(50);
  MakeSide("decode-short-lease", decode_);
  auto d = decode_.engine->ReserveKv(Greedy(fixture_.prompts[0].ids, 8));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_GT(
      decode_.engine->counters().kv_blocks_reserved + decode_.port->counters().blocks_reserved, 0);
  ASSERT_TRUE(Await([&] { return decode_.port->counters().blocks_reserved == 0; }));
  ASSERT_TRUE(Await([&] { return decode_.engine->counters().kv_blocks_reserved == 0; }));
  // Committing after the lapse fails clearly.
  Request r = Greedy(fixture_.prompts[0].ids, 8);
  r.kv_import = Request::KvImport{d->token, 5, {}};
  auto stream = decode_.engine->Submit(r);
  ASSERT_TRUE(stream.ok());
  auto out = (*stream)->Collect(absl::Seconds(30));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->status.code(), absl::StatusCode::kNotFound) << out->status;
  EXPECT_THAT(out->status.message(), HasSubstr("unknown or expired"));
}

TEST_F(DisaggregationTest, AFirstTokenThatEndsTheRequestHandsNothingOff) {
  const Request request = Greedy(fixture_.prompts[0].ids, 1);
  KvDestination d;
  std::vector<KvSegmentChecksum> sums;
  auto out = Prefill(request, &d, &sums);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_FALSE(handoff_);
  EXPECT_EQ(out->finish_reason, FinishReason::kLength);
  EXPECT_EQ(out->token_ids.size(), 1u);
  EXPECT_EQ(prefill_.port->counters().bytes_sent, 0);
  decode_.engine->ReleaseKv(d.token);  // what the coordinator does
  ASSERT_TRUE(Await([&] { return decode_.engine->counters().kv_blocks_reserved == 0; }));
}

// A multi-rank replica answers reservations and commits when its followers' replies come back
// with a step. The engine goes on meanwhile: a reservation is answered, and an imported request
// scheduled, only once the answer is in, with the tokens of the mixed run.
TEST_F(DisaggregationTest, KvAnswersThatComeLaterAreAwaited) {
  defer_kv_answers_ = true;
  Remake();
  const Request request = Greedy(fixture_.prompts[0].ids, 8);
  absl::StatusOr<KvDestination> d = absl::UnknownError("not answered");
  absl::Notification reserved;
  std::thread reserver([&] {
    d = decode_.engine->ReserveKv(request);
    reserved.Notify();
  });
  ASSERT_TRUE(Await([&] { return decode_.deferred->held() == 1; }));
  EXPECT_FALSE(reserved.WaitForNotificationWithTimeout(absl::Milliseconds(50)));
  EXPECT_EQ(decode_.deferred->Release(), 1u);
  reserver.join();
  ASSERT_TRUE(d.ok()) << d.status();
  // P sends into it; D's commit waits for its answer, and the request with it.
  Request p = request;
  p.kv_destination = *d;
  auto prefilled = prefill_.engine->Submit(p);
  ASSERT_TRUE(prefilled.ok()) << prefilled.status();
  std::vector<int32_t> first;
  std::vector<KvSegmentChecksum> sums;
  for (;;) {
    absl::StatusOr<TokenEvent> e = (*prefilled)->Next(absl::Seconds(30));
    ASSERT_TRUE(e.ok()) << e.status();
    if (e->token_id >= 0) first.push_back(e->token_id);
    if (e->finish_reason.has_value()) {
      ASSERT_TRUE(e->status.ok()) << e->status;
      ASSERT_TRUE(e->kv_handoff);
      sums = e->kv_checksums;
      break;
    }
  }
  Request r = request;
  r.kv_import = Request::KvImport{d->token, first.at(0), sums};
  auto decoded = decode_.engine->Submit(r);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_TRUE(Await([&] { return decode_.deferred->held() == 1; }));
  EXPECT_FALSE((*decoded)->Next(absl::Milliseconds(50)).ok());  // nothing runs before the answer
  EXPECT_EQ(decode_.engine->counters().num_running + decode_.engine->counters().num_waiting, 0);
  EXPECT_EQ(decode_.deferred->Release(), 1u);
  auto out = (*decoded)->Collect(absl::Seconds(30));
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_TRUE(out->status.ok()) << out->status;
  std::vector<int32_t> tokens = first;
  tokens.insert(tokens.end(), out->token_ids.begin(), out->token_ids.end());
  auto parts = MakeTestEngine(fixture_.config, *fixture_.weights);
  ASSERT_TRUE(parts.ok()) << parts.status();
  auto mixed = testing::GenerateGreedy(*parts->executor, fixture_.config, {fixture_.prompts[0].ids},
                                       8, prefill_.engine->config());
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  EXPECT_EQ(tokens, (*mixed)[0].token_ids);
}

// Whatever ends while an answer is out gives its blocks back when the answer comes (TearDown
// checks every block): a request cancelled during its commit, and, with the engine stopped, a
// reservation still unanswered — whose caller hears kUnavailable.
TEST_F(DisaggregationTest, WhatEndsWhileAKvAnswerIsOutReturnsItsBlocks) {
  defer_kv_answers_ = true;
  Remake();
  const Request request = Greedy(fixture_.prompts[0].ids, 8);
  std::thread answerer([&] {
    // Answers the reservation at once.
    ASSERT_TRUE(Await([&] { return decode_.deferred->held() == 1; }));
    decode_.deferred->Release();
  });
  KvDestination d;
  std::vector<KvSegmentChecksum> sums;
  auto first = Prefill(request, &d, &sums);
  answerer.join();
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(handoff_);
  Request r = request;
  r.kv_import = Request::KvImport{d.token, first->token_ids[0], sums};
  auto decoded = decode_.engine->Submit(r);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_TRUE(Await([&] { return decode_.deferred->held() == 1; }));
  decode_.engine->Cancel((*decoded)->request_id());
  auto out = (*decoded)->Collect(absl::Seconds(30));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->status.code(), absl::StatusCode::kCancelled) << out->status;
  EXPECT_GT(decode_.engine->counters().kv_blocks_reserved, 0);  // until the answer
  const int64_t steps = decode_.engine->counters().steps;
  decode_.deferred->Release();
  ASSERT_TRUE(Await([&] { return decode_.engine->counters().kv_blocks_reserved == 0; }));
  // Released, not scheduled: the cancelled request never runs.
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(decode_.engine->counters().steps, steps);
  EXPECT_EQ(decode_.engine->counters().kv_blocks_in_use, 0);
  // A reservation unanswered when the engine stops.
  absl::StatusOr<KvDestination> pending = absl::UnknownError("not answered");
  std::thread reserver([&] { pending = decode_.engine->ReserveKv(request); });
  ASSERT_TRUE(Await([&] { return decode_.deferred->held() == 1; }));
  EXPECT_TRUE(decode_.engine->Shutdown(absl::ZeroDuration()).ok());
  reserver.join();
  EXPECT_EQ(pending.status().code(), absl::StatusCode::kUnavailable) << pending.status();
  EXPECT_EQ(decode_.engine->counters().kv_blocks_reserved, 0);
  EXPECT_EQ(decode_.port->counters().blocks_reserved, 0);
  // The answer, after the engine is gone, goes nowhere.
  decode_.engine.reset();
  EXPECT_EQ(decode_.deferred->Release(), 1u);
}

// Blocks held outside any sequence (a reservation here; an export on a prefill replica) can
// leave a waiting request nothing to run with no step in flight. The engine waits for them to
// come back, as it waits for a step's blocks, instead of failing.
TEST_F(DisaggregationTest, ARequestWaitsForBlocksAReservationHolds) {
  // Two reservations of 31 blocks of 4 tokens leave 2 of the 64.
  std::vector<uint64_t> tokens;
  for (int i = 0; i < 2; ++i) {
    Request big;
    for (int t = 0; t < 124; ++t) big.prompt.push_back(5 + (t * 7 + i) % 100);
    big.sampling.max_tokens = 1;
    auto d = decode_.engine->ReserveKv(big);
    ASSERT_TRUE(d.ok()) << d.status();
    tokens.push_back(d->token);
  }
  ASSERT_EQ(decode_.engine->counters().kv_blocks_reserved, 62);
  // A request that needs more than what is left waits for the reservations.
  std::vector<int32_t> prompt;
  for (int t = 0; t < 40; ++t) prompt.push_back(7 + t);
  Request small = Greedy(prompt, 8);
  auto stream = decode_.engine->Submit(small);
  ASSERT_TRUE(stream.ok()) << stream.status();
  absl::SleepFor(absl::Milliseconds(100));
  const EngineCounters waiting = decode_.engine->counters();
  EXPECT_EQ(waiting.num_waiting, 1);
  EXPECT_EQ(waiting.num_running, 0);
  EXPECT_EQ(waiting.requests_in_flight, 1);
  for (uint64_t token : tokens) decode_.engine->ReleaseKv(token);
  auto out = (*stream)->Collect(absl::Seconds(30));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->status.ok()) << out->status;
  EXPECT_EQ(out->token_ids.size(), 8u);
}

// The same on the prefill side: blocks held by a slow export.
TEST_F(DisaggregationTest, ARequestWaitsForBlocksAnExportHolds) {
  transfer_delay_ = absl::Milliseconds(200);
  Remake();
  // Two prompts of 31 blocks (of 4 tokens) leave 2 of the prefill replica's 64 while they send.
  std::vector<std::thread> handoffs;
  std::vector<absl::Status> status(2);
  for (int i = 0; i < 2; ++i) {
    handoffs.emplace_back([&, i] {
      Request big;
      for (int t = 0; t < 124; ++t) big.prompt.push_back(5 + (t * 7 + i) % 100);
      big.sampling.max_tokens = 4;
      big.sampling.ignore_eos = true;
      status[i] = Disaggregated(big).status();
    });
  }
  ASSERT_TRUE(Await([&] { return prefill_.engine->counters().kv_blocks_exporting == 62; }));
  // A request that needs more than what is left waits for the exports to end.
  std::vector<int32_t> prompt;
  for (int t = 0; t < 40; ++t) prompt.push_back(7 + t);
  auto stream = prefill_.engine->Submit(Greedy(prompt, 8));
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto out = (*stream)->Collect(absl::Seconds(30));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->status.ok()) << out->status;
  EXPECT_EQ(out->token_ids.size(), 8u);
  for (std::thread& t : handoffs) t.join();
  for (const absl::Status& s : status) EXPECT_TRUE(s.ok()) << s;
}

TEST_F(DisaggregationTest, BadKvRequestsAreRefusedAtSubmit) {
  Request r = Greedy(fixture_.prompts[0].ids, 8);
  r.kv_import = Request::KvImport{1, 5, {}};
  r.sampling.max_tokens = 1;
  auto s = decode_.engine->Submit(r);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("nothing to decode"));
  Request p = Greedy(fixture_.prompts[0].ids, 8);
  p.kv_destination = KvDestination{7, 0, std::vector<int32_t>(40, 1), {decode_.port->layout()}};
  s = prefill_.engine->Submit(p);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("destination blocks"));
}

}  // namespace
}  // namespace tessera::worker
