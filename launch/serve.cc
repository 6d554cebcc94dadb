// `tessera serve [MODEL_DIR]`: the embedded default — a coordinator and N replica workers as
// local processes on this machine (CPU backend when there is no GPU), the built-in demo model
// when no directory is given. Prints every command it runs, waits until the cluster is ready,
// prints how to send a request, and on Ctrl-C (SIGINT) or SIGTERM drains the coordinator, then
// stops the workers. When a child dies on its own, says which and how, stops the rest, exits 1.
// It is `tessera launch` (launch/cluster.h) on a topology made from its flags.
#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/status_macros.h"
#include "launch/cluster.h"
#include "launch/commands.h"
#include "launch/topology.h"

namespace tessera::launch {
namespace {

struct ServeFlags {
  std::string api_key;  // --api-key, or $TESSERA_API_KEY
  std::string model;    // empty: the built-in demo model
  std::string served_model_name;
  std::string host = "127.0.0.1";
  int port = 8000;
  int grpc_port = 8001;
  int num_replicas = -1;  // mixed replicas; default 1, or 0 when the pools are given
  int num_prefill = 0;
  int num_decode = 0;
  std::string kv_transport = "grpc";
  int tensor_parallel_size = 1;
  int pipeline_parallel_size = 1;
  // Per pool (0: --tensor-parallel-size / --pipeline-parallel-size): P and D may differ.
  int prefill_tp = 0;
  int prefill_pp = 0;
  int decode_tp = 0;
  int decode_pp = 0;
  int32_t max_model_len = 0;
  int32_t max_num_seqs = 64;
  int32_t block_size = 16;
  double kv_cache_gib = 1.0;
  int32_t threads = 0;
  std::string dtype = "auto";
  std::string scheduling_policy = "fcfs";
  int64_t max_queued_requests = 256;
  double drain_timeout_s = 30.0;
  std::string tool_call_parser = "auto";
  std::string reasoning_parser = "auto";
  double ready_timeout_s = 300.0;
  std::string work_dir;  // port files and the demo model; default: a fresh temp dir
};

// The topology `tessera serve`'s flags describe: the coordinator on loopback, pools of mixed,
// prefill and decode replicas, every replica a process with its ranks as threads.
absl::StatusOr<Topology> ServeTopology(const ServeFlags& flags) {
  Topology t;
  t.model = flags.model.empty() ? "demo" : flags.model;
  t.served_model_name = flags.served_model_name;
  t.kv_transport = flags.kv_transport;
  t.coordinator.host = "127.0.0.1";
  t.coordinator.bind_host = flags.host;
  t.coordinator.http_port = flags.port;
  t.coordinator.grpc_port = flags.grpc_port;
  t.coordinator.internal_port = 0;
  t.coordinator.max_queued_requests = flags.max_queued_requests;
  t.coordinator.drain_timeout_s = flags.drain_timeout_s;
  t.coordinator.tool_call_parser = flags.tool_call_parser;
  t.coordinator.reasoning_parser = flags.reasoning_parser;
  const int num_mixed = flags.num_replicas >= 0
                            ? flags.num_replicas
                            : (flags.num_prefill + flags.num_decode > 0 ? 0 : 1);
  if ((flags.num_prefill > 0) != (flags.num_decode > 0)) {
    return absl::InvalidArgumentError(
        "--num-prefill and --num-decode go together: disaggregated serving needs both pools");
  }
  if (num_mixed + flags.num_prefill + flags.num_decode == 0) {
    return absl::InvalidArgumentError("no replicas: set --num-replicas or the pools");
  }
  EngineFlags engine;
  engine.dtype = flags.dtype;
  engine.block_size = flags.block_size;
  engine.max_model_len = flags.max_model_len;
  engine.max_num_seqs = flags.max_num_seqs;
  engine.kv_cache_gib = flags.kv_cache_gib;
  engine.threads = flags.threads;
  engine.scheduling_policy = flags.scheduling_policy;
  const auto either = [](int pool, int all) { return pool > 0 ? pool : all; };
  const struct {
    const char* name;  // replicas are NAME-0, NAME-1, ...
    const char* role;
    int count;
    int tp;
    int pp;
  } pools[] = {
      {"replica", "mixed", num_mixed, flags.tensor_parallel_size, flags.pipeline_parallel_size},
      {"prefill", "prefill", flags.num_prefill,
       either(flags.prefill_tp, flags.tensor_parallel_size),
       either(flags.prefill_pp, flags.pipeline_parallel_size)},
      {"decode", "decode", flags.num_decode, either(flags.decode_tp, flags.tensor_parallel_size),
       either(flags.decode_pp, flags.pipeline_parallel_size)}};
  for (const auto& pool : pools) {
    if (pool.count == 0) continue;
    TopologyPool p;
    p.name = pool.name;
    p.role = pool.role;
    p.replicas = pool.count;
    p.tensor_parallel_size = pool.tp;
    p.pipeline_parallel_size = pool.pp;
    p.engine = engine;
    t.pools.push_back(std::move(p));
  }
  return t;
}

absl::Status Serve(const ServeFlags& flags) {
  TESSERA_ASSIGN_OR_RETURN(const Topology topology, ServeTopology(flags));
  ClusterOptions options;
  options.label = "tessera serve";
  options.work_dir = flags.work_dir;
  options.ready_timeout_s = flags.ready_timeout_s;
  options.api_key = flags.api_key;
  return RunCluster(topology, options);
}

}  // namespace

Command RegisterServe(CLI::App& app) {
  auto flags = std::make_shared<ServeFlags>();
  CLI::App* sub = app.add_subcommand(
      "serve", "Run a coordinator and replica workers on this machine (the demo model by default)");
  sub->add_option("model", flags->model, "Model directory (default: the built-in demo model)");
  sub->add_option("--served-model-name", flags->served_model_name,
                  "The model's name in the APIs (default: the directory, or tessera-demo)");
  sub->add_option("--host", flags->host, "Address the public APIs bind to")->capture_default_str();
  sub->add_option("--port", flags->port, "OpenAI HTTP port")->capture_default_str();
  sub->add_option("--grpc-port", flags->grpc_port, "KServe v2 gRPC port")->capture_default_str();
  sub->add_option("--num-replicas", flags->num_replicas,
                  "Mixed replica workers (default 1, or 0 with --num-prefill/--num-decode)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--num-prefill", flags->num_prefill,
                  "Prefill replicas (disaggregated serving, with --num-decode)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--num-decode", flags->num_decode,
                  "Decode replicas (disaggregated serving, with --num-prefill)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--kv-transport", flags->kv_transport,
                  "KV transport between prefill and decode replicas: grpc or ucx")
      ->capture_default_str()
      ->check(CLI::IsMember({"grpc", "ucx"}));
  sub->add_option("--tensor-parallel-size", flags->tensor_parallel_size,
                  "TP ranks per replica (threads of the worker)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--pipeline-parallel-size", flags->pipeline_parallel_size,
                  "PP stages per replica (threads of the worker)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--prefill-tp", flags->prefill_tp, "TP ranks per prefill replica (0: -tp)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--prefill-pp", flags->prefill_pp, "PP stages per prefill replica (0: -pp)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--decode-tp", flags->decode_tp, "TP ranks per decode replica (0: -tp)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--decode-pp", flags->decode_pp, "PP stages per decode replica (0: -pp)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--max-model-len", flags->max_model_len, "Context length (0: the model's)");
  sub->add_option("--max-num-seqs", flags->max_num_seqs, "Sequences per step, per replica")
      ->capture_default_str();
  sub->add_option("--block-size", flags->block_size, "KV block size in tokens")
      ->capture_default_str();
  sub->add_option("--kv-cache-gib", flags->kv_cache_gib, "KV cache per rank, GiB")
      ->capture_default_str();
  sub->add_option("--threads", flags->threads, "CPU threads per worker rank (0: all cores)");
  sub->add_option("--dtype", flags->dtype, "Weights: auto, float32, bfloat16, float16")
      ->capture_default_str();
  sub->add_option("--scheduling-policy", flags->scheduling_policy,
                  "fcfs, or priority: requests' priority (lower first), then arrival (vLLM's)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fcfs", "priority"}));
  sub->add_option("--max-queued-requests", flags->max_queued_requests,
                  "Requests admitted beyond the replicas' capacity; more get 429")
      ->capture_default_str();
  sub->add_option("--tool-call-parser", flags->tool_call_parser,
                  "How tool_choice \"auto\" reads tool calls: hermes, llama3_json, mistral; auto: "
                  "the chat template's; none: \"auto\" is refused")
      ->capture_default_str();
  sub->add_option("--reasoning-parser", flags->reasoning_parser,
                  "How chat responses split a thinking model's reasoning from its answer: qwen3, "
                  "deepseek_r1; auto: the chat template's; none: all content")
      ->capture_default_str();
  sub->add_option("--drain-timeout", flags->drain_timeout_s,
                  "Seconds requests in flight get to finish at shutdown")
      ->capture_default_str();
  sub->add_option("--ready-timeout", flags->ready_timeout_s,
                  "Seconds to wait for the first replica")
      ->capture_default_str();
  sub->add_option("--work-dir", flags->work_dir,
                  "Where the demo model and port files go (default: a fresh temp dir)");
  sub->add_option("--api-key", flags->api_key,
                  "Require this key (\"Authorization: Bearer KEY\") on every API call but health, "
                  "metrics and version (default: $TESSERA_API_KEY, as vLLM's VLLM_API_KEY)");
  return ExitCodeOf("serve", [flags] { return Serve(*flags); });
}

}  // namespace tessera::launch
