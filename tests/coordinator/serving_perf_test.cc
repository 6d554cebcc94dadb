// Benchmark (label perf, never asserted on time): what the coordinator adds per request, and the
// request rate one coordinator sustains, with a trivial model (the fake executor: steps cost
// nothing, so the numbers are the serving path's own). Three paths to the same replica:
//   direct      the internal gRPC Replica.Generate, as the coordinator calls it
//   frontend    Coordinator::Generate (routing, detokenization, metrics) over that gRPC
//   kserve      a KServe v2 ModelInfer from a C++ client through the coordinator's public API
// Sequential latency (mean per request) and throughput with 32 concurrent clients, 16 tokens per
// request. Results: docs/benchmarks.md.
#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/api/kserve_server.h"
#include "coordinator/coordinator.h"
#include "coordinator/rpc/grpc_replica_client.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "inference/grpc_service.grpc.pb.h"
#include "model/tokenizer.h"
#include "tests/worker/fake_executor.h"
#include "worker/engine.h"
#include "worker/rpc/replica_server.h"

namespace tessera::coordinator {
namespace {

constexpr int32_t kVocab = 512;
constexpr int kTokens = 16;

struct Rig {
  worker::ExecutorLimits limits;
  std::unique_ptr<worker::testing::FakeExecutor> executor;
  model::ModelConfig config;
  std::unique_ptr<worker::Engine> engine;
  std::unique_ptr<worker::rpc::ReplicaServer> replica_server;
  std::unique_ptr<ReplicaConnector> connector;
  std::unique_ptr<Coordinator> coordinator;
  std::unique_ptr<KServeServer> kserve;
  std::unique_ptr<ReplicaClient> direct;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub;
};

std::unique_ptr<model::Tokenizer> Tokenizer() {
  auto files = model::MakeByteLevelTokenizerFiles(kVocab);
  auto t = model::Tokenizer::FromJson(files->tokenizer_json, "tokenizer.json");
  return std::move(*t);
}

std::unique_ptr<Rig> MakeRig() {
  auto rig = std::make_unique<Rig>();
  rig->limits = {/*num_blocks=*/4096, /*block_size=*/16, /*max_blocks_per_seq=*/16,
                 /*max_num_tokens=*/2048, /*max_num_seqs=*/64};
  rig->executor = std::make_unique<worker::testing::FakeExecutor>(rig->limits, 250);
  rig->config.vocab_size = kVocab;
  rig->config.eos_token_ids = {kVocab - 1};
  worker::EngineOptions engine_options;
  engine_options.scheduler.max_model_len = 256;
  engine_options.scheduler.max_num_seqs = 64;
  engine_options.idle_wait = absl::Milliseconds(5);
  rig->engine = *worker::Engine::Create(*rig->executor, rig->config, engine_options);
  rig->replica_server = *worker::rpc::ReplicaServer::Create(*rig->engine, {});
  rig->connector = MakeGrpcReplicaConnector();
  CoordinatorOptions options;
  options.model = {"m", "/m", 256, kVocab};
  options.registry.lease = absl::Hours(1);  // no heartbeats here
  rig->coordinator = *Coordinator::Create(options, Tokenizer(), std::nullopt, *rig->connector);
  ReplicaInfo info;
  info.name = "r0";
  info.address = absl::StrCat("127.0.0.1:", rig->replica_server->port());
  info.model_name = "m";
  info.max_model_len = 256;
  info.vocab_size = kVocab;
  info.block_size = 16;
  info.kv_blocks_total = 4096;
  info.max_num_seqs = 64;
  EXPECT_TRUE(rig->coordinator->RegisterReplica(info).ok());
  rig->kserve = *KServeServer::Create(*rig->coordinator, {});
  rig->direct = *rig->connector->Connect(info);
  rig->stub = inference::GRPCInferenceService::NewStub(grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", rig->kserve->port()), grpc::InsecureChannelCredentials()));
  return rig;
}

model::SamplingParams Sampling() {
  model::SamplingParams s;
  s.max_tokens = kTokens;
  s.ignore_eos = true;
  return s;
}

bool Direct(Rig& rig, int i) {
  ReplicaRequest r;
  r.prompt = {1, 2, 3, 4 + i % 100};
  r.sampling = Sampling();
  auto call = rig.direct->Generate(r);
  if (!call.ok()) return false;
  while (true) {
    auto e = (*call)->Next(absl::Seconds(10));
    if (!e.ok()) return false;
    if (e->finished) return e->status.ok();
  }
}

bool ViaFrontend(Rig& rig, int i) {
  GenerateRequest r;
  r.prompt_token_ids = std::vector<int32_t>{1, 2, 3, 4 + i % 100};
  r.sampling = Sampling();
  auto stream = rig.coordinator->Generate(r);
  if (!stream.ok()) return false;
  while (true) {
    auto e = (*stream)->Next(absl::Seconds(10));
    if (!e.ok()) return false;
    if (e->finished) return e->status.ok();
  }
}

bool ViaKServe(Rig& rig, int i) {
  inference::ModelInferRequest request;
  request.set_model_name("m");
  auto* ids = request.add_inputs();
  ids->set_name("input_ids");
  ids->set_datatype("INT32");
  ids->add_shape(4);
  for (int32_t id : {1, 2, 3, 4 + i % 100}) ids->mutable_contents()->add_int_contents(id);
  auto* sp = request.add_inputs();
  sp->set_name("sampling_parameters");
  sp->set_datatype("BYTES");
  sp->add_shape(1);
  sp->mutable_contents()->add_bytes_contents(
      absl::StrCat(R"({"max_tokens": )", kTokens, R"(, "ignore_eos": true})"));
  inference::ModelInferResponse response;
  grpc::ClientContext context;
  return rig.stub->ModelInfer(&context, request, &response).ok();
}

struct Result {
  double mean_ms = 0;
  double requests_per_s = 0;
};

template <typename F>
Result Measure(Rig& rig, F call) {
  Result result;
  for (int i = 0; i < 20; ++i) EXPECT_TRUE(call(rig, i));  // warm up
  const int n = 200;
  absl::Time start = absl::Now();
  for (int i = 0; i < n; ++i) EXPECT_TRUE(call(rig, i));
  result.mean_ms = absl::ToDoubleMilliseconds(absl::Now() - start) / n;
  std::atomic<int> done{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  start = absl::Now();
  for (int c = 0; c < 32; ++c) {
    clients.emplace_back([&, c] {
      for (int i = c; !stop.load(); i += 32) {
        if (call(rig, i)) done++;
      }
    });
  }
  absl::SleepFor(absl::Seconds(3));
  stop = true;
  for (auto& t : clients) t.join();
  result.requests_per_s = done.load() / absl::ToDoubleSeconds(absl::Now() - start);
  return result;
}

TEST(ServingPerfTest, CoordinatorOverheadAndRequestRate) {
  std::unique_ptr<Rig> rig = MakeRig();
  const Result direct = Measure(*rig, Direct);
  const Result frontend = Measure(*rig, ViaFrontend);
  const Result kserve = Measure(*rig, ViaKServe);
  std::printf("\n%-10s %14s %16s %20s\n", "path", "mean ms/req", "x direct (lat)",
              "req/s (32 clients)");
  for (const auto& [name, r] : {std::pair{"direct", direct}, std::pair{"frontend", frontend},
                                std::pair{"kserve", kserve}}) {
    std::printf("%-10s %14.3f %16.2f %20.0f\n", name, r.mean_ms, r.mean_ms / direct.mean_ms,
                r.requests_per_s);
  }
  std::printf("coordinator overhead per request: %.3f ms (frontend), %.3f ms (KServe path)\n",
              frontend.mean_ms - direct.mean_ms, kserve.mean_ms - direct.mean_ms);
  rig->kserve->Shutdown(absl::Now() + absl::Seconds(1));
  rig->replica_server->Shutdown(absl::Now() + absl::Seconds(1));
}

}  // namespace
}  // namespace tessera::coordinator
