// Benchmark (label perf; prints, never asserts on time): what disaggregation adds to the time to
// first token. For each KV transport and prompt length, a prefill engine and a decode engine (real
// model, random weights) run:
//   mixed TTFT     prefill alone (the prefill engine, no KV destination);
//   handoff TTFT   ReserveKv on D + prefill on P that sends the KV, until the handoff event;
//   waiting        handoff TTFT - mixed TTFT: what the request waits on the KV beyond computing;
//   commit         D's Submit with kv_import until its first decode token (verify + one step).
// Each with the KV sent after the prefill step (streaming off) and layer by layer as the step
// writes it (streaming on, EngineOptions::kv_stream_layers). Medians of 3 runs.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kvtransfer/grpc/grpc_transport.h"
#include "kvtransfer/inproc/in_process_transport.h"
#include "model/weights.h"
#include "tests/worker/test_util.h"
#include "worker/engine.h"
#include "worker/kv_port.h"
#if TESSERA_HAVE_UCX
#include "kvtransfer/ucx/ucx_transport.h"
#endif

namespace tessera::worker {
namespace {

using SteadyClock = std::chrono::steady_clock;

double Since(SteadyClock::time_point start) { return testing::SecondsSince(start); }
model::ModelConfig BenchConfig() { return testing::BenchModelConfig(/*layers=*/8, /*kv_heads=*/8); }

struct Side {
  testing::TestEngine parts;
  std::unique_ptr<kvtransfer::Transport> transport;
  std::unique_ptr<KvPort> port;
  std::unique_ptr<Engine> engine;
};

using TransportMaker =
    std::function<absl::StatusOr<std::unique_ptr<kvtransfer::Transport>>(const std::string&)>;

void MakeSide(const model::WeightSource& weights, const TransportMaker& make, const char* name,
              Side& side, bool stream_layers = false) {
  testing::TestEngineOptions options;
  options.block_size = 16;
  options.num_blocks = 160;
  options.max_model_len = 2048;
  options.max_num_seqs = 4;
  options.max_num_batched_tokens = 2048;
  auto parts = testing::MakeTestEngine(BenchConfig(), weights, options);
  ASSERT_TRUE(parts.ok()) << parts.status();
  side.parts = *std::move(parts);
  auto transport = make(name);
  ASSERT_TRUE(transport.ok()) << transport.status();
  side.transport = *std::move(transport);
  auto port = KvPort::Create(*side.parts.cache, *side.transport);
  ASSERT_TRUE(port.ok()) << port.status();
  side.port = *std::move(port);
  EngineOptions e;
  e.scheduler.max_model_len = 2048;
  e.scheduler.max_num_seqs = 4;
  e.scheduler.max_num_batched_tokens = 2048;
  e.scheduler.enable_prefix_caching = false;  // every run computes and sends the whole prompt
  e.kv_port = side.port.get();
  e.kv_stream_layers = stream_layers;
  auto engine = Engine::Create(*side.parts.executor, BenchConfig(), e);
  ASSERT_TRUE(engine.ok()) << engine.status();
  side.engine = *std::move(engine);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

TEST(DisaggregationPerf, KvTransferShareOfTimeToFirstToken) {
  std::unique_ptr<model::WeightSource> weights =
      model::MakeRandomWeights(BenchConfig(), DataType::kF32, /*seed=*/1);
  auto fabric = kvtransfer::InProcessFabric::Create();
  std::vector<std::pair<std::string, TransportMaker>> transports = {
    {"inproc",
     [&](const std::string& name) -> absl::StatusOr<std::unique_ptr<kvtransfer::Transport>> {
       kvtransfer::TransportOptions o;
       o.name = name;
       auto t = kvtransfer::InProcessTransport::Create(fabric, o);
       if (!t.ok()) return t.status();
       return std::unique_ptr<kvtransfer::Transport>(*std::move(t));
     }},
    {"grpc",
     [](const std::string& name) -> absl::StatusOr<std::unique_ptr<kvtransfer::Transport>> {
       kvtransfer::TransportOptions o;
       o.name = name;
       auto t = kvtransfer::GrpcTransport::Create(o);
       if (!t.ok()) return t.status();
       return std::unique_ptr<kvtransfer::Transport>(*std::move(t));
     }},
#if TESSERA_HAVE_UCX
    {"ucx",
     [](const std::string& name) -> absl::StatusOr<std::unique_ptr<kvtransfer::Transport>> {
       kvtransfer::UcxTransportOptions o;
       o.base.name = name;
       auto t = kvtransfer::UcxTransport::Create(o);
       if (!t.ok()) return t.status();
       return std::unique_ptr<kvtransfer::Transport>(*std::move(t));
     }},
#endif
  };
  std::printf(
      "model: hidden 512, 8 layers, 8 KV heads x 64, f32 KV = %d KiB per token; CPU backend\n\n"
      "| transport | streaming | prompt | KV sent | mixed TTFT ms | handoff TTFT ms | waiting ms | "
      "waiting share of TTFT | D commit + first step ms |\n"
      "|---|---|---|---|---|---|---|---|---|\n",
      2 * 8 * 8 * 64 * 4 / 1024);
  std::mt19937 rng(7);
  for (const auto& [kind, make] : transports) {
    for (const bool stream : {false, true}) {
      Side p, d;
      MakeSide(*weights, make, "prefill", p, stream);
      MakeSide(*weights, make, "decode", d);
      for (int len : {128, 512, 1024}) {
        std::vector<double> mixed, handoff, commit;
        int64_t bytes = 0;
        for (int run = 0; run < 3; ++run) {
          Request r;
          for (int i = 0; i < len; ++i) r.prompt.push_back(3 + static_cast<int32_t>(rng() % 4000));
          r.sampling.max_tokens = 2;
          r.sampling.ignore_eos = true;
          // Mixed: prefill only.
          Request alone = r;
          alone.sampling.max_tokens = 1;
          auto t0 = SteadyClock::now();
          auto s0 = p.engine->Submit(alone);
          ASSERT_TRUE(s0.ok());
          ASSERT_TRUE((*s0)->Collect(absl::Seconds(120)).ok());
          mixed.push_back(Since(t0));
          // Disaggregated: reserve, prefill and send.
          const int64_t sent_before = p.port->counters().bytes_sent;
          auto t1 = SteadyClock::now();
          auto dest = d.engine->ReserveKv(r);
          ASSERT_TRUE(dest.ok()) << dest.status();
          Request to_p = r;
          to_p.kv_destination = *dest;
          auto s1 = p.engine->Submit(to_p);
          ASSERT_TRUE(s1.ok());
          absl::StatusOr<TokenEvent> last;
          do {
            last = (*s1)->Next(absl::Seconds(120));
            ASSERT_TRUE(last.ok()) << last.status();
          } while (!last->finish_reason.has_value());
          handoff.push_back(Since(t1));
          ASSERT_TRUE(last->kv_handoff) << last->status;
          bytes = p.port->counters().bytes_sent - sent_before;
          // D: verify, commit and take the first decode step.
          Request to_d = r;
          to_d.kv_import = Request::KvImport{dest->token, last->token_id, last->kv_checksums};
          auto t2 = SteadyClock::now();
          auto s2 = d.engine->Submit(to_d);
          ASSERT_TRUE(s2.ok());
          auto out = (*s2)->Collect(absl::Seconds(120));
          ASSERT_TRUE(out.ok() && out->status.ok()) << (out.ok() ? out->status : out.status());
          commit.push_back(Since(t2));
        }
        const double m = Median(mixed), h = Median(handoff), c = Median(commit);
        const double wait = std::max(0.0, h - m);
        std::printf("| %s | %s | %d | %.1f MiB | %.1f | %.1f | %.1f | %.0f%% | %.1f |\n",
                    kind.c_str(), stream ? "on" : "off", len,
                    static_cast<double>(bytes) / (1 << 20), m * 1e3, h * 1e3, wait * 1e3,
                    100.0 * wait / h, c * 1e3);
      }
      p.engine.reset();
      d.engine.reset();
      p.port.reset();
      d.port.reset();
    }
  }
}

}  // namespace
}  // namespace tessera::worker
