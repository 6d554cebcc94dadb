#include "worker/generator.h"

#include <algorithm>
#include <cmath>
#include <deque>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/ops.h"

namespace tessera::worker {

absl::string_view FinishReasonName(FinishReason reason) {
  return reason == FinishReason::kStop ? "stop" : "length";
}

struct Generator::Sequence {
  const GenerateRequest* request = nullptr;
  GenerateResult* result = nullptr;
  std::vector<int32_t> tokens;  // prompt, then generated
  int32_t num_computed = 0;     // tokens whose K/V are in the cache
  std::vector<int32_t> blocks;
  bool finished = false;
  // This step:
  int32_t step_tokens = 0;
  int32_t logits_row = -1;
};

// Per-sequence sampling parameters and outputs on the device, max_num_seqs wide.
struct Generator::SamplingBuffers {
  kernels::DeviceBuffer temperature, top_k, top_p, seeds, steps, ids, logprobs;
};

Generator::Generator(LlamaModel& model, KvCache& cache, kernels::Backend& backend,
                     const GeneratorOptions& options)
    : model_(model),
      cache_(cache),
      backend_(backend),
      options_(options),
      allocator_(cache.config().num_blocks) {}

Generator::~Generator() = default;

absl::StatusOr<std::unique_ptr<Generator>> Generator::Create(LlamaModel& model, KvCache& cache,
                                                             kernels::Backend& backend,
                                                             const GeneratorOptions& options) {
  const int32_t block_size = cache.config().block_size;
  const int32_t blocks_per_seq = (options.max_model_len + block_size - 1) / block_size;
  if (options.max_model_len <= 0 || options.max_num_seqs <= 0 ||
      options.max_num_batched_tokens <= 0) {
    return absl::InvalidArgumentError(
        "Generator: max_model_len, max_num_seqs and max_num_batched_tokens must be positive");
  }
  if (options.max_num_batched_tokens > model.options().max_num_tokens ||
      options.max_num_seqs > model.options().max_num_seqs ||
      blocks_per_seq > model.options().max_blocks_per_seq) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Generator: options exceed the model's workspace (tokens ", options.max_num_batched_tokens,
        " > ", model.options().max_num_tokens, ", seqs ", options.max_num_seqs, " > ",
        model.options().max_num_seqs, ", or blocks per sequence ", blocks_per_seq, " > ",
        model.options().max_blocks_per_seq, ")"));
  }
  auto generator = std::unique_ptr<Generator>(new Generator(model, cache, backend, options));
  TESSERA_ASSIGN_OR_RETURN(generator->stream_, backend.CreateStream());
  generator->sampling_ = std::make_unique<SamplingBuffers>();
  SamplingBuffers& s = *generator->sampling_;
  const size_t n = static_cast<size_t>(options.max_num_seqs);
  for (auto [buffer, bytes] : {std::pair{&s.temperature, 4 * n},
                               {&s.top_k, 4 * n},
                               {&s.top_p, 4 * n},
                               {&s.seeds, 8 * n},
                               {&s.steps, 8 * n},
                               {&s.ids, 4 * n},
                               {&s.logprobs, 4 * n}}) {
    TESSERA_ASSIGN_OR_RETURN(*buffer, backend.Allocate(bytes));
  }
  return generator;
}

absl::Status Generator::Validate(absl::Span<const GenerateRequest> requests) const {
  const int64_t vocab = model_.config().vocab_size;
  const int32_t block_size = cache_.config().block_size;
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerateRequest& r = requests[i];
    const SamplingOptions& s = r.sampling;
    auto error = [&](auto&&... parts) {
      return absl::InvalidArgumentError(absl::StrCat("request ", i, ": ", parts...));
    };
    if (r.prompt.empty()) return error("empty prompt");
    for (int32_t id : r.prompt) {
      if (id < 0 || id >= vocab) {
        return error("prompt token ", id, " outside the vocabulary [0, ", vocab, ")");
      }
    }
    if (s.max_tokens < 1) return error("max_tokens must be at least 1, got ", s.max_tokens);
    const int64_t budget = static_cast<int64_t>(r.prompt.size()) + s.max_tokens;
    if (budget > options_.max_model_len) {
      return error("prompt (", r.prompt.size(), " tokens) + max_tokens (", s.max_tokens,
                   ") exceeds max_model_len ", options_.max_model_len);
    }
    const int64_t blocks = (budget + block_size - 1) / block_size;
    if (blocks > allocator_.num_blocks()) {
      return error("needs ", blocks, " KV blocks but the cache has ", allocator_.num_blocks());
    }
    if (!(s.temperature >= 0.0f) || !std::isfinite(s.temperature)) {
      return error("temperature must be a finite number >= 0, got ", s.temperature);
    }
    if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) {
      return error("top_p must be in (0, 1], got ", s.top_p);
    }
    if (s.top_k < 0) return error("top_k must be >= 0 (0: no limit), got ", s.top_k);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<GenerateResult>> Generator::Generate(
    absl::Span<const GenerateRequest> requests) {
  TESSERA_RETURN_IF_ERROR(Validate(requests));
  stats_ = GeneratorStats{};
  std::vector<GenerateResult> results(requests.size());
  std::vector<Sequence> sequences(requests.size());
  std::deque<Sequence*> waiting;
  for (size_t i = 0; i < requests.size(); ++i) {
    sequences[i].request = &requests[i];
    sequences[i].result = &results[i];
    sequences[i].tokens = requests[i].prompt;
    waiting.push_back(&sequences[i]);
  }
  const int32_t block_size = cache_.config().block_size;
  std::vector<Sequence*> running;
  absl::Status status;
  while (status.ok() && (!waiting.empty() || !running.empty())) {
    // Admit in arrival order while the sequence limit and the cache allow.
    while (!waiting.empty() && static_cast<int32_t>(running.size()) < options_.max_num_seqs) {
      Sequence* seq = waiting.front();
      const int32_t budget =
          static_cast<int32_t>(seq->tokens.size()) + seq->request->sampling.max_tokens;
      auto blocks = allocator_.Allocate((budget + block_size - 1) / block_size);
      if (!blocks.ok()) break;  // wait for running sequences to finish
      seq->blocks = *std::move(blocks);
      running.push_back(seq);
      waiting.pop_front();
    }
    status = Step(running);
    // Retire finished sequences; their blocks go back to the allocator.
    for (Sequence* seq : running) {
      if (seq->finished) status.Update(allocator_.ReleaseAll(seq->blocks));
    }
    std::erase_if(running, [](const Sequence* s) { return s->finished; });
  }
  if (!status.ok()) {
    for (Sequence* seq : running) allocator_.ReleaseAll(seq->blocks).IgnoreError();
    return status;
  }
  return results;
}

absl::Status Generator::Step(std::vector<Sequence*>& running) {
  const int32_t block_size = cache_.config().block_size;
  const int32_t width = model_.options().max_blocks_per_seq;
  std::vector<int32_t> token_ids, positions, query_start{0}, seq_lens, block_tables, logits_rows;
  std::vector<int64_t> slots;
  std::vector<Sequence*> batch;
  std::vector<Sequence*> sampled;
  int32_t budget = options_.max_num_batched_tokens;
  for (Sequence* seq : running) {
    const int32_t pending = static_cast<int32_t>(seq->tokens.size()) - seq->num_computed;
    const int32_t n = std::min(pending, budget);
    seq->step_tokens = n;
    seq->logits_row = -1;
    if (n <= 0) continue;
    budget -= n;
    for (int32_t j = 0; j < n; ++j) {
      const int32_t pos = seq->num_computed + j;
      token_ids.push_back(seq->tokens[pos]);
      positions.push_back(pos);
      slots.push_back(static_cast<int64_t>(seq->blocks[pos / block_size]) * block_size +
                      pos % block_size);
    }
    query_start.push_back(static_cast<int32_t>(token_ids.size()));
    seq_lens.push_back(seq->num_computed + n);
    for (int32_t j = 0; j < width; ++j) {
      block_tables.push_back(j < static_cast<int32_t>(seq->blocks.size()) ? seq->blocks[j] : 0);
    }
    if (n == pending) {  // caught up: the last row's logits give the next token
      seq->logits_row = static_cast<int32_t>(logits_rows.size());
      logits_rows.push_back(static_cast<int32_t>(token_ids.size()) - 1);
      sampled.push_back(seq);
    }
    if (seq->result->tokens.empty()) {
      stats_.prefill_tokens += n;
    } else {
      stats_.decode_tokens += n;
    }
    batch.push_back(seq);
  }
  if (batch.empty()) return absl::InternalError("Generator: a step with no work");
  ++stats_.steps;

  ForwardInput input{token_ids, positions, slots, query_start, seq_lens, block_tables, logits_rows};
  TESSERA_ASSIGN_OR_RETURN(TensorView logits, model_.Forward(input, cache_, *stream_));
  for (Sequence* seq : batch) seq->num_computed += seq->step_tokens;
  if (sampled.empty()) return stream_->Synchronize();

  // Sample one token for every sequence that reached the end of its tokens.
  const int64_t n = static_cast<int64_t>(sampled.size());
  std::vector<float> temperature, top_p;
  std::vector<int32_t> top_k;
  std::vector<int64_t> seeds, steps;
  for (const Sequence* seq : sampled) {
    const SamplingOptions& s = seq->request->sampling;
    temperature.push_back(s.temperature);
    top_k.push_back(s.top_k);
    top_p.push_back(s.top_p);
    seeds.push_back(s.seed);
    steps.push_back(static_cast<int64_t>(seq->result->tokens.size()));
  }
  SamplingBuffers& b = *sampling_;
  auto upload = [&](const auto& v, kernels::DeviceBuffer& dst) {
    return backend_.CopyToDevice(v.data(), dst.data(), v.size() * sizeof(v[0]), *stream_);
  };
  TESSERA_RETURN_IF_ERROR(upload(temperature, b.temperature));
  TESSERA_RETURN_IF_ERROR(upload(top_k, b.top_k));
  TESSERA_RETURN_IF_ERROR(upload(top_p, b.top_p));
  TESSERA_RETURN_IF_ERROR(upload(seeds, b.seeds));
  TESSERA_RETURN_IF_ERROR(upload(steps, b.steps));
  kernels::SampleParams params;
  params.logits = logits;
  params.temperature = b.temperature.View(DataType::kF32, {n});
  params.top_k = b.top_k.View(DataType::kI32, {n});
  params.top_p = b.top_p.View(DataType::kF32, {n});
  params.seeds = b.seeds.View(DataType::kI64, {n});
  params.steps = b.steps.View(DataType::kI64, {n});
  params.output_ids = b.ids.View(DataType::kI32, {n});
  params.output_logprobs = b.logprobs.View(DataType::kF32, {n});
  TESSERA_RETURN_IF_ERROR(kernels::Sample(backend_, params, *stream_));
  std::vector<int32_t> ids(n);
  std::vector<float> logprobs(n);
  TESSERA_RETURN_IF_ERROR(backend_.CopyToHost(b.ids.data(), ids.data(), n * 4, *stream_));
  TESSERA_RETURN_IF_ERROR(backend_.CopyToHost(b.logprobs.data(), logprobs.data(), n * 4, *stream_));
  TESSERA_RETURN_IF_ERROR(stream_->Synchronize());

  const std::vector<int64_t>& eos = model_.config().eos_token_ids;
  for (int64_t i = 0; i < n; ++i) {
    Sequence* seq = sampled[i];
    const SamplingOptions& s = seq->request->sampling;
    const int32_t token = ids[i];
    seq->tokens.push_back(token);
    seq->result->tokens.push_back(token);
    seq->result->logprobs.push_back(logprobs[i]);
    const bool is_eos = !s.ignore_eos && std::find(eos.begin(), eos.end(), token) != eos.end();
    const bool is_stop = std::find(s.stop_token_ids.begin(), s.stop_token_ids.end(), token) !=
                         s.stop_token_ids.end();
    if (is_eos || is_stop) {
      seq->finished = true;
      seq->result->finish_reason = FinishReason::kStop;
    } else if (static_cast<int32_t>(seq->result->tokens.size()) >= s.max_tokens) {
      seq->finished = true;
      seq->result->finish_reason = FinishReason::kLength;
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera::worker
