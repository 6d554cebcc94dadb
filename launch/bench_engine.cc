// `tessera bench-engine`: prefill and decode throughput of one in-process replica on a model shape
// with random weights, with decode's weight bytes/s as a ratio of this machine's memory bandwidth
// measured in the same run (a large memcpy). A benchmark: it reports, it never asserts.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "launch/commands.h"
#include "launch/engine_setup.h"
#include "launch/model_flags.h"
#include "model/weights.h"

namespace tessera::launch {
namespace {

struct BenchFlags {
  ModelShapeFlags shape;
  EngineFlags engine;
  std::string weight_dtype = "bfloat16";
  std::vector<int32_t> batch_sizes = {1, 8};
  int32_t prompt_len = 128;
  int32_t decode_steps = 8;
  double copy_gib = 1.0;
};

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Memory bandwidth as STREAM's copy counts it: (bytes read + bytes written) / second, the best
// of five memcpy runs over buffers far larger than the caches.
double MeasureCopyBandwidth(double gib) {
  const size_t bytes = static_cast<size_t>(gib * (1 << 30));
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    const auto start = std::chrono::steady_clock::now();
    std::memcpy(dst.data(), src.data(), bytes);
    best = std::max(best, 2.0 * static_cast<double>(bytes) / Seconds(start));
    src[i] = dst[bytes - 1 - i];  // keep the copies observable
  }
  return best;
}

absl::Status Bench(BenchFlags flags) {
  TESSERA_ASSIGN_OR_RETURN(model::ModelConfig config, ModelConfigFromFlags(flags.shape));
  TESSERA_ASSIGN_OR_RETURN(DataType dtype, DataTypeFromName(flags.weight_dtype));
  int32_t max_batch = 1;
  for (int32_t b : flags.batch_sizes) max_batch = std::max(max_batch, b);
  const int32_t seq_len = flags.prompt_len + flags.decode_steps;
  flags.engine.max_num_seqs = std::max(flags.engine.max_num_seqs, max_batch);
  flags.engine.max_num_batched_tokens =
      std::max(flags.engine.max_num_batched_tokens, flags.prompt_len);
  flags.engine.max_model_len = seq_len;
  flags.engine.num_kv_blocks =
      max_batch * ((seq_len + flags.engine.block_size - 1) / flags.engine.block_size);

  std::printf("memory bandwidth (memcpy, read+write): ");
  std::fflush(stdout);
  const double copy_bw = MeasureCopyBandwidth(flags.copy_gib);
  std::printf("%.2f GB/s\n", copy_bw / 1e9);

  std::printf("making random weights (%s, %s)...\n", flags.shape.preset.c_str(),
              std::string(DataTypeName(dtype)).c_str());
  std::fflush(stdout);
  auto weights = model::MakeRandomWeights(config, dtype, /*seed=*/1);
  TESSERA_ASSIGN_OR_RETURN(Engine engine, BuildEngine(config, *weights, flags.engine));
  weights.reset();
  const double weight_bytes = static_cast<double>(engine.model->weight_bytes());
  std::printf("model: %lld layers, hidden %lld, vocab %lld, weights %.2f GB\n",
              static_cast<long long>(config.num_hidden_layers),
              static_cast<long long>(config.hidden_size), static_cast<long long>(config.vocab_size),
              weight_bytes / 1e9);
  std::printf("%6s %8s %14s %14s %14s %10s\n", "batch", "prompt", "prefill tok/s", "decode tok/s",
              "decode GB/s", "vs memcpy");

  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Stream> stream, engine.backend->CreateStream());
  const int32_t block_size = flags.engine.block_size;
  const int32_t width = engine.model->options().max_blocks_per_seq;
  const size_t kv_bytes_per_token =
      engine.cache->config().BytesPerBlock() / static_cast<size_t>(block_size);
  for (int32_t batch : flags.batch_sizes) {
    // Sequence s uses blocks [s * width, (s + 1) * width).
    auto block_of = [&](int32_t s, int32_t pos) { return s * width + pos / block_size; };
    std::vector<int32_t> block_tables;
    for (int32_t s = 0; s < batch; ++s) {
      for (int32_t j = 0; j < width; ++j) block_tables.push_back(s * width + j);
    }
    // Prefill: one sequence per step (chunks of the whole prompt), as a server would see arrivals.
    double prefill_seconds = 0;
    for (int32_t s = 0; s < batch; ++s) {
      std::vector<int32_t> ids, positions;
      std::vector<int64_t> slots;
      for (int32_t p = 0; p < flags.prompt_len; ++p) {
        ids.push_back((s * 7919 + p * 104729) % static_cast<int32_t>(config.vocab_size));
        positions.push_back(p);
        slots.push_back(static_cast<int64_t>(block_of(s, p)) * block_size + p % block_size);
      }
      const std::vector<int32_t> query_start = {0, flags.prompt_len};
      const std::vector<int32_t> seq_lens = {flags.prompt_len};
      const std::vector<int32_t> table(block_tables.begin() + s * width,
                                       block_tables.begin() + (s + 1) * width);
      const std::vector<int32_t> rows = {flags.prompt_len - 1};
      const auto start = std::chrono::steady_clock::now();
      TESSERA_RETURN_IF_ERROR(
          engine.model
              ->Forward({ids, positions, slots, query_start, seq_lens, table, rows}, *engine.cache,
                        *stream)
              .status());
      TESSERA_RETURN_IF_ERROR(stream->Synchronize());
      prefill_seconds += Seconds(start);
    }
    // Decode: every sequence adds one token per step.
    double decode_seconds = 0;
    double kv_read = 0;
    for (int32_t step = 0; step < flags.decode_steps; ++step) {
      const int32_t pos = flags.prompt_len + step;
      std::vector<int32_t> ids, positions, query_start{0}, seq_lens, rows;
      std::vector<int64_t> slots;
      for (int32_t s = 0; s < batch; ++s) {
        ids.push_back((s + step) % static_cast<int32_t>(config.vocab_size));
        positions.push_back(pos);
        slots.push_back(static_cast<int64_t>(block_of(s, pos)) * block_size + pos % block_size);
        query_start.push_back(s + 1);
        seq_lens.push_back(pos + 1);
        rows.push_back(s);
      }
      const auto start = std::chrono::steady_clock::now();
      TESSERA_RETURN_IF_ERROR(
          engine.model
              ->Forward({ids, positions, slots, query_start, seq_lens,
                         absl::MakeConstSpan(block_tables).subspan(0, batch * width), rows},
                        *engine.cache, *stream)
              .status());
      TESSERA_RETURN_IF_ERROR(stream->Synchronize());
      decode_seconds += Seconds(start);
      kv_read += static_cast<double>(batch) * (pos + 1) * static_cast<double>(kv_bytes_per_token);
    }
    const double prefill_tps = batch * static_cast<double>(flags.prompt_len) / prefill_seconds;
    const double decode_tps = batch * static_cast<double>(flags.decode_steps) / decode_seconds;
    const double decode_bytes = (weight_bytes * flags.decode_steps + kv_read) / decode_seconds;
    std::printf("%6d %8d %14.1f %14.2f %14.2f %9.1f%%\n", batch, flags.prompt_len, prefill_tps,
                decode_tps, decode_bytes / 1e9, 100.0 * decode_bytes / copy_bw);
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

}  // namespace

Command RegisterBenchEngine(CLI::App& app) {
  auto flags = std::make_shared<BenchFlags>();
  CLI::App* sub = app.add_subcommand(
      "bench-engine",
      "Prefill and decode tokens/s of one in-process replica on random weights, with decode "
      "bytes/s against this machine's memcpy bandwidth");
  AddModelShapeFlags(*sub, flags->shape);
  AddEngineFlags(*sub, flags->engine);
  sub->add_option("--weight-dtype", flags->weight_dtype, "float32, bfloat16 or float16")
      ->capture_default_str();
  sub->add_option("--batch-sizes", flags->batch_sizes, "Decode batch sizes")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--prompt-len", flags->prompt_len)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--decode-steps", flags->decode_steps)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--copy-gib", flags->copy_gib, "Size of the memcpy bandwidth probe")
      ->capture_default_str();
  return [flags] {
    const absl::Status status = Bench(*flags);
    if (!status.ok()) {
      std::fprintf(stderr, "error: bench-engine: %s\n", status.ToString().c_str());
      return 1;
    }
    return 0;
  };
}

}  // namespace tessera::launch
