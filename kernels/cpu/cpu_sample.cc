// Sampling on the CPU (semantics in kernels/op_params.h, SampleParams).
//
// Filtering and drawing need prefixes of the tokens ordered by descending probability. Instead
// of sorting the whole vocabulary, SelectPrefix() finds where a cumulative sum crosses a target
// quickselect-style, in expected linear time: the chosen token is the one a sort would give
// (sums may associate differently, which matters only within rounding of a boundary).
// Probabilities are f32 exp((logit - max) / temperature); sums are in double.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_internal.h"

namespace tessera::kernels::cpu {
namespace {

struct Candidate {
  float prob;  // unnormalised: exp((logit - max) / temperature)
  int32_t index;
};

// The sampling order: descending probability, ties by ascending index (a strict total order).
inline bool Before(const Candidate& a, const Candidate& b) {
  return a.prob > b.prob || (a.prob == b.prob && a.index < b.index);
}

// Moves the candidates of c[lo, hi) that satisfy `pred` to the front of the range and returns
// where the others start. Branch-free (Lomuto with an unconditional swap): the predicate is a
// coin flip on the data, so branches would mispredict half the time.
template <typename Pred>
int64_t Partition(Candidate* c, int64_t lo, int64_t hi, Pred pred) {
  int64_t split = lo;
  for (int64_t i = lo; i < hi; ++i) {
    const Candidate x = c[i];
    const bool moves = pred(x);
    c[i] = c[split];
    c[split] = x;
    split += moves ? 1 : 0;
  }
  return split;
}

double Mass(const Candidate* c, int64_t n) {
  double sums[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int t = 0; t < 4; ++t) sums[t] += c[i + t].prob;
  }
  for (; i < n; ++i) sums[0] += c[i].prob;
  return (sums[0] + sums[1]) + (sums[2] + sums[3]);
}

// Rearranges c[0, n) and returns the smallest count such that the `count` first candidates in
// the sampling order have a sum reaching `target` (sum >= target, or > with `strict`), or n if
// none does. Afterwards c[0, count) holds exactly those candidates, the last of them (the one
// that crosses) at c[count - 1]. The caller promises that c[0, head) all come before c[head, n)
// in the order; the search starts by deciding which side the crossing is on.
int64_t SelectPrefix(Candidate* c, int64_t n, double target, bool strict, int64_t head) {
  const auto reaches = [&](double sum) { return strict ? sum > target : sum >= target; };
  int64_t lo = 0;
  int64_t hi = n;
  double base = 0.0;  // sum of c[0, lo), all before c[lo, hi) in the order
  if (head > 0 && head < n) {
    const double above = Mass(c, head);
    if (reaches(above)) {
      hi = head;
    } else {
      base = above;
      lo = head;
    }
  }
  while (hi - lo > 32) {
    // Median of three as the pivot, moved to c[hi - 1]; then a Lomuto partition.
    const int64_t mid = lo + (hi - lo) / 2;
    if (Before(c[mid], c[lo])) std::swap(c[mid], c[lo]);
    if (Before(c[hi - 1], c[lo])) std::swap(c[hi - 1], c[lo]);
    if (Before(c[mid], c[hi - 1])) std::swap(c[mid], c[hi - 1]);
    const Candidate pivot = c[hi - 1];
    double left = 0.0;
    const int64_t split = Partition(c, lo, hi - 1, [&](const Candidate& x) {
      const bool before = Before(x, pivot);
      left += before ? x.prob : 0.0;
      return before;
    });
    std::swap(c[split], c[hi - 1]);
    if (reaches(base + left)) {
      hi = split;  // the crossing is before the pivot
    } else if (reaches(base + left + pivot.prob)) {
      return split + 1;  // the pivot crosses
    } else {
      base += left + pivot.prob;
      lo = split + 1;
    }
  }
  std::sort(c + lo, c + hi, Before);
  double sum = base;
  for (int64_t i = lo; i < hi; ++i) {
    sum += c[i].prob;
    if (reaches(sum)) return i + 1;
  }
  return hi;  // rounding kept the target out of reach: the last candidate of the range
}

int32_t Greedy(const float* logits, int64_t vocab) {
  int64_t best = 0;
  while (best < vocab && std::isnan(logits[best])) ++best;
  if (best == vocab) return 0;
  for (int64_t i = best + 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

int32_t Draw(const float* logits, int64_t vocab, float temperature, int32_t top_k, float top_p,
             double u, std::vector<Candidate>& candidates) {
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < vocab; ++i) max = std::max(max, logits[i]);  // NaN is skipped
  if (!std::isfinite(max)) return Greedy(logits, vocab);
  // Language models put nearly all the mass on a few tokens: candidates at or above kThreshold
  // (the most likely token has 1) go to the front, the long tail to the back, so that every
  // search below can settle on the small front first.
  constexpr float kThreshold = 0x1p-14f;
  candidates.resize(static_cast<size_t>(vocab));
  Candidate* c = candidates.data();
  int64_t head = 0;
  int64_t tail = vocab;
  for (int64_t i = 0; i < vocab; ++i) {
    const float prob = std::exp((logits[i] - max) / temperature);
    if (prob >= kThreshold) {
      c[head++] = {prob, static_cast<int32_t>(i)};
    } else if (prob > 0.0f) {  // zero and NaN are dropped
      c[--tail] = {prob, static_cast<int32_t>(i)};
    }
  }
  std::copy(c + tail, c + vocab, c + head);
  int64_t n = head + (vocab - tail);
  if (top_k > 0 && top_k < n) {
    if (top_k <= head) {
      std::nth_element(c, c + top_k - 1, c + head, Before);
      head = top_k;
    } else {
      std::nth_element(c + head, c + top_k - 1, c + n, Before);
    }
    n = top_k;
  }
  double mass = Mass(c, n);
  if (top_p < 1.0f) {
    n = SelectPrefix(c, n, static_cast<double>(top_p) * mass, /*strict=*/false, head);
    head = std::min(head, n);
    mass = Mass(c, n);
  }
  const int64_t chosen = SelectPrefix(c, n, u * mass, /*strict=*/true, head);
  return c[chosen - 1].index;
}

// log_softmax(logits)[index]: f32 exponentials summed in double.
float LogProb(const SimdKernels& simd, const float* logits, int64_t vocab, int32_t index) {
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < vocab; ++i) max = std::max(max, logits[i]);
  if (!std::isfinite(max)) return std::isnan(logits[index]) ? logits[index] : -std::log(vocab);
  const double sum = simd.sum_exp_shifted(logits, vocab, max);
  return static_cast<float>(static_cast<double>(logits[index]) - max - std::log(sum));
}

}  // namespace

absl::Status CpuSample(Backend& backend, const SampleParams& p, Stream&) {
  const CpuBackend& cpu = CpuBackend::From(backend);
  const int64_t num_seqs = p.logits.dim(0);
  const int64_t vocab = p.logits.dim(1);
  const int threads = ThreadsFor(cpu, num_seqs, vocab * 16);
#pragma omp parallel num_threads(threads)
  {
    std::vector<Candidate> candidates;
#pragma omp for schedule(dynamic, 1)
    for (int64_t s = 0; s < num_seqs; ++s) {
      const float* logits = p.logits.data_as<float>() + s * p.logits.stride(0);
      const float temperature = p.temperature.data_as<float>()[s];
      int32_t token;
      if (!(temperature > 0.0f)) {  // <= 0 or NaN
        token = Greedy(logits, vocab);
      } else {
        const double u =
            SampleUniform(p.seeds.data_as<int64_t>()[s], p.steps.data_as<int64_t>()[s]);
        token = Draw(logits, vocab, temperature, p.top_k.data_as<int32_t>()[s],
                     p.top_p.data_as<float>()[s], u, candidates);
      }
      p.output_ids.data_as<int32_t>()[s] = token;
      if (!p.output_logprobs.empty()) {
        p.output_logprobs.data_as<float>()[s] = LogProb(cpu.simd(), logits, vocab, token);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels::cpu
