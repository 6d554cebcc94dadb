// Conformance of KvWrite and PagedAttention on every backend: a mixed batch (a chunked prefill,
// a full prefill and decode steps) over a paged cache with scattered block ids, f32, bf16 and
// f16 caches, grouped-query attention, q taken from a fused QKV buffer, head dims with and
// without SIMD tails. The reference is a double-precision softmax over the rounded cache.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"
#include "tests/kernels/test_backends.h"

namespace tessera::kernels {
namespace {

using testing::BackendTest;
using testing::RandomFloats;
using testing::Rounding;
using testing::RoundTo;

class AttentionConformance : public BackendTest {};

TEST_P(AttentionConformance, KvWriteScattersSlotsAndSkipsNegative) {
  TESSERA_SEEDED_RNG(rng, 600);
  const int64_t num_blocks = 5, kv_heads = 2, block_size = 4, dim = 12, tokens = 6;
  const std::vector<int64_t> slots = {13, 0, -1, 19, 6, 7};
  for (DataType dtype : {DataType::kF32, DataType::kBF16, DataType::kF16}) {
    SCOPED_TRACE(DataTypeName(dtype));
    const int64_t cache_elems = num_blocks * kv_heads * block_size * dim;
    const std::vector<float> key = RandomFloats(rng, tokens * kv_heads * dim);
    const std::vector<float> value = RandomFloats(rng, tokens * kv_heads * dim);
    const std::vector<float> initial = RoundTo(dtype, RandomFloats(rng, cache_elems));
    KvWriteParams params;
    params.key = Upload(key, DataType::kF32, {tokens, kv_heads, dim});
    params.value = Upload(value, DataType::kF32, {tokens, kv_heads, dim});
    params.slot_mapping = UploadI64(slots, {tokens});
    const Shape cache_shape = {num_blocks, kv_heads, block_size, dim};
    params.key_cache = Upload(initial, dtype, cache_shape);
    params.value_cache = Upload(initial, dtype, cache_shape);
    ASSERT_TRUE(KvWrite(backend(), params, stream()).ok());
    std::vector<float> want_key = initial, want_value = initial;
    for (int64_t t = 0; t < tokens; ++t) {
      if (slots[t] < 0) continue;
      const int64_t block = slots[t] / block_size, offset = slots[t] % block_size;
      for (int64_t h = 0; h < kv_heads; ++h) {
        for (int64_t c = 0; c < dim; ++c) {
          const int64_t to = ((block * kv_heads + h) * block_size + offset) * dim + c;
          want_key[to] = key[(t * kv_heads + h) * dim + c];
          want_value[to] = value[(t * kv_heads + h) * dim + c];
        }
      }
    }
    EXPECT_EQ(Download(params.key_cache), RoundTo(dtype, want_key));
    EXPECT_EQ(Download(params.value_cache), RoundTo(dtype, want_value));
  }
}

struct AttentionCase {
  DataType cache_dtype;
  int64_t q_heads, kv_heads, head_dim, block_size;
  DataType activation_dtype = DataType::kF32;  // of the queries and the output
};

// (query rows, seq_len) per sequence.
using BatchShape = std::vector<std::pair<int64_t, int64_t>>;

class PagedAttentionConformance : public BackendTest {
 protected:
  // Without `seqs`: a chunked prefill, a decode over several blocks, a first decode step, a
  // full prefill, and a decode of an exactly full last block.
  void Run(const AttentionCase& c, uint64_t seed, BatchShape seqs = {});
};

void PagedAttentionConformance::Run(const AttentionCase& c, uint64_t seed, BatchShape seqs) {
  TESSERA_SEEDED_RNG(rng, seed);
  if (seqs.empty()) seqs = {{5, 21}, {1, 37}, {1, 1}, {9, 9}, {1, 2 * c.block_size}};
  const auto num_seqs = static_cast<int64_t>(seqs.size());
  int64_t max_blocks = 0, total_blocks = 0, tokens = 0;
  for (const auto& [q_len, seq_len] : seqs) {
    const int64_t blocks = (seq_len + c.block_size - 1) / c.block_size;
    max_blocks = std::max(max_blocks, blocks);
    total_blocks += blocks;
    tokens += q_len;
  }
  const int64_t num_blocks = total_blocks + 3;
  // Scattered, non-contiguous block ids.
  std::vector<int32_t> pool(num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int32_t> tables(num_seqs * max_blocks, -1);
  std::vector<int32_t> query_start = {0}, seq_lens;
  std::vector<int64_t> slots;
  int64_t next = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const auto [q_len, seq_len] = seqs[s];
    for (int64_t b = 0; b * c.block_size < seq_len; ++b) tables[s * max_blocks + b] = pool[next++];
    for (int64_t pos = 0; pos < seq_len; ++pos) {
      slots.push_back(tables[s * max_blocks + pos / c.block_size] * c.block_size +
                      pos % c.block_size);
    }
    query_start.push_back(static_cast<int32_t>(query_start.back() + q_len));
    seq_lens.push_back(static_cast<int32_t>(seq_len));
  }
  // Fill the cache with every position of every sequence through KvWrite.
  const auto cached = static_cast<int64_t>(slots.size());
  const int64_t kv_width = c.kv_heads * c.head_dim;
  const std::vector<float> keys = RandomFloats(rng, cached * kv_width, -2.0f, 2.0f);
  const std::vector<float> values = RandomFloats(rng, cached * kv_width);
  const Shape cache_shape = {num_blocks, c.kv_heads, c.block_size, c.head_dim};
  KvWriteParams write;
  write.key = Upload(keys, DataType::kF32, {cached, c.kv_heads, c.head_dim});
  write.value = Upload(values, DataType::kF32, {cached, c.kv_heads, c.head_dim});
  write.slot_mapping = UploadI64(slots, {cached});
  write.key_cache =
      Upload(std::vector<float>(NumElements(cache_shape), 0.0f), c.cache_dtype, cache_shape);
  write.value_cache =
      Upload(std::vector<float>(NumElements(cache_shape), 0.0f), c.cache_dtype, cache_shape);
  ASSERT_TRUE(KvWrite(backend(), write, stream()).ok());
  const std::vector<float> rounded_keys = RoundTo(c.cache_dtype, keys);
  const std::vector<float> rounded_values = RoundTo(c.cache_dtype, values);

  // Queries: the q columns of a fused [tokens, q + 2 kv] buffer.
  const int64_t q_width = c.q_heads * c.head_dim;
  const int64_t width = q_width + 2 * kv_width;
  const std::vector<float> qkv =
      RoundTo(c.activation_dtype, RandomFloats(rng, tokens * width, -2.0f, 2.0f));
  PagedAttentionParams params;
  params.query = SubView(Upload(qkv, c.activation_dtype, {tokens, width}), 0,
                         {tokens, c.q_heads, c.head_dim}, {width, c.head_dim, 1});
  params.key_cache = write.key_cache;
  params.value_cache = write.value_cache;
  params.block_tables = UploadI32(tables, {num_seqs, max_blocks});
  params.query_start = UploadI32(query_start, {num_seqs + 1});
  params.seq_lens = UploadI32(seq_lens, {num_seqs});
  params.output = Uninitialized(c.activation_dtype, {tokens, c.q_heads, c.head_dim});
  params.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  const absl::Status status = PagedAttention(backend(), params, stream());
  ASSERT_TRUE(status.ok()) << status;
  const std::vector<float> got = Download(params.output);

  const int64_t group = c.q_heads / c.kv_heads;
  int64_t first_cached = 0;  // index in keys/values of position 0 of sequence s
  for (int64_t s = 0; s < num_seqs; ++s) {
    const auto [q_len, seq_len] = seqs[s];
    for (int64_t i = 0; i < q_len; ++i) {
      const int64_t row = query_start[s] + i;
      const int64_t pos = seq_len - q_len + i;
      for (int64_t h = 0; h < c.q_heads; ++h) {
        const int64_t kvh = h / group;
        const float* q = &qkv[row * width + h * c.head_dim];
        std::vector<double> scores(pos + 1);
        double max = -INFINITY;
        for (int64_t j = 0; j <= pos; ++j) {
          const float* k = &rounded_keys[((first_cached + j) * c.kv_heads + kvh) * c.head_dim];
          double dot = 0;
          for (int64_t d = 0; d < c.head_dim; ++d) dot += static_cast<double>(q[d]) * k[d];
          scores[j] = dot * params.scale;
          max = std::max(max, scores[j]);
        }
        double sum = 0;
        for (double& score : scores) sum += (score = std::exp(score - max));
        for (int64_t d = 0; d < c.head_dim; ++d) {
          double want = 0, magnitude = 0;
          for (int64_t j = 0; j <= pos; ++j) {
            const double v =
                rounded_values[((first_cached + j) * c.kv_heads + kvh) * c.head_dim + d];
            want += scores[j] / sum * v;
            magnitude += scores[j] / sum * std::abs(v);
          }
          // Half activations: one rounding of the output and, where the backend multiplies
          // softmax weights in the half type (tensor cores), one of each weight.
          const double rounding = Rounding(c.activation_dtype);
          ASSERT_NEAR(got[(row * c.q_heads + h) * c.head_dim + d], want,
                      2e-5 + rounding * (std::abs(want) + magnitude))
              << "seq " << s << " row " << i << " head " << h << " dim " << d;
        }
      }
    }
    first_cached += seq_len;
  }
}

TEST_P(PagedAttentionConformance, MixedBatchMatchesReference) {
  const std::vector<AttentionCase> cases = {
      {DataType::kF32, 8, 2, 32, 8},  {DataType::kBF16, 8, 2, 32, 8},
      {DataType::kF16, 4, 4, 64, 16}, {DataType::kBF16, 6, 1, 20, 4},
      {DataType::kF32, 3, 3, 8, 1},   {DataType::kBF16, 32, 4, 128, 16},
  };
  uint64_t seed = 700;
  for (const AttentionCase& c : cases) {
    SCOPED_TRACE(absl::StrCat("cache ", DataTypeName(c.cache_dtype), " q_heads ", c.q_heads,
                              " kv_heads ", c.kv_heads, " head_dim ", c.head_dim, " block_size ",
                              c.block_size));
    Run(c, ++seed);
    if (HasFatalFailure()) return;
  }
}

// Long contexts with few queries: backends that split the context across workers (split-KV)
// and merge the partial softmaxes must give the same result; also a prefill chunk that spans
// many key tiles.
TEST_P(PagedAttentionConformance, LongContextsMatchReference) {
  const BatchShape seqs = {{1, 1500}, {1, 777}, {40, 1100}, {1, 33}};
  const std::vector<AttentionCase> cases = {
      {DataType::kBF16, 8, 2, 64, 16},
      {DataType::kF32, 4, 4, 32, 8},
  };
  uint64_t seed = 750;
  for (const AttentionCase& c : cases) {
    SCOPED_TRACE(absl::StrCat("cache ", DataTypeName(c.cache_dtype), " q_heads ", c.q_heads,
                              " kv_heads ", c.kv_heads, " head_dim ", c.head_dim, " block_size ",
                              c.block_size));
    Run(c, ++seed, seqs);
    if (HasFatalFailure()) return;
  }
}

// Half queries and outputs (what a bf16 or f16 model computes in on a GPU), prefill and mixed
// batches: over a cache of the same type and a supported head dim, the CUDA backend takes its
// tensor-core tile; other head dims and mixed types stay with its f32 kernel. The CPU backend
// takes f32 activations only.
TEST_P(PagedAttentionConformance, HalfActivationsMatchReference) {
  if (backend().device().type == DeviceType::kCpu) {
    GTEST_SKIP() << "the " << backend().name() << " backend takes f32 activations only";
  }
  constexpr DataType kBF16 = DataType::kBF16, kF16 = DataType::kF16;
  const std::vector<AttentionCase> cases = {
      {kBF16, 8, 2, 64, 16, kBF16},   {kF16, 4, 4, 32, 8, kF16},   {kBF16, 6, 1, 128, 16, kBF16},
      {kBF16, 32, 8, 128, 16, kBF16}, {kF16, 16, 2, 64, 32, kF16}, {kBF16, 8, 2, 96, 16, kBF16},
      {kF16, 4, 2, 64, 16, kBF16},
  };
  uint64_t seed = 780;
  for (const AttentionCase& c : cases) {
    SCOPED_TRACE(absl::StrCat("activations ", DataTypeName(c.activation_dtype), " cache ",
                              DataTypeName(c.cache_dtype), " q_heads ", c.q_heads, " kv_heads ",
                              c.kv_heads, " head_dim ", c.head_dim, " block_size ", c.block_size));
    Run(c, ++seed);
    if (HasFatalFailure()) return;
    // A long prefill chunk among long decodes: few items, so the context is split.
    Run(c, ++seed, {{1, 1500}, {1, 777}, {40, 1100}, {1, 33}, {130, 130}});
    if (HasFatalFailure()) return;
    // Decode rows only (the SIMT kernel, but on cuda_tensor_cores the tile).
    Run(c, ++seed, {{1, 300}, {1, 17}, {1, 1}, {1, 2 * c.block_size}, {1, 1200}});
    if (HasFatalFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, AttentionConformance,
                         ::testing::ValuesIn(testing::BackendNames()), testing::BackendParamName());
INSTANTIATE_TEST_SUITE_P(Backends, PagedAttentionConformance,
                         ::testing::ValuesIn(testing::BackendNames()), testing::BackendParamName());
// The tensor-core attention tile on decode batches too (skips without a GPU).
INSTANTIATE_TEST_SUITE_P(TensorCores, PagedAttentionConformance,
                         ::testing::Values("cuda_tensor_cores"), testing::BackendParamName());

}  // namespace
}  // namespace tessera::kernels
