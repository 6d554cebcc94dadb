#include "tests/worker/test_util.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "tests/kernels/test_backends.h"
#include "tests/source_dir.h"

namespace tessera::worker::testing {

absl::StatusOr<Fixture> LoadFixture(const std::string& name) {
  Fixture f;
  f.dir = absl::StrCat(tessera::testing::SourceDir(), "/tests/reference/fixtures/", name);
  TESSERA_ASSIGN_OR_RETURN(f.config, model::LoadModelConfig(f.dir));
  TESSERA_ASSIGN_OR_RETURN(f.weights, model::SafetensorsCheckpoint::Open(f.dir));
  TESSERA_ASSIGN_OR_RETURN(auto reference,
                           model::SafetensorsFile::Open(f.dir + "/reference.safetensors"));
  for (int i = 0;; ++i) {
    const std::string p = absl::StrCat("prompt", i, ".");
    auto ids = reference->Get(p + "ids");
    if (!ids.ok()) break;
    TESSERA_ASSIGN_OR_RETURN(TensorView logits, reference->Get(p + "logits"));
    TESSERA_ASSIGN_OR_RETURN(TensorView greedy, reference->Get(p + "greedy"));
    ReferencePrompt prompt;
    for (int64_t j = 0; j < ids->numel(); ++j) prompt.ids.push_back(ids->data_as<int64_t>()[j]);
    for (int64_t j = 0; j < greedy.numel(); ++j) {
      prompt.greedy.push_back(greedy.data_as<int64_t>()[j]);
    }
    prompt.logits.assign(logits.data_as<float>(), logits.data_as<float>() + logits.numel());
    f.prompts.push_back(std::move(prompt));
  }
  if (f.prompts.empty()) {
    return absl::NotFoundError(absl::StrCat(f.dir, "/reference.safetensors has no prompts"));
  }
  return f;
}

model::ModelConfig BenchModelConfig(int layers, int kv_heads) {
  model::ModelConfig c;
  c.vocab_size = 4096;
  c.hidden_size = 512;
  c.intermediate_size = 1536;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 8;
  c.num_key_value_heads = kv_heads;
  c.head_dim = 64;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-5;
  c.eos_token_ids = {2};
  return c;
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

absl::StatusOr<TestEngine> MakeTestEngine(const model::ModelConfig& config,
                                          const model::WeightSource& weights,
                                          const TestEngineOptions& options) {
  TestEngine e;
  TESSERA_ASSIGN_OR_RETURN(e.backend, kernels::testing::MakeBackend(options.backend));
  LlamaModelOptions model_options;
  model_options.max_num_tokens = options.max_num_batched_tokens;
  model_options.max_num_seqs = options.max_num_seqs;
  model_options.max_blocks_per_seq =
      (options.max_model_len + options.block_size - 1) / options.block_size;
  model_options.graph_batch_sizes = options.graph_batch_sizes;
  model_options.activation_dtype = options.activation_dtype;
  TESSERA_ASSIGN_OR_RETURN(e.model, LlamaModel::Create(config, weights, *e.backend, model_options));
  KvCacheConfig cache;
  cache.num_layers = static_cast<int32_t>(config.num_hidden_layers);
  cache.num_blocks = options.num_blocks;
  cache.block_size = options.block_size;
  cache.kv_heads = static_cast<int32_t>(config.num_key_value_heads);
  cache.head_dim = static_cast<int32_t>(config.head_dim);
  cache.dtype = options.kv_dtype;
  TESSERA_ASSIGN_OR_RETURN(e.cache, KvCache::Create(cache, *e.backend));
  TESSERA_ASSIGN_OR_RETURN(e.executor, LocalExecutor::Create(*e.model, *e.cache, *e.backend));
  return e;
}

absl::StatusOr<std::vector<RequestOutput>> GenerateGreedy(
    StepExecutor& executor, const model::ModelConfig& config,
    const std::vector<std::vector<int32_t>>& prompts, int32_t max_tokens,
    const SchedulerConfig& scheduler) {
  EngineOptions options;
  options.scheduler = scheduler;
  TESSERA_ASSIGN_OR_RETURN(auto engine, Engine::Create(executor, config, options));
  std::vector<Request> requests;
  for (const auto& prompt : prompts) {
    Request r;
    r.prompt = prompt;
    r.sampling.max_tokens = max_tokens;
    r.sampling.ignore_eos = true;
    requests.push_back(std::move(r));
  }
  TESSERA_ASSIGN_OR_RETURN(std::vector<RequestOutput> outputs,
                           GenerateAll(*engine, requests, absl::Seconds(120)));
  TESSERA_RETURN_IF_ERROR(engine->Shutdown(absl::Seconds(10)));
  for (const RequestOutput& out : outputs) TESSERA_RETURN_IF_ERROR(out.status);
  return outputs;
}

absl::StatusOr<PrefillHandoff> PrefillForDecode(Engine& prefill, Engine& decode,
                                                const Request& request) {
  PrefillHandoff out;
  absl::StatusOr<KvDestination> d = decode.ReserveKv(request);
  if (!d.ok()) return d.status();
  out.destination = *d;
  Request p = request;
  p.kv_destination = *d;
  auto stream = prefill.Submit(p);
  if (!stream.ok()) return stream.status();
  // The events by hand, for the handoff flag and the checksums.
  while (true) {
    absl::StatusOr<TokenEvent> e = (*stream)->Next(absl::Seconds(30));
    if (!e.ok()) return e.status();
    if (e->token_id >= 0) out.output.token_ids.push_back(e->token_id);
    if (e->finish_reason.has_value()) {
      out.output.finish_reason = *e->finish_reason;
      out.output.status = e->status;
      out.handoff = e->kv_handoff;
      out.checksums = e->kv_checksums;
      return out;
    }
  }
}

absl::StatusOr<std::vector<int32_t>> GenerateDisaggregated(Engine& prefill, Engine& decode,
                                                           const Request& request) {
  absl::StatusOr<PrefillHandoff> first = PrefillForDecode(prefill, decode, request);
  if (!first.ok()) return first.status();
  if (!first->output.status.ok()) return first->output.status;
  if (!first->handoff) return absl::InternalError("the prefill replica did not hand over");
  Request r = request;
  r.kv_import =
      Request::KvImport{first->destination.token, first->output.token_ids.at(0), first->checksums};
  auto stream = decode.Submit(r);
  if (!stream.ok()) return stream.status();
  absl::StatusOr<RequestOutput> rest = (*stream)->Collect(absl::Seconds(60));
  if (!rest.ok()) return rest.status();
  if (!rest->status.ok()) return rest->status;
  std::vector<int32_t> tokens = first->output.token_ids;
  tokens.insert(tokens.end(), rest->token_ids.begin(), rest->token_ids.end());
  return tokens;
}

}  // namespace tessera::worker::testing
