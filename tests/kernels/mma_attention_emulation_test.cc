// The tensor-core attention tile (kernels/cuda/mma_attention.h) run on the host: each block's
// 128 threads are host threads with a block barrier, warp shuffles and an mma.sync.m16n8k16
// that assembles its operands from the 32 lanes' registers by the PTX ISA's fragment layouts
// (section "Matrix Fragments for mma.m16n8k16 with floating point type"). The same body the GPU
// runs is checked here against a double-precision reference on machines without a GPU: the
// fragment indexing, causal masks, GQA packing, paging, the online softmax, the partial outputs
// of a split context and the poisoning of a bad block id. What this cannot show is the
// hardware's own behaviour; the `cuda` conformance suites check that on a GPU.
#include "kernels/cuda/mma_attention.h"

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <numeric>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"

namespace tessera::kernels::cuda::mma {
namespace {

float HalfToFloat(bool bf16, uint16_t bits) { return bf16 ? BF16ToF32(bits) : F16ToF32(bits); }
uint16_t FloatToHalf(bool bf16, float value) { return bf16 ? F32ToBF16(value) : F32ToF16(value); }

// One thread block: shared memory, a block barrier, and per warp a barrier and exchange slots.
struct EmulatedBlock {
  explicit EmulatedBlock(size_t shared_bytes) : smem(shared_bytes / 2, 0xdead) {}
  std::vector<uint16_t> smem;
  std::barrier<> block{kThreads};
  std::barrier<> warp[kWarps] = {std::barrier<>(32), std::barrier<>(32), std::barrier<>(32),
                                 std::barrier<>(32)};
  float shuffle[kWarps][32] = {};
  uint32_t a[kWarps][32][4] = {};
  uint32_t b[kWarps][32][2] = {};
};

class EmulatedContext {
 public:
  EmulatedContext(EmulatedBlock& block, int tid) : block_(block), tid_(tid) {}
  int thread() const { return tid_; }
  void sync() { block_.block.arrive_and_wait(); }
  uint16_t* shared() { return block_.smem.data(); }
  float ShuffleXor(float value, int mask) {
    const int w = tid_ / 32, lane = tid_ % 32;
    block_.shuffle[w][lane] = value;
    block_.warp[w].arrive_and_wait();
    const float result = block_.shuffle[w][lane ^ mask];
    block_.warp[w].arrive_and_wait();
    return result;
  }
  float Exp2(float x) { return std::exp2(x); }
  // Asynchronous copies land as late as the contract allows: only when WaitCopies requires
  // their group, so a read before the wait sees stale shared memory.
  void CopyAsync16(uint16_t* shared, const uint16_t* global) { open_.emplace_back(shared, global); }
  void CommitCopies() {
    committed_.push_back(std::move(open_));
    open_.clear();
  }
  template <int kPending>
  void WaitCopies() {
    while (committed_.size() > static_cast<size_t>(kPending)) {
      for (const auto& [to, from] : committed_.front()) std::memcpy(to, from, 16);
      committed_.pop_front();
    }
  }
  template <bool kBf16>
  uint32_t Pack(float lo, float hi) {
    return static_cast<uint32_t>(FloatToHalf(kBf16, lo)) |
           static_cast<uint32_t>(FloatToHalf(kBf16, hi)) << 16;
  }
  // c += A B for the warp's 16x16 A and 16x8 B, each lane's four accumulators placed by the
  // PTX layouts: A element i of lane (groupID g, threadID_in_group t) sits at row g for
  // i in {0, 1, 4, 5} and g + 8 otherwise, column 2t + (i & 1) (+ 8 for i >= 4); B element i
  // at row 2t + (i & 1) (+ 8 for i >= 2), column g; C element i at row g (+ 8 for i >= 2),
  // column 2t + (i & 1). Elements go low half first.
  template <bool kBf16>
  void Mma(const uint32_t (&a)[4], const uint32_t (&b)[2], float (&c)[4]) {
    const int w = tid_ / 32, lane = tid_ % 32;
    std::copy(a, a + 4, block_.a[w][lane]);
    std::copy(b, b + 2, block_.b[w][lane]);
    block_.warp[w].arrive_and_wait();
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; ++l) {
      const int g = l >> 2, t = l % 4;
      for (int i = 0; i < 8; ++i) {
        const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
        const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
        A[row][col] =
            HalfToFloat(kBf16, static_cast<uint16_t>(block_.a[w][l][i / 2] >> (16 * (i % 2))));
      }
      for (int i = 0; i < 4; ++i) {
        const int row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
        B[row][g] =
            HalfToFloat(kBf16, static_cast<uint16_t>(block_.b[w][l][i / 2] >> (16 * (i % 2))));
      }
    }
    const int g = lane >> 2, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + (i >= 2 ? 8 : 0);
      const int col = t * 2 + (i & 1);
      double sum = c[i];
      for (int k = 0; k < 16; ++k) sum += static_cast<double>(A[row][k]) * B[k][col];
      c[i] = static_cast<float>(sum);
    }
    block_.warp[w].arrive_and_wait();
  }

 private:
  EmulatedBlock& block_;
  const int tid_;
  using Copies = std::vector<std::pair<uint16_t*, const uint16_t*>>;
  Copies open_;
  std::deque<Copies> committed_;
};

struct Case {
  bool bf16;
  int64_t q_heads, kv_heads, head_dim, block_size;
  std::vector<std::pair<int64_t, int64_t>> seqs;  // (query rows, seq_len)
  int64_t splits = 1;                             // context splits, as the launcher may pick
  int64_t bad_block_seq = -1;                     // a sequence whose second block id is bad
};

template <int D, bool kBf16>
void RunBlock(const MmaArgs& args, int64_t seq, int64_t row0, int64_t by, int64_t split) {
  EmulatedBlock block(SharedBytes(D));
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int tid = 0; tid < kThreads; ++tid) {
    threads.emplace_back([&, tid] {
      EmulatedContext ctx(block, tid);
      AttentionTile<D, kBf16>(ctx, args, seq, row0, by, split);
    });
  }
  for (std::thread& thread : threads) thread.join();
}

template <int D>
void RunBlockOfType(bool bf16, const MmaArgs& args, int64_t seq, int64_t row0, int64_t by,
                    int64_t split) {
  if (bf16) {
    RunBlock<D, true>(args, seq, row0, by, split);
  } else {
    RunBlock<D, false>(args, seq, row0, by, split);
  }
}

void Check(const Case& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const int64_t D = c.head_dim;
  const auto num_seqs = static_cast<int64_t>(c.seqs.size());
  int64_t max_blocks = 0, total_blocks = 0, tokens = 0;
  for (const auto& [q_len, seq_len] : c.seqs) {
    max_blocks = std::max(max_blocks, (seq_len + c.block_size - 1) / c.block_size);
    total_blocks += (seq_len + c.block_size - 1) / c.block_size;
    tokens += q_len;
  }
  // Scattered block ids; the cache as [num_blocks, kv_heads, block_size, D] of half bits.
  const int64_t num_blocks = total_blocks + 2;
  std::vector<int32_t> pool(num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int32_t> tables(num_seqs * max_blocks, -1);
  std::vector<int32_t> query_start = {0}, seq_lens;
  int64_t next = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    for (int64_t b = 0; b * c.block_size < c.seqs[s].second; ++b) {
      tables[s * max_blocks + b] = pool[next++];
    }
    query_start.push_back(static_cast<int32_t>(query_start.back() + c.seqs[s].first));
    seq_lens.push_back(static_cast<int32_t>(c.seqs[s].second));
  }
  const int64_t cache_elems = num_blocks * c.kv_heads * c.block_size * D;
  std::vector<uint16_t> key_cache(cache_elems), value_cache(cache_elems);
  for (uint16_t& k : key_cache) k = FloatToHalf(c.bf16, 2.0f * uniform(rng));
  for (uint16_t& v : value_cache) v = FloatToHalf(c.bf16, uniform(rng));
  if (c.bad_block_seq >= 0) tables[c.bad_block_seq * max_blocks + 1] = num_blocks + 7;
  // q from a fused QKV buffer: rows of (q_heads + 2 kv_heads) * D.
  const int64_t width = (c.q_heads + 2 * c.kv_heads) * D;
  std::vector<uint16_t> qkv(tokens * width);
  for (uint16_t& q : qkv) q = FloatToHalf(c.bf16, uniform(rng));
  const uint16_t kPoison = c.bf16 ? 0x7fc1 : 0x7e01;
  std::vector<uint16_t> output(tokens * c.q_heads * D, kPoison);

  MmaArgs args{};
  args.query = qkv.data();
  args.query_stride0 = width;
  args.query_stride1 = D;
  args.output = output.data();
  args.output_stride0 = c.q_heads * D;
  args.output_stride1 = D;
  args.key_cache = key_cache.data();
  args.key_stride0 = c.kv_heads * c.block_size * D;
  args.key_stride1 = c.block_size * D;
  args.key_stride2 = D;
  args.value_cache = value_cache.data();
  args.value_stride0 = args.key_stride0;
  args.value_stride1 = args.key_stride1;
  args.value_stride2 = args.key_stride2;
  args.block_tables = tables.data();
  args.block_tables_stride = max_blocks;
  args.query_start = query_start.data();
  args.seq_lens = seq_lens.data();
  args.q_heads = c.q_heads;
  args.num_blocks = num_blocks;
  args.block_size = c.block_size;
  args.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  // The launcher's plan (its split count is the device's to choose; here the case's).
  AttentionPlan& plan = args.plan;
  plan = TilePlan(static_cast<int>(c.q_heads / c.kv_heads));
  const int64_t max_context = max_blocks * c.block_size;
  SplitContext(max_context, c.splits, kTileKeys, plan);
  std::vector<float> partial_out(tokens * c.q_heads * plan.splits * D, NAN);
  std::vector<float> partial_ml(tokens * c.q_heads * plan.splits * 2, NAN);
  plan.partial_out = partial_out.data();
  plan.partial_ml = partial_ml.data();

  const int capacity = static_cast<int>(
      std::min<int64_t>(tokens, num_seqs + (tokens + plan.rows_per_item - 1) / plan.rows_per_item));
  std::vector<int32_t> items(2 * capacity);
  const int count = PlanItems(query_start.data(), seq_lens.data(), num_seqs, tokens, max_context,
                              plan.rows_per_item, capacity, items.data());
  ASSERT_GT(count, 0);
  for (int item = 0; item < count; ++item) {
    for (int64_t by = 0; by < c.kv_heads * plan.head_chunks; ++by) {
      for (int64_t split = 0; split < plan.splits; ++split) {
        switch (D) {
          case 32:
            RunBlockOfType<32>(c.bf16, args, items[2 * item], items[2 * item + 1], by, split);
            break;
          case 64:
            RunBlockOfType<64>(c.bf16, args, items[2 * item], items[2 * item + 1], by, split);
            break;
          default:
            RunBlockOfType<128>(c.bf16, args, items[2 * item], items[2 * item + 1], by, split);
            break;
        }
      }
    }
  }

  const double rounding = c.bf16 ? 0x1p-8 : 0x1p-11;
  const int64_t group = c.q_heads / c.kv_heads;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const auto [q_len, seq_len] = c.seqs[s];
    const int64_t bad_from = s == c.bad_block_seq ? c.block_size : seq_len;  // first bad key
    for (int64_t r = 0; r < q_len; ++r) {
      const int64_t row = query_start[s] + r;
      const int64_t pos = seq_len - q_len + r;
      for (int64_t h = 0; h < c.q_heads; ++h) {
        SCOPED_TRACE(absl::StrCat("sequence ", s, " row ", r, " head ", h));
        const int64_t kvh = h / group;
        std::vector<float> got(D);
        if (plan.splits == 1) {
          for (int64_t d = 0; d < D; ++d) {
            got[d] = HalfToFloat(c.bf16, output[(row * c.q_heads + h) * D + d]);
          }
        } else {
          // The combine kernel's merge, over the partials the blocks wrote.
          const int64_t base = (row * c.q_heads + h) * plan.splits;
          float m_max = -INFINITY;
          for (int z = 0; z < plan.splits; ++z) m_max = std::max(m_max, partial_ml[(base + z) * 2]);
          double denominator = 0;
          std::vector<double> acc(D, 0.0);
          for (int z = 0; z < plan.splits; ++z) {
            const float m = partial_ml[(base + z) * 2];
            ASSERT_FALSE(std::isnan(m)) << "split " << z << " wrote no partial";
            if (m == -INFINITY) continue;
            const double weight = std::exp(static_cast<double>(m) - m_max);
            denominator += weight * partial_ml[(base + z) * 2 + 1];
            for (int64_t d = 0; d < D; ++d) acc[d] += weight * partial_out[(base + z) * D + d];
          }
          for (int64_t d = 0; d < D; ++d) got[d] = static_cast<float>(acc[d] / denominator);
        }
        if (pos >= bad_from) {
          for (int64_t d = 0; d < D; ++d) ASSERT_TRUE(std::isnan(got[d])) << "dim " << d;
          continue;
        }
        const uint16_t* q = &qkv[row * width + h * D];
        std::vector<double> scores(pos + 1);
        double max = -INFINITY;
        for (int64_t j = 0; j <= pos; ++j) {
          const int64_t block = tables[s * max_blocks + j / c.block_size];
          const uint16_t* k =
              &key_cache[((block * c.kv_heads + kvh) * c.block_size + j % c.block_size) * D];
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) {
            dot += static_cast<double>(HalfToFloat(c.bf16, q[d])) * HalfToFloat(c.bf16, k[d]);
          }
          scores[j] = dot * args.scale;
          max = std::max(max, scores[j]);
        }
        double sum = 0;
        for (double& score : scores) sum += (score = std::exp(score - max));
        for (int64_t d = 0; d < D; ++d) {
          double want = 0, magnitude = 0;
          for (int64_t j = 0; j <= pos; ++j) {
            const int64_t block = tables[s * max_blocks + j / c.block_size];
            const double v = HalfToFloat(
                c.bf16,
                value_cache[((block * c.kv_heads + kvh) * c.block_size + j % c.block_size) * D +
                            d]);
            want += scores[j] / sum * v;
            magnitude += scores[j] / sum * std::abs(v);
          }
          // One rounding of each weight (P goes to the mma in the half type), one of the
          // output, and f32 sums.
          ASSERT_NEAR(got[d], want, rounding * (std::abs(want) + magnitude) + 1e-5) << "dim " << d;
        }
      }
    }
  }
  // Rows no item covers keep the poison; here every row is covered, so none may.
  if (plan.splits == 1) {
    for (size_t i = 0; i < output.size(); ++i) {
      ASSERT_NE(output[i], kPoison) << "output element " << i << " never written";
    }
  }
}

TEST(MmaAttentionEmulation, MixedBatchGroupedHeads) {
  // A chunked prefill, a decode over several blocks, a 70-row prefill over two key tiles and
  // five items, a short prefill, a first decode step.
  Check({true, 8, 2, 64, 16, {{5, 21}, {1, 37}, {70, 70}, {9, 9}, {1, 1}}}, 1);
}

TEST(MmaAttentionEmulation, F16OneHeadPerKvHead) {
  Check({false, 4, 4, 32, 8, {{66, 80}, {2, 3}}}, 2);
}

TEST(MmaAttentionEmulation, GroupThatDoesNotDivideTheTile) {
  // Six query heads per KV head: ten rows (60 vectors) a block, four padding rows.
  Check({true, 6, 1, 128, 16, {{20, 150}, {3, 3}}}, 3);
}

TEST(MmaAttentionEmulation, SplitContextPartialsMerge) {
  Check({true, 4, 2, 64, 16, {{1, 200}, {12, 300}, {1, 5}}, 3}, 4);
}

TEST(MmaAttentionEmulation, OddGroupsBlockSizesAndSplits) {
  // Three heads per KV head (21 rows, 63 vectors a block) over one-token blocks.
  Check({true, 3, 1, 64, 1, {{30, 40}, {1, 9}}}, 6);
  // Eight heads per KV head (8 rows a block); decodes at a block boundary and just past it.
  Check({false, 16, 2, 128, 32, {{9, 100}, {1, 64}, {1, 65}}}, 7);
  // f16 over two splits, the second starting mid-prompt.
  Check({false, 2, 2, 32, 4, {{3, 260}, {70, 70}}, 2}, 8);
}

TEST(MmaAttentionEmulation, BadBlockIdPoisonsOnlyTheRowsThatReachIt) {
  Check({false, 4, 2, 32, 8, {{20, 20}, {1, 12}}, 1, 0}, 5);
}

}  // namespace
}  // namespace tessera::kernels::cuda::mma
