// The tensor-core tile of PagedAttention (f16/bf16 queries over a cache of the same type):
// FlashAttention-2 with `mma.sync.m16n8k16` (f32 accumulation), scores and the output
// accumulator held in registers, keys and values gathered through the block table into shared
// memory 64 at a time, double-buffered with asynchronous copies (the next tile loads while this
// one is multiplied).
//
// This header is plain C++17 with no CUDA include: the body is a template over a context `Ctx`
// that supplies the thread index, block barrier, warp shuffle, the mma instruction, packing to
// half pairs, exp2, shared memory and asynchronous 16-byte copies (CopyAsync16, CommitCopies,
// WaitCopies<N>: at most N committed groups still in flight). cuda_attention.cu instantiates it
// with the hardware's (DeviceMmaContext: mma.sync, cp.async); the test
// tests/kernels/mma_attention_emulation_test.cc runs the same body on the host with 128 threads,
// an mma that follows the PTX ISA's fragment layouts ("Matrix Fragments for mma.m16n8k16 with
// floating point type") and copies that land only when waited for, so the index arithmetic and
// the pipeline's order are checked on machines without a GPU.
//
// A block is 4 warps; warp w owns the tile's vectors 16w..16w+15, vector v being (query row
// v / heads, query head g0 + v % heads) of one KV head, so each K/V tile serves every query head
// of the group. Per 64-key tile a warp computes S = Q K^T (16 x 64, eight n-tiles of 8 keys),
// masks it causally, updates the online softmax in base 2, and accumulates O += P V with P
// taken straight from S's accumulator registers (the accumulator layout of one mma is the A
// layout of the next).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define TESSERA_MMA_FN __device__ __forceinline__
#define TESSERA_MMA_CONSTEXPR __host__ __device__ constexpr
#else
#include <cmath>
#define TESSERA_MMA_FN inline
#define TESSERA_MMA_CONSTEXPR constexpr
#endif

namespace tessera::kernels::cuda {

// How a PagedAttention launch divides its work, for either kernel. A work item is (sequence, a
// chunk of its query rows) x (KV head, a range of its query heads) x (context split); its query
// vectors (row, head) are the rows of one tile.
struct AttentionPlan {
  int group = 1;                 // query heads per KV head
  int rows_per_item = 1;         // query rows of one sequence per item
  int heads_per_item = 1;        // query heads of one KV head per item (<= group)
  int head_chunks = 1;           // ceil(group / heads_per_item)
  int splits = 1;                // context splits; > 1 writes partials for the combine kernel
  int64_t chunk = 0;             // keys per split, a multiple of the kernel's key tile
  float* partial_out = nullptr;  // [tokens, q_heads, splits, head_dim]
  float* partial_ml = nullptr;   // [tokens, q_heads, splits, 2]: (max in natural-log units, sum)
};

// Splits a context of up to `max_context` keys into about `splits` chunks, each a multiple of
// `tile_keys` keys: sets the plan's chunk and the splits that result.
inline void SplitContext(int64_t max_context, int64_t splits, int64_t tile_keys,
                         AttentionPlan& plan) {
  int64_t chunk = (max_context + splits - 1) / splits;
  chunk = (chunk + tile_keys - 1) / tile_keys * tile_keys;
  plan.chunk = chunk;
  plan.splits = static_cast<int>((max_context + chunk - 1) / chunk);
}

// The items (sequence, first query row) of every well-formed sequence, in order, up to
// `capacity`; returns their number. A sequence whose layout is inconsistent (rows outside
// [0, tokens], seq_len < rows, more tokens than the block table holds) gets none, so its output
// rows stay unwritten. Shared by both attention kernels' one-thread planning kernel.
TESSERA_MMA_FN int PlanItems(const int32_t* query_start, const int32_t* seq_lens, int64_t num_seqs,
                             int64_t tokens, int64_t max_context, int rows_per_item, int capacity,
                             int32_t* items /* 2 per item */) {
  int n = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t begin = query_start[s];
    const int64_t end = query_start[s + 1];
    const int64_t seq_len = seq_lens[s];
    if (begin < 0 || end < begin || end > tokens || seq_len < end - begin ||
        seq_len > max_context) {
      continue;
    }
    for (int64_t r = 0; r < end - begin && n < capacity; r += rows_per_item) {
      items[2 * n] = static_cast<int32_t>(s);
      items[2 * n + 1] = static_cast<int32_t>(r);
      ++n;
    }
  }
  return n;
}

}  // namespace tessera::kernels::cuda

namespace tessera::kernels::cuda::mma {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTileVectors = 16 * kWarps;  // M of a block
constexpr int kTileKeys = 64;              // N of a key tile
constexpr int kPad = 8;                    // halves after each shared-memory row: no bank conflicts

// Head dims the tile is built for (one instance each): multiples of 16, O in registers.
TESSERA_MMA_CONSTEXPR bool SupportsHeadDim(int64_t head_dim) {
  return head_dim == 32 || head_dim == 64 || head_dim == 128;
}

// Halves from one key's (or value's) shared-memory row to the next.
TESSERA_MMA_CONSTEXPR int64_t RowStride(int64_t head_dim) { return head_dim + kPad; }
// Two buffers (double-buffering) each of a key tile and a value tile.
TESSERA_MMA_CONSTEXPR size_t SharedBytes(int64_t head_dim) {
  return static_cast<size_t>(4 * kTileKeys * RowStride(head_dim)) * 2;
}

// The tile's items: every query head of a KV head (at most kTileVectors of them), and as many
// query rows as fill kTileVectors vectors (10 rows of 6 heads: 60).
inline AttentionPlan TilePlan(int group) {
  AttentionPlan plan;
  plan.group = group;
  plan.heads_per_item = group < kTileVectors ? group : kTileVectors;
  plan.rows_per_item = group < kTileVectors ? kTileVectors / group : 1;
  plan.head_chunks = (group + plan.heads_per_item - 1) / plan.heads_per_item;
  return plan;
}

// Everything a block reads, in elements (halves) for the strides.
struct MmaArgs {
  const uint16_t* query;
  int64_t query_stride0, query_stride1;
  uint16_t* output;
  int64_t output_stride0, output_stride1;
  const uint16_t* key_cache;
  int64_t key_stride0, key_stride1, key_stride2;
  const uint16_t* value_cache;
  int64_t value_stride0, value_stride1, value_stride2;
  const int32_t* block_tables;
  int64_t block_tables_stride;
  const int32_t* query_start;
  const int32_t* seq_lens;
  int64_t q_heads, num_blocks, block_size;
  float scale;
  AttentionPlan plan;
};

// 16 bytes: eight halves.
struct alignas(16) Half8 {
  uint32_t w[4];
};

// A T (uint32_t: two halves, Half8: eight) at `p`, aligned for T on the device.
template <class T>
TESSERA_MMA_FN T LoadAs(const uint16_t* p) {
#if defined(__CUDACC__)
  return *reinterpret_cast<const T*>(p);
#else
  T value;
  std::memcpy(&value, p, sizeof(value));
  return value;
#endif
}

template <class T>
TESSERA_MMA_FN void StoreAs(uint16_t* p, const T& value) {
#if defined(__CUDACC__)
  *reinterpret_cast<T*>(p) = value;
#else
  std::memcpy(p, &value, sizeof(value));
#endif
}

TESSERA_MMA_FN Half8 Fill8(uint16_t bits) {
  const uint32_t pair = (static_cast<uint32_t>(bits) << 16) | bits;
  return Half8{{pair, pair, pair, pair}};
}

// A quiet NaN of the type: what a key from a block id outside the cache reads as.
template <bool kBf16>
constexpr uint16_t kNanBits = kBf16 ? 0x7fc0 : 0x7e00;

TESSERA_MMA_FN float Max(float a, float b) {
#if defined(__CUDACC__)
  return fmaxf(a, b);
#else
  return std::fmax(a, b);
#endif
}

// One block's work: item (seq, row0), grid row `by` = (KV head, chunk of its query heads), and
// context split `split`. Every thread of the block calls it; the barriers are block-uniform.
template <int D, bool kBf16, class Ctx>
TESSERA_MMA_FN void AttentionTile(Ctx& ctx, const MmaArgs& a, int64_t seq, int64_t row0, int64_t by,
                                  int64_t split) {
  static_assert(D % 16 == 0 && D <= 128, "head_dim: a multiple of 16, at most 128");
  constexpr int kDTiles = D / 8;            // n-tiles of O
  constexpr int kKSteps = D / 16;           // k-steps of S = Q K^T
  constexpr int kKeyTiles = kTileKeys / 8;  // n-tiles of S
  constexpr int kParts = D / 8;             // 16-byte pieces of one key or value vector
  constexpr int64_t kStride = RowStride(D);
  constexpr int64_t kBufferHalves = kTileKeys * kStride;
  constexpr float kInf = __builtin_huge_valf();
  constexpr float kLog2e = 1.4426950408889634f;
  constexpr float kLn2 = 0.6931471805599453f;

  const int64_t kv_head = by / a.plan.head_chunks;
  const int g0 = static_cast<int>(by % a.plan.head_chunks) * a.plan.heads_per_item;
  const int heads =
      a.plan.heads_per_item < a.plan.group - g0 ? a.plan.heads_per_item : a.plan.group - g0;
  const int64_t q_begin = a.query_start[seq];
  const int64_t q_len = a.query_start[seq + 1] - q_begin;
  const int64_t first_pos = a.seq_lens[seq] - q_len;  // position of query row 0
  const int rows =
      static_cast<int>(a.plan.rows_per_item < q_len - row0 ? a.plan.rows_per_item : q_len - row0);
  const int vectors = rows * heads;
  const int64_t last_pos = first_pos + row0 + rows - 1;
  const int64_t key_begin = split * a.plan.chunk;
  const int64_t key_end =
      (split + 1) * a.plan.chunk < last_pos + 1 ? (split + 1) * a.plan.chunk : last_pos + 1;

  const int tid = ctx.thread();
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int g = lane / 4;  // groupID: rows g and g + 8 of the warp's 16
  const int t = lane % 4;  // threadID_in_group
  // Two buffers each of keys and values, [kTileKeys][kStride] halves.
  uint16_t* k_s = ctx.shared();
  uint16_t* v_s = k_s + 2 * kBufferHalves;

  // This thread's two vectors and the last key position each may see (-1: a padding row).
  const int v_of[2] = {warp * 16 + g, warp * 16 + g + 8};
  int64_t limit[2];
  const uint16_t* q_row[2];
  for (int r = 0; r < 2; ++r) {
    const int v = v_of[r];
    limit[r] = v < vectors ? first_pos + row0 + v / heads : -1;
    q_row[r] = v < vectors ? a.query + (q_begin + row0 + v / heads) * a.query_stride0 +
                                 (kv_head * a.plan.group + g0 + v % heads) * a.query_stride1
                           : nullptr;
  }
  const int last_vector = vectors - 1 < warp * 16 + 15 ? vectors - 1 : warp * 16 + 15;
  const int64_t warp_limit = warp * 16 < vectors ? first_pos + row0 + last_vector / heads : -1;

  // Q as A fragments: a0a1 (row g, k 2t..), a2a3 (row g+8), a4a5 (row g, k 2t+8..), a6a7.
  uint32_t qa[kKSteps][4];
  for (int kk = 0; kk < kKSteps; ++kk) {
    const int d = 16 * kk + 2 * t;
    qa[kk][0] = q_row[0] != nullptr ? LoadAs<uint32_t>(q_row[0] + d) : 0u;
    qa[kk][1] = q_row[1] != nullptr ? LoadAs<uint32_t>(q_row[1] + d) : 0u;
    qa[kk][2] = q_row[0] != nullptr ? LoadAs<uint32_t>(q_row[0] + d + 8) : 0u;
    qa[kk][3] = q_row[1] != nullptr ? LoadAs<uint32_t>(q_row[1] + d + 8) : 0u;
  }
  float o[kDTiles][4];
  for (int dt = 0; dt < kDTiles; ++dt) {
    for (int i = 0; i < 4; ++i) o[dt][i] = 0.0f;
  }
  float m[2] = {-kInf, -kInf};  // running max of the scaled scores, base 2
  float l[2] = {0.0f, 0.0f};    // this thread's share of the running sum
  const float scale = a.scale * kLog2e;
  const int32_t* table = a.block_tables + seq * a.block_tables_stride;

  // Tile i's keys and values into buffer i % 2, row-major, asynchronously where they come from
  // the cache: consecutive threads take consecutive 16-byte pieces of one vector (coalesced).
  // Past the split's last key: zeros (masked). A block id outside the cache: NaN keys, which
  // poison exactly the outputs whose causal range includes them, and zero values.
  const int64_t tiles = key_end > key_begin ? (key_end - key_begin + kTileKeys - 1) / kTileKeys : 0;
  const auto load_tile = [&](int64_t i) {
    const int64_t j0 = key_begin + i * kTileKeys;
    uint16_t* k_buf = k_s + (i % 2) * kBufferHalves;
    uint16_t* v_buf = v_s + (i % 2) * kBufferHalves;
    for (int c = tid; c < kTileKeys * kParts; c += kThreads) {
      const int jj = c / kParts;
      const int part = c % kParts;
      const int64_t j = j0 + jj;
      uint16_t* k_dst = k_buf + jj * kStride + part * 8;
      uint16_t* v_dst = v_buf + jj * kStride + part * 8;
      const int64_t block = j < key_end ? table[j / a.block_size] : -1;
      if (j >= key_end) {
        StoreAs<Half8>(k_dst, Fill8(0));
        StoreAs<Half8>(v_dst, Fill8(0));
      } else if (block < 0 || block >= a.num_blocks) {
        StoreAs<Half8>(k_dst, Fill8(kNanBits<kBf16>));
        StoreAs<Half8>(v_dst, Fill8(0));
      } else {
        const int64_t offset = j % a.block_size;
        ctx.CopyAsync16(k_dst, a.key_cache + block * a.key_stride0 + kv_head * a.key_stride1 +
                                   offset * a.key_stride2 + part * 8);
        ctx.CopyAsync16(v_dst, a.value_cache + block * a.value_stride0 + kv_head * a.value_stride1 +
                                   offset * a.value_stride2 + part * 8);
      }
    }
    ctx.CommitCopies();
  };

  if (tiles > 0) load_tile(0);
  for (int64_t i = 0; i < tiles; ++i) {
    const int64_t j0 = key_begin + i * kTileKeys;
    const int n = static_cast<int>(key_end - j0 < kTileKeys ? key_end - j0 : kTileKeys);
    // Tile i + 1 loads while this one is multiplied.
    if (i + 1 < tiles) {
      load_tile(i + 1);
      ctx.template WaitCopies<1>();
    } else {
      ctx.template WaitCopies<0>();
    }
    ctx.sync();              // tile i is in shared memory, for every thread
    if (j0 <= warp_limit) {  // warp-uniform: else every vector of this warp is before j0
      const uint16_t* k_buf = k_s + (i % 2) * kBufferHalves;
      const uint16_t* v_buf = v_s + (i % 2) * kBufferHalves;
      // S = Q K^T. B fragment of n-tile nt, k-step kk: b0b1 = K[key 8nt+g][d 16kk+2t..],
      // b2b3 = K[key 8nt+g][d 16kk+8+2t..].
      float s[kKeyTiles][4];
      for (int nt = 0; nt < kKeyTiles; ++nt) {
        for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
        const uint16_t* key = k_buf + (8 * nt + g) * kStride + 2 * t;
        for (int kk = 0; kk < kKSteps; ++kk) {
          const uint32_t b[2] = {LoadAs<uint32_t>(key + 16 * kk),
                                 LoadAs<uint32_t>(key + 16 * kk + 8)};
          ctx.template Mma<kBf16>(qa[kk], b, s[nt]);
        }
      }
      // Accumulator element e sits at row g + 8 (e / 2), key 8nt + 2t + e % 2.
      float tile_max[2] = {-kInf, -kInf};
      for (int nt = 0; nt < kKeyTiles; ++nt) {
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2;
          const int jj = 8 * nt + 2 * t + e % 2;
          const float x = jj < n && j0 + jj <= limit[r] ? s[nt][e] * scale : -kInf;
          s[nt][e] = x;
          tile_max[r] = Max(tile_max[r], x);
        }
      }
      float correction[2];
      for (int r = 0; r < 2; ++r) {
        // The row's four threads (lanes 4g..4g+3) agree on its maximum.
        tile_max[r] = Max(tile_max[r], ctx.ShuffleXor(tile_max[r], 1));
        tile_max[r] = Max(tile_max[r], ctx.ShuffleXor(tile_max[r], 2));
        const float m_new = Max(m[r], tile_max[r]);
        correction[r] = m_new == -kInf ? 1.0f : ctx.Exp2(m[r] - m_new);
        m[r] = m_new;
        l[r] *= correction[r];
      }
      for (int nt = 0; nt < kKeyTiles; ++nt) {
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2;
          // A masked score weighs 0; a NaN score (a NaN key) stays NaN and poisons the row.
          const float p = s[nt][e] == -kInf ? 0.0f : ctx.Exp2(s[nt][e] - m[r]);
          s[nt][e] = p;
          l[r] += p;
        }
      }
      for (int dt = 0; dt < kDTiles; ++dt) {
        for (int e = 0; e < 4; ++e) o[dt][e] *= correction[e / 2];
      }
      // O += P V over four k-steps of 16 keys. A fragment from S's n-tiles 2kk and 2kk+1; B
      // fragment of n-tile dt: b0b1 = V[keys 16kk+2t, +1][d 8dt+g], b2b3 = V[keys +8, +9][d],
      // two 16-bit loads each (rows 2t apart fall 8 banks apart: no conflicts).
      for (int kk = 0; kk < kTileKeys / 16; ++kk) {
        const uint32_t pa[4] = {
            ctx.template Pack<kBf16>(s[2 * kk][0], s[2 * kk][1]),
            ctx.template Pack<kBf16>(s[2 * kk][2], s[2 * kk][3]),
            ctx.template Pack<kBf16>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
            ctx.template Pack<kBf16>(s[2 * kk + 1][2], s[2 * kk + 1][3]),
        };
        const uint16_t* rows = v_buf + (16 * kk + 2 * t) * kStride + g;
        for (int dt = 0; dt < kDTiles; ++dt) {
          const uint16_t* value = rows + 8 * dt;
          const uint32_t b[2] = {
              static_cast<uint32_t>(value[0]) | static_cast<uint32_t>(value[kStride]) << 16,
              static_cast<uint32_t>(value[8 * kStride]) | static_cast<uint32_t>(value[9 * kStride])
                                                              << 16,
          };
          ctx.template Mma<kBf16>(pa, b, o[dt]);
        }
      }
    }
    ctx.sync();  // every warp is done with buffer i % 2 before tile i + 2 is loaded into it
  }

  for (int r = 0; r < 2; ++r) {
    l[r] += ctx.ShuffleXor(l[r], 1);
    l[r] += ctx.ShuffleXor(l[r], 2);
  }
  for (int r = 0; r < 2; ++r) {
    const int v = v_of[r];
    if (v >= vectors) continue;
    const int64_t token = q_begin + row0 + v / heads;
    const int64_t head = kv_head * a.plan.group + g0 + v % heads;
    if (a.plan.splits == 1) {
      uint16_t* out = a.output + token * a.output_stride0 + head * a.output_stride1 + 2 * t;
      for (int dt = 0; dt < kDTiles; ++dt) {
        StoreAs<uint32_t>(out + 8 * dt,
                          ctx.template Pack<kBf16>(o[dt][2 * r] / l[r], o[dt][2 * r + 1] / l[r]));
      }
    } else {
      const int64_t slot = (token * a.q_heads + head) * a.plan.splits + split;
      float* out = a.plan.partial_out + slot * D + 2 * t;
      for (int dt = 0; dt < kDTiles; ++dt) {
        out[8 * dt] = o[dt][2 * r];
        out[8 * dt + 1] = o[dt][2 * r + 1];
      }
      if (t == 0) {
        a.plan.partial_ml[slot * 2] = m[r] * kLn2;
        a.plan.partial_ml[slot * 2 + 1] = l[r];
      }
    }
  }
}

}  // namespace tessera::kernels::cuda::mma
