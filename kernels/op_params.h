// Parameter structs of the backend-neutral ops (kernels/ops.h). Plain data: views, sizes and
// scalars. Conventions shared by every op:
//  - every view lives on the backend's device;
//  - the last dimension of every view is contiguous (stride 1); other dimensions may be strided,
//    so that q, k and v can be column ranges of one fused QKV output;
//  - activations and outputs are f32 on the CPU backend (f32, f16 or bf16 on CUDA); weights and
//    KV caches may be f32, f16 or bf16 and are computed in f32;
//  - "optional" views are left default-constructed (empty()) when unused.
#pragma once

#include <cstdint>

#include "common/tensor.h"

namespace tessera::kernels {

// output[i, :] = table[ids[i] - row_offset, :], or zeros when ids[i] is outside
// [row_offset, row_offset + rows): a vocab-parallel rank holds rows [row_offset, ...) only.
// Also gathers hidden-state rows (table = activations, row_offset = 0).
struct EmbeddingParams {
  TensorView ids;            // [tokens] i32
  TensorView table;          // [rows, hidden]
  MutableTensorView output;  // [tokens, hidden]
  int64_t row_offset = 0;
};

// RMSNorm over the last dimension. With `residual` set (the fused form):
//   residual = input + residual; output = rmsnorm(residual) * weight.
// Without: output = rmsnorm(input) * weight. `output` may alias `input`.
struct RmsNormParams {
  TensorView input;            // [rows, hidden] or [rows, heads, hidden]
  MutableTensorView residual;  // optional, same shape as input
  TensorView weight;           // [hidden]
  MutableTensorView output;    // same shape as input
  float epsilon = 1e-6f;
};

// output[m, n] = sum_k input[m, k] * weight[n, k] + bias[n]  (PyTorch nn.Linear layout).
struct MatmulParams {
  TensorView input;          // [m, k]
  TensorView weight;         // [n, k], contiguous
  TensorView bias;           // optional [n]
  MutableTensorView output;  // [m, n]; must not alias input
};

// Rotary embedding as Hugging Face Llama applies it (rotate_half: the first and second halves of
// the rotary dimensions are the pairs), in place on query and key. rotary_dim = 2 * inv_freq
// elements; dimensions past rotary_dim are left as they are. The angle of token t and frequency
// j is positions[t] * inv_freq[j], computed in f32; inv_freq already carries any scaling
// (model/rope.h computes it, llama3 scaling included).
struct RopeParams {
  MutableTensorView query;  // [tokens, q_heads, head_dim]
  MutableTensorView key;    // [tokens, kv_heads, head_dim]
  TensorView positions;     // [tokens] i32
  TensorView inv_freq;      // [rotary_dim / 2] f32
};

// output = silu(gate) * up, where gate = gate_up[:, :inter] and up = gate_up[:, inter:].
struct SwigluParams {
  TensorView gate_up;        // [tokens, 2 * inter]
  MutableTensorView output;  // [tokens, inter]
};

// Writes this step's keys and values into the paged cache. The cache of one layer is
// [num_blocks, kv_heads, block_size, head_dim] (block-major, then head-major: the slice of a block
// for a range of heads is contiguous). Token t goes to block slot_mapping[t] / block_size, offset
// slot_mapping[t] % block_size; a negative slot skips the token.
struct KvWriteParams {
  TensorView key;                 // [tokens, kv_heads, head_dim]
  TensorView value;               // [tokens, kv_heads, head_dim]
  TensorView slot_mapping;        // [tokens] i64
  MutableTensorView key_cache;    // [num_blocks, kv_heads, block_size, head_dim]
  MutableTensorView value_cache;  // [num_blocks, kv_heads, block_size, head_dim]
};

// Attention over the paged cache for a batch that mixes prefill chunks and decode steps.
// Sequence s owns query rows [query_start[s], query_start[s + 1]); its cache holds seq_lens[s]
// tokens (this step's included, already written by KvWrite) in the blocks block_tables[s, :].
// Query row i of s (0-based within s, q_len rows) is at position seq_lens[s] - q_len + i and
// attends causally to cache positions [0, that position]. Grouped-query attention: query head h
// reads KV head h / (q_heads / kv_heads).
struct PagedAttentionParams {
  TensorView query;          // [tokens, q_heads, head_dim]
  TensorView key_cache;      // [num_blocks, kv_heads, block_size, head_dim]
  TensorView value_cache;    // [num_blocks, kv_heads, block_size, head_dim]
  TensorView block_tables;   // [num_seqs, max_blocks_per_seq] i32
  TensorView query_start;    // [num_seqs + 1] i32, query_start[0] = 0, last = tokens
  TensorView seq_lens;       // [num_seqs] i32
  MutableTensorView output;  // [tokens, q_heads, head_dim]
  float scale = 1.0f;        // usually 1 / sqrt(head_dim)
};

// Picks one token per row of logits.
//  - temperature[s] <= 0: greedy (the lowest index among equal maxima).
//  - otherwise: probabilities softmax(logits / temperature); tokens whose probability is below
//    min_p[s] times the largest are dropped (min_p absent or <= 0: none); the rest are restricted
//    to the top_k[s] most likely (top_k <= 0: all), then to the smallest set of most likely tokens
//    whose probability reaches top_p[s] (>= 1: all), renormalised; a token is drawn by inverse CDF
//    (tokens ordered by descending probability, ties by index) with
//    u = SampleUniform(seeds[s], steps[s]). vLLM's order: temperature, min-p, top-k, top-p.
// Logprobs come from log_softmax of raw_logits when given (the model's logits before penalties:
// vLLM's "raw_logprobs"), else of logits; temperature never applies to them.
//  - output_logprobs (optional) receives the logprob of the chosen token;
//  - output_top_ids / output_top_logprobs (optional, both or neither) receive the n most likely
//    tokens of that distribution and their logprobs, in descending order (ties by index).
struct SampleParams {
  TensorView logits;                      // [num_seqs, vocab] f32
  TensorView temperature;                 // [num_seqs] f32
  TensorView top_k;                       // [num_seqs] i32
  TensorView top_p;                       // [num_seqs] f32
  TensorView seeds;                       // [num_seqs] i64
  TensorView steps;                       // [num_seqs] i64 (tokens generated so far)
  MutableTensorView output_ids;           // [num_seqs] i32
  MutableTensorView output_logprobs;      // optional [num_seqs] f32
  TensorView min_p;                       // optional [num_seqs] f32
  TensorView raw_logits;                  // optional [num_seqs, vocab] f32
  MutableTensorView output_top_ids;       // optional [num_seqs, n] i32, 1 <= n <= vocab
  MutableTensorView output_top_logprobs;  // optional [num_seqs, n] f32
};

// Adjusts logits in place as vLLM's sampler applies logit bias and penalties, then bans tokens.
// First, when bias_ids is given, for every row r and entry e in [bias_start[r], bias_start[r + 1])
// (distinct ids within a row): logits[r, bias_ids[e]] += bias_values[e]. Then for every row
// r and every entry e in [token_start[r], token_start[r + 1]) — the distinct tokens of the row's
// prompt and output, each listed once, with output_counts[e] its occurrences in the output:
//   x = logits[r, token_ids[e]];
//   x *= x > 0 ? 1 / repetition_penalty[r] : repetition_penalty[r];   (1: unchanged)
//   x -= frequency_penalty[r] * output_counts[e];
//   x -= output_counts[e] > 0 ? presence_penalty[r] : 0;
// then logits[r, banned_ids[b]] = -inf for b in [banned_start[r], banned_start[r + 1]) (min_tokens
// bans the stop tokens this way). Last, when allowed_mask is given (structured outputs),
// logits[r, t] = -inf for every t whose bit (t % 32) of allowed_mask[r, t / 32] is clear.
// Token ids outside [0, vocab), bad offsets and a repetition penalty that is not finite and > 0
// are kInvalidArgument (nothing is written then).
struct ApplyPenaltiesParams {
  MutableTensorView logits;       // [rows, vocab] f32
  TensorView repetition_penalty;  // [rows] f32, > 0
  TensorView presence_penalty;    // [rows] f32
  TensorView frequency_penalty;   // [rows] f32
  TensorView token_ids;           // [entries] i32
  TensorView output_counts;       // [entries] i32
  TensorView token_start;         // [rows + 1] i32, 0 first, entries last, non-decreasing
  TensorView banned_ids;          // optional [bans] i32
  TensorView banned_start;        // optional (with banned_ids) [rows + 1] i32
  TensorView bias_ids;            // optional [biases] i32 (OpenAI's logit_bias)
  TensorView bias_values;         // optional (with bias_ids) [biases] f32
  TensorView bias_start;          // optional (with bias_ids) [rows + 1] i32
  TensorView allowed_mask;        // optional [rows, ceil(vocab / 32)] i32 (bits; all set: no limit)
};

// The uniform draw in [0, 1) that sampling uses for (seed, step): 53 bits of
// SplitMix64(seed ^ SplitMix64(step)). Every backend uses this exact function, so a seeded
// request draws the same token whatever backend runs it.
uint64_t SplitMix64(uint64_t x);
double SampleUniform(int64_t seed, int64_t step);

}  // namespace tessera::kernels
