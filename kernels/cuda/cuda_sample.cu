// Sampling and penalties on CUDA (semantics in kernels/op_params.h).
//
// Sample: one block per row. Candidates are ordered by a 64-bit key, (probability bits << 32) |
// (~index), so "descending probability, ties by ascending index" is "descending key" and every
// filter (top-k, top-p, the inverse-CDF draw) keeps the tokens whose key is at least some
// cutoff. Each cutoff is found by a radix select over the key, most significant byte first:
// a pass histograms the candidates under the current prefix (count, mass and largest key per
// byte value) and walks the buckets from the top until the running mass (or count) reaches the
// target. Probabilities are f32 exp((logit - max) / T) and sums are in double, as on the CPU;
// the uniform is SampleUniform(seed, step), computed here with the same SplitMix64, so a
// seeded request draws the token the CPU backend draws (sums associate differently, which
// matters only within rounding of a boundary).
#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_common.cuh"

namespace tessera::kernels::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kBuckets = 256;

// kernels::SplitMix64 and kernels::SampleUniform, bit for bit.
__device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  uint64_t z = x + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__device__ __forceinline__ double SampleUniform(int64_t seed, int64_t step) {
  const uint64_t bits =
      SplitMix64(static_cast<uint64_t>(seed) ^ SplitMix64(static_cast<uint64_t>(step)));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// Float bits mapped so that unsigned order is numeric order (-0 counts as +0).
__device__ __forceinline__ uint32_t OrderedBits(float x) {
  if (x == 0.0f) x = 0.0f;
  const uint32_t bits = __float_as_uint(x);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ uint64_t MakeKey(float value, int64_t index) {
  return (static_cast<uint64_t>(OrderedBits(value)) << 32) |
         (0xffffffffull - static_cast<uint64_t>(index));
}

__device__ __forceinline__ int32_t KeyIndex(uint64_t key) {
  return static_cast<int32_t>(0xffffffffull - (key & 0xffffffffull));
}

__device__ uint64_t BlockMaxKey(uint64_t value, unsigned long long* scratch) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) {
    const uint64_t other = __shfl_xor_sync(0xffffffffu, value, offset);
    value = other > value ? other : value;
  }
  __syncthreads();
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  value = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : 0ull;
  for (int offset = 16; offset > 0; offset /= 2) {
    const uint64_t other = __shfl_xor_sync(0xffffffffu, value, offset);
    value = other > value ? other : value;
  }
  return value;
}

struct Shared {
  float reduce_f[32];
  double reduce_d[32];
  unsigned long long reduce_k[32];
  int count[kBuckets];
  double weight[kBuckets];
  unsigned long long top_key[kBuckets];
  unsigned long long prefix;
  double base;
  int done;
};

// One row's candidates: probability of token i, whether it survives min-p, and its key.
struct Row {
  const float* logits;
  int64_t vocab;
  float max;
  float temperature;
  float floor;  // min-p relative to the most likely token (probability 1), at most 1

  // The exponential in double, rounded once to f32: what glibc's expf (the CPU backend's, within
  // 0.502 ulp) gives but for rare half-way cases. CUDA's expf is off by up to 2 ulp, enough to
  // reorder near-ties and move min-p and cumulative boundaries, so seeded draws would differ.
  __device__ float Prob(int64_t i) const {
    return static_cast<float>(exp(static_cast<double>((logits[i] - max) / temperature)));
  }
  // As the CPU: dropped when below the floor, zero or NaN.
  __device__ bool Candidate(float prob) const { return !(prob < floor) && prob > 0.0f; }
};

// The key of the candidate (key >= cutoff) at which the running weight over descending keys
// first reaches `target`: weight is the probability (by_mass) or 1 (a count); reaching is
// `> target` with `strict`, else `>=`. When rounding keeps the target out of reach, the last
// candidate. Every thread gets the result.
__device__ uint64_t SelectKey(const Row& row, uint64_t cutoff, bool by_mass, double target,
                              bool strict, Shared& sh) {
  if (threadIdx.x == 0) {
    sh.prefix = 0;
    sh.base = 0.0;
    sh.done = 0;
  }
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < kBuckets; b += blockDim.x) {
      sh.count[b] = 0;
      sh.weight[b] = 0.0;
      sh.top_key[b] = 0;
    }
    __syncthreads();
    const uint64_t prefix = sh.prefix;
    for (int64_t i = threadIdx.x; i < row.vocab; i += blockDim.x) {
      const float prob = row.Prob(i);
      if (!row.Candidate(prob)) continue;
      const uint64_t key = MakeKey(prob, i);
      if (key < cutoff) continue;
      if (shift < 56 && (key >> (shift + 8)) != (prefix >> (shift + 8))) continue;
      const int b = static_cast<int>((key >> shift) & 0xff);
      atomicAdd(&sh.count[b], 1);
      atomicAdd(&sh.weight[b], by_mass ? static_cast<double>(prob) : 1.0);
      atomicMax(&sh.top_key[b], static_cast<unsigned long long>(key));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double cumulative = sh.base;
      int chosen = -1;
      int lowest = -1;
      for (int b = kBuckets - 1; b >= 0; --b) {
        if (sh.count[b] == 0) continue;
        lowest = b;
        const double sum = cumulative + sh.weight[b];
        if (strict ? sum > target : sum >= target) {
          chosen = b;
          break;
        }
        cumulative = sum;
      }
      if (chosen < 0) {  // out of reach: the last candidate lies in the lowest bucket
        chosen = lowest;
        cumulative -= sh.weight[lowest];
      }
      sh.base = cumulative;
      if (sh.count[chosen] == 1) {
        sh.prefix = sh.top_key[chosen];
        sh.done = 1;
      } else {
        sh.prefix = prefix | (static_cast<uint64_t>(chosen) << shift);
      }
    }
    __syncthreads();
    if (sh.done) break;
  }
  const uint64_t result = sh.prefix;
  __syncthreads();
  return result;
}

// Sum of the probabilities (or the count) of the candidates with key >= cutoff.
__device__ double MassFrom(const Row& row, uint64_t cutoff, bool by_mass, Shared& sh) {
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < row.vocab; i += blockDim.x) {
    const float prob = row.Prob(i);
    if (row.Candidate(prob) && MakeKey(prob, i) >= cutoff) {
      sum += by_mass ? static_cast<double>(prob) : 1.0;
    }
  }
  return BlockSum(sum, sh.reduce_d);
}

// Greedy: the largest non-NaN logit, lowest index among equals; 0 when every logit is NaN.
__device__ int32_t Greedy(const float* logits, int64_t vocab, Shared& sh) {
  uint64_t best = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float x = logits[i];
    if (isnan(x)) continue;
    const uint64_t key = MakeKey(x, i);
    best = key > best ? key : best;
  }
  best = BlockMaxKey(best, sh.reduce_k);
  return best == 0 ? 0 : KeyIndex(best);
}

__device__ int32_t Draw(const Row& row, int32_t top_k, float top_p, double u, Shared& sh) {
  uint64_t cutoff = 0;
  if (top_k > 0) {
    const double candidates = MassFrom(row, 0, /*by_mass=*/false, sh);
    if (static_cast<double>(top_k) < candidates) {
      cutoff = SelectKey(row, 0, /*by_mass=*/false, static_cast<double>(top_k), false, sh);
    }
  }
  double mass = MassFrom(row, cutoff, /*by_mass=*/true, sh);
  if (top_p < 1.0f) {
    cutoff = SelectKey(row, cutoff, true, static_cast<double>(top_p) * mass, false, sh);
    mass = MassFrom(row, cutoff, true, sh);
  }
  return KeyIndex(SelectKey(row, cutoff, true, u * mass, /*strict=*/true, sh));
}

// log_softmax of one row as the CPU computes it: f32 exponentials summed in double.
struct LogSoftmax {
  const float* logits;
  int64_t vocab;
  float max;
  double log_sum;

  __device__ float operator()(int32_t index) const {
    const float x = logits[index];
    if (!isfinite(max)) return isnan(x) ? x : -logf(static_cast<float>(vocab));
    return static_cast<float>(static_cast<double>(x) - max - log_sum);
  }
};

__device__ float RowMax(const float* logits, int64_t vocab, Shared& sh) {
  float max = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) max = fmaxf(max, logits[i]);
  return BlockMax(max, sh.reduce_f);
}

__global__ void __launch_bounds__(kThreads) SampleKernel(SampleArgs a) {
  __shared__ Shared sh;
  const int64_t r = blockIdx.x;
  const float* logits = a.logits + r * a.logits_stride;
  const float temperature = a.temperature[r];
  const float max = RowMax(logits, a.vocab, sh);
  int32_t token;
  if (!(temperature > 0.0f) || !isfinite(max)) {  // <= 0 or NaN, or no finite maximum
    token = Greedy(logits, a.vocab, sh);
  } else {
    const float min_p = a.min_p != nullptr ? a.min_p[r] : 0.0f;
    const Row row{logits, a.vocab, max, temperature, (1.0f < min_p) ? 1.0f : min_p};
    token = Draw(row, a.top_k[r], a.top_p[r], SampleUniform(a.seeds[r], a.steps[r]), sh);
  }
  if (threadIdx.x == 0) a.output_ids[r] = token;
  if (a.output_logprobs == nullptr && a.top_n == 0) return;

  const float* raw = a.raw_logits != nullptr ? a.raw_logits + r * a.raw_stride : logits;
  LogSoftmax log_softmax{raw, a.vocab, RowMax(raw, a.vocab, sh), 0.0};
  if (isfinite(log_softmax.max)) {
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < a.vocab; i += blockDim.x) {
      sum += static_cast<double>(expf(raw[i] - log_softmax.max));
    }
    log_softmax.log_sum = log(BlockSum(sum, sh.reduce_d));
  }
  if (a.output_logprobs != nullptr && threadIdx.x == 0) {
    a.output_logprobs[r] = log_softmax(token);
  }
  // Top-n: n rounds of "the largest key below the previous one" (NaN ranks as -inf).
  uint64_t previous = ~0ull;
  for (int64_t j = 0; j < a.top_n; ++j) {
    uint64_t best = 0;
    for (int64_t i = threadIdx.x; i < a.vocab; i += blockDim.x) {
      const float x = raw[i];
      const uint64_t key = MakeKey(isnan(x) ? -INFINITY : x, i);
      if (key < previous && key > best) best = key;
    }
    best = BlockMaxKey(best, sh.reduce_k);
    previous = best;
    if (threadIdx.x == 0) {
      const int32_t index = KeyIndex(best);
      a.top_ids[r * a.top_ids_stride + j] = index;
      a.top_logprobs[r * a.top_logprobs_stride + j] = log_softmax(index);
    }
  }
}

// One block per row: the logit bias of its distinct tokens, then the penalties of its distinct
// tokens (each listed once in each list, so no two threads write the same logit at once), then
// its bans.
__global__ void ApplyPenaltiesKernel(ApplyPenaltiesArgs a) {
  const int64_t r = blockIdx.x;
  float* logits = a.logits + r * a.logits_stride;
  const float repetition = a.repetition[r];
  const float presence = a.presence[r];
  const float frequency = a.frequency[r];
  if (a.bias_ids != nullptr) {
    for (int64_t e = a.bias_start[r] + threadIdx.x; e < a.bias_start[r + 1]; e += blockDim.x) {
      logits[a.bias_ids[e]] += a.bias_values[e];
    }
    __syncthreads();
  }
  for (int64_t e = a.token_start[r] + threadIdx.x; e < a.token_start[r + 1]; e += blockDim.x) {
    const int32_t id = a.token_ids[e];
    const int32_t count = a.output_counts[e];
    float x = logits[id];
    x *= x > 0.0f ? 1.0f / repetition : repetition;
    // __fmul_rn: no FMA contraction, so the product is rounded as on the CPU (bit-exact).
    x -= __fmul_rn(frequency, static_cast<float>(count));
    x -= count > 0 ? presence : 0.0f;
    logits[id] = x;
  }
  if (a.banned_ids != nullptr) {
    __syncthreads();
    for (int64_t b = a.banned_start[r] + threadIdx.x; b < a.banned_start[r + 1]; b += blockDim.x) {
      logits[a.banned_ids[b]] = -INFINITY;
    }
  }
  if (a.allowed_mask == nullptr) return;
  __syncthreads();
  const uint32_t* mask = a.allowed_mask + r * a.mask_stride;
  for (int64_t t = threadIdx.x; t < a.vocab; t += blockDim.x) {
    if (((mask[t >> 5] >> (t & 31)) & 1u) == 0) logits[t] = -INFINITY;
  }
}

}  // namespace

cudaError_t LaunchSample(const SampleArgs& args, cudaStream_t stream) {
  if (args.rows == 0) return cudaSuccess;
  SampleKernel<<<static_cast<unsigned>(args.rows), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t LaunchApplyPenalties(const ApplyPenaltiesArgs& args, cudaStream_t stream) {
  if (args.rows == 0) return cudaSuccess;
  ApplyPenaltiesKernel<<<static_cast<unsigned>(args.rows), 256, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace tessera::kernels::cuda
