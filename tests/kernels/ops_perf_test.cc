// Decode-shaped Matmul (m = 1..16) and PagedAttention bandwidth against memcpy of the same
// bytes, prefill-shaped Matmul GFLOP/s per weight dtype, and Sample over a large vocabulary.
// Prints figures; never asserts on time (label perf). CPU backends (portable and AVX2) only.
// Threads: OMP_NUM_THREADS (ctest sets 1; run the binary directly for all cores).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/ops.h"
#include "tests/kernels/test_backends.h"

namespace tessera::kernels {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Best of `reps` runs of `fn`, in seconds.
template <typename Fn>
double Best(int reps, Fn fn) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto start = Clock::now();
    fn();
    best = std::min(best, Seconds(start));
  }
  return best;
}

// The CPU backends only: these figures time ops without synchronising a stream and copy with the
// host's memcpy. `tessera bench-kernels` (kernels/bench) measures every backend, the GPU included,
// against that device's own copy and GEMM peaks.
class OpsPerf : public testing::BackendTest {
 protected:
  void SetUp() override {
    if (GetParam().rfind("cpu", 0) != 0) {
      GTEST_SKIP() << "host-side figures; run tessera bench-kernels --backend " << GetParam();
    }
    testing::BackendTest::SetUp();
  }
};

TEST_P(OpsPerf, DecodeBandwidthAgainstMemcpy) {
  // Several weights, used in turn like the layers of a model, so that together they are far
  // larger than the last-level cache and every Matmul reads its weight from memory.
  const int64_t n = 4096, k = 4096, layers = 8;
  std::mt19937_64 rng(1);
  const std::vector<float> w = testing::RandomFloats(rng, n * k);
  const std::vector<float> x = testing::RandomFloats(rng, 16 * k);
  std::printf("backend %s, %d OpenMP threads, %ld weights [%ld, %ld]\n", GetParam().c_str(),
              omp_get_max_threads(), static_cast<long>(layers), static_cast<long>(n),
              static_cast<long>(k));
  for (DataType dtype : {DataType::kF32, DataType::kBF16, DataType::kF16}) {
    std::vector<MatmulParams> params(layers);
    for (MatmulParams& p : params) p.weight = Upload(w, dtype, {n, k});
    const size_t bytes = params[0].weight.nbytes();
    std::vector<char> copy(bytes);
    // Copy bandwidth = (read + write) / time, the bytes a GEMV only reads.
    const double memcpy_s = Best(3, [&] {
      for (const MatmulParams& p : params) std::memcpy(copy.data(), p.weight.data(), bytes);
    });
    const double memcpy_gbs = 2.0 * bytes * layers / memcpy_s / 1e9;
    for (int64_t m : {1, 2, 4, 8, 16}) {
      for (MatmulParams& p : params) {
        p.input = Upload(std::vector<float>(x.begin(), x.begin() + m * k), DataType::kF32, {m, k});
        p.output = Uninitialized(DataType::kF32, {m, n});
      }
      const double s = Best(3, [&] {
        for (const MatmulParams& p : params) ASSERT_TRUE(Matmul(backend(), p, stream()).ok());
      });
      const double gbs = static_cast<double>(bytes) * layers / s / 1e9;
      std::printf(
          "  %-4s m=%2ld: %7.3f ms/weight  %6.2f GB/s weights  %6.1f GFLOP/s  "
          "(memcpy %6.2f GB/s: %.2fx)\n",
          std::string(DataTypeName(dtype)).c_str(), static_cast<long>(m), s * 1e3 / layers, gbs,
          2.0 * m * n * k * layers / s / 1e9, memcpy_gbs, gbs / memcpy_gbs);
    }
  }
}

TEST_P(OpsPerf, PrefillThroughput) {
  const int64_t n = 2048, k = 2048;
  std::mt19937_64 rng(2);
  const std::vector<float> w = testing::RandomFloats(rng, n * k);
  for (DataType dtype : {DataType::kF32, DataType::kBF16}) {
    for (int64_t m : {16, 32, 64, 128, 512}) {
      MatmulParams params;
      params.weight = Upload(w, dtype, {n, k});
      params.input = Upload(testing::RandomFloats(rng, m * k), DataType::kF32, {m, k});
      params.output = Uninitialized(DataType::kF32, {m, n});
      const double s = Best(3, [&] { ASSERT_TRUE(Matmul(backend(), params, stream()).ok()); });
      std::printf("  %-4s m=%4ld n=k=%ld: %8.3f ms  %6.1f GFLOP/s\n",
                  std::string(DataTypeName(dtype)).c_str(), static_cast<long>(m),
                  static_cast<long>(n), s * 1e3, 2.0 * m * n * k / s / 1e9);
    }
  }
}

TEST_P(OpsPerf, DecodeAttentionBandwidth) {
  // A decode step of 8 sequences of 2048 tokens, 32 query heads over 8 KV heads of 128.
  const int64_t seqs = 8, seq_len = 2048, q_heads = 32, kv_heads = 8, dim = 128, block = 16;
  const int64_t blocks_per_seq = seq_len / block, num_blocks = seqs * blocks_per_seq;
  std::mt19937_64 rng(3);
  std::vector<int32_t> tables(seqs * blocks_per_seq);
  for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>(i);
  std::shuffle(tables.begin(), tables.end(), rng);
  std::vector<int32_t> starts(seqs + 1), lens(seqs, static_cast<int32_t>(seq_len));
  for (int64_t s = 0; s <= seqs; ++s) starts[s] = static_cast<int32_t>(s);
  for (DataType dtype : {DataType::kF32, DataType::kBF16}) {
    const Shape cache_shape = {num_blocks, kv_heads, block, dim};
    const std::vector<float> cache = testing::RandomFloats(rng, NumElements(cache_shape));
    PagedAttentionParams params;
    params.query = Upload(testing::RandomFloats(rng, seqs * q_heads * dim), DataType::kF32,
                          {seqs, q_heads, dim});
    params.key_cache = Upload(cache, dtype, cache_shape);
    params.value_cache = Upload(cache, dtype, cache_shape);
    params.block_tables = UploadI32(tables, {seqs, blocks_per_seq});
    params.query_start = UploadI32(starts, {seqs + 1});
    params.seq_lens = UploadI32(lens, {seqs});
    params.output = Uninitialized(DataType::kF32, {seqs, q_heads, dim});
    params.scale = 0.088f;
    const size_t bytes = 2 * params.key_cache.nbytes();
    std::vector<char> copy(bytes / 2);
    const double memcpy_s = Best(3, [&] {
      std::memcpy(copy.data(), params.key_cache.data(), bytes / 2);
      std::memcpy(copy.data(), params.value_cache.data(), bytes / 2);
    });
    const double s =
        Best(5, [&] { ASSERT_TRUE(PagedAttention(backend(), params, stream()).ok()); });
    const double memcpy_gbs = 2.0 * bytes / memcpy_s / 1e9;
    std::printf(
        "  attention %-4s cache %.0f MB: %7.3f ms  %6.2f GB/s KV  (memcpy %6.2f GB/s: "
        "%.2fx)\n",
        std::string(DataTypeName(dtype)).c_str(), bytes / 1e6, s * 1e3, bytes / s / 1e9, memcpy_gbs,
        bytes / s / 1e9 / memcpy_gbs);
  }
}

TEST_P(OpsPerf, SampleLargeVocabulary) {
  const int64_t rows = 8, vocab = 128256;
  std::mt19937_64 rng(4);
  // Logits of a language model look roughly normal with a spread of a few nats.
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(rows * vocab);
  for (float& logit : logits) logit = normal(rng);
  for (float temperature : {0.0f, 0.8f}) {
    for (float top_p : {1.0f, 0.9f}) {
      SampleParams params;
      params.logits = Upload(logits, DataType::kF32, {rows, vocab});
      params.temperature = Upload(std::vector<float>(rows, temperature), DataType::kF32, {rows});
      params.top_k = UploadI32(std::vector<int32_t>(rows, 0), {rows});
      params.top_p = Upload(std::vector<float>(rows, top_p), DataType::kF32, {rows});
      params.seeds = UploadI64(std::vector<int64_t>(rows, 1), {rows});
      params.steps = UploadI64(std::vector<int64_t>(rows, 2), {rows});
      params.output_ids = Uninitialized(DataType::kI32, {rows});
      params.output_logprobs = Uninitialized(DataType::kF32, {rows});
      const double s = Best(5, [&] { ASSERT_TRUE(Sample(backend(), params, stream()).ok()); });
      std::printf("  sample %ld x %ld, temperature %.1f top_p %.1f, logprobs: %7.3f ms\n",
                  static_cast<long>(rows), static_cast<long>(vocab), temperature, top_p, s * 1e3);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, OpsPerf, ::testing::ValuesIn(testing::BackendNames()),
                         testing::BackendParamName());

}  // namespace
}  // namespace tessera::kernels
