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

#include "absl/strings/str_cat.h"
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
             float min_p, double u, std::vector<Candidate>& candidates) {
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
  // min-p relative to the most likely token, whose unnormalised probability is exactly 1; capped
  // at 1 so that the most likely token always stays.
  const float floor = std::min(min_p, 1.0f);
  for (int64_t i = 0; i < vocab; ++i) {
    const float prob = std::exp((logits[i] - max) / temperature);
    if (prob < floor) continue;
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

// log_softmax of one row: logprob(i) = logits[i] - max - log(sum), f32 exponentials summed in
// double. Without a finite maximum every token gets -log(vocab) (NaN stays NaN).
class LogSoftmax {
 public:
  LogSoftmax(const SimdKernels& simd, const float* logits, int64_t vocab)
      : logits_(logits), vocab_(vocab) {
    max_ = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < vocab; ++i) max_ = std::max(max_, logits[i]);
    if (std::isfinite(max_)) log_sum_ = std::log(simd.sum_exp_shifted(logits, vocab, max_));
  }
  float operator()(int32_t index) const {
    const float x = logits_[index];
    if (!std::isfinite(max_)) return std::isnan(x) ? x : -std::log(static_cast<float>(vocab_));
    return static_cast<float>(static_cast<double>(x) - max_ - log_sum_);
  }

 private:
  const float* logits_;
  int64_t vocab_;
  float max_;
  double log_sum_ = 0.0;
};

// The n most likely tokens (descending logit, ties by index, NaN last) and their logprobs.
void TopLogprobs(const LogSoftmax& log_softmax, const float* logits, int64_t vocab, int64_t n,
                 int32_t* ids, float* logprobs, std::vector<Candidate>& scratch) {
  scratch.resize(static_cast<size_t>(vocab));
  Candidate* c = scratch.data();
  for (int64_t i = 0; i < vocab; ++i) {
    const float x = logits[i];
    c[i] = {std::isnan(x) ? -std::numeric_limits<float>::infinity() : x, static_cast<int32_t>(i)};
  }
  std::nth_element(c, c + n - 1, c + vocab, Before);
  std::sort(c, c + n, Before);
  for (int64_t j = 0; j < n; ++j) {
    ids[j] = c[j].index;
    logprobs[j] = log_softmax(c[j].index);
  }
}

}  // namespace

absl::Status CpuSample(Backend& backend, const SampleParams& p, Stream&) {
  const CpuBackend& cpu = CpuBackend::From(backend);
  const int64_t num_seqs = p.logits.dim(0);
  const int64_t vocab = p.logits.dim(1);
  const int64_t top_n = p.output_top_ids.empty() ? 0 : p.output_top_ids.dim(1);
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
        const float min_p = p.min_p.empty() ? 0.0f : p.min_p.data_as<float>()[s];
        token = Draw(logits, vocab, temperature, p.top_k.data_as<int32_t>()[s],
                     p.top_p.data_as<float>()[s], min_p, u, candidates);
      }
      p.output_ids.data_as<int32_t>()[s] = token;
      if (p.output_logprobs.empty() && top_n == 0) continue;
      const float* raw = p.raw_logits.empty()
                             ? logits
                             : p.raw_logits.data_as<float>() + s * p.raw_logits.stride(0);
      const LogSoftmax log_softmax(cpu.simd(), raw, vocab);
      if (!p.output_logprobs.empty()) p.output_logprobs.data_as<float>()[s] = log_softmax(token);
      if (top_n > 0) {
        TopLogprobs(log_softmax, raw, vocab, top_n,
                    p.output_top_ids.data_as<int32_t>() + s * p.output_top_ids.stride(0),
                    p.output_top_logprobs.data_as<float>() + s * p.output_top_logprobs.stride(0),
                    candidates);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CpuApplyPenalties(Backend&, const ApplyPenaltiesParams& p, Stream&) {
  const int64_t rows = p.logits.dim(0);
  const int64_t vocab = p.logits.dim(1);
  const int32_t* ids = p.token_ids.data_as<int32_t>();
  const int32_t* counts = p.output_counts.data_as<int32_t>();
  const int32_t* start = p.token_start.data_as<int32_t>();
  const int32_t* banned = p.banned_ids.empty() ? nullptr : p.banned_ids.data_as<int32_t>();
  const int32_t* banned_start =
      p.banned_start.empty() ? nullptr : p.banned_start.data_as<int32_t>();
  // Ranges and ids live in memory: check them all before writing anything.
  auto check_ranges = [&](const char* field, const int32_t* first, const int32_t* ids_of,
                          int64_t total) -> absl::Status {
    for (int64_t r = 0; r <= rows; ++r) {
      const bool ok =
          (r == 0 ? first[0] == 0 : first[r] >= first[r - 1]) && (r < rows || first[rows] == total);
      if (!ok) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ApplyPenalties: field ", field, " expected non-decreasing offsets from 0 to ", total,
            ", got ", first[r], " at ", r));
      }
    }
    for (int64_t e = 0; e < total; ++e) {
      if (ids_of[e] < 0 || ids_of[e] >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("ApplyPenalties: token id ", ids_of[e],
                                                       " outside the vocabulary [0, ", vocab, ")"));
      }
    }
    return absl::OkStatus();
  };
  if (absl::Status s = check_ranges("token_start", start, ids, p.token_ids.dim(0)); !s.ok()) {
    return s;
  }
  if (banned != nullptr) {
    if (absl::Status s = check_ranges("banned_start", banned_start, banned, p.banned_ids.dim(0));
        !s.ok()) {
      return s;
    }
  }
  const int32_t* bias_ids = p.bias_ids.empty() ? nullptr : p.bias_ids.data_as<int32_t>();
  const int32_t* bias_start = p.bias_start.empty() ? nullptr : p.bias_start.data_as<int32_t>();
  const float* bias_values = p.bias_values.empty() ? nullptr : p.bias_values.data_as<float>();
  if (bias_ids != nullptr) {
    if (absl::Status s = check_ranges("bias_start", bias_start, bias_ids, p.bias_ids.dim(0));
        !s.ok()) {
      return s;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float repetition = p.repetition_penalty.data_as<float>()[r];
    if (!(repetition > 0.0f) || !std::isfinite(repetition)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ApplyPenalties: repetition_penalty expected finite and > 0, got ", repetition));
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* logits = p.logits.data_as<float>() + r * p.logits.stride(0);
    const float repetition = p.repetition_penalty.data_as<float>()[r];
    const float presence = p.presence_penalty.data_as<float>()[r];
    const float frequency = p.frequency_penalty.data_as<float>()[r];
    if (bias_ids != nullptr) {  // before the penalties, as vLLM's sampler
      for (int32_t e = bias_start[r]; e < bias_start[r + 1]; ++e) {
        logits[bias_ids[e]] += bias_values[e];
      }
    }
    for (int32_t e = start[r]; e < start[r + 1]; ++e) {
      // In vLLM's order and arithmetic: scale by 1/penalty or penalty, then two subtractions.
      float x = logits[ids[e]];
      x *= x > 0.0f ? 1.0f / repetition : repetition;
      x -= frequency * static_cast<float>(counts[e]);
      x -= counts[e] > 0 ? presence : 0.0f;
      logits[ids[e]] = x;
    }
    if (banned != nullptr) {
      for (int32_t b = banned_start[r]; b < banned_start[r + 1]; ++b) {
        logits[banned[b]] = -std::numeric_limits<float>::infinity();
      }
    }
    if (!p.allowed_mask.empty()) {
      const auto* mask = reinterpret_cast<const uint32_t*>(p.allowed_mask.data_as<int32_t>()) +
                         r * p.allowed_mask.stride(0);
      for (int64_t t = 0; t < vocab; ++t) {
        if (((mask[t / 32] >> (t % 32)) & 1u) == 0) {
          logits[t] = -std::numeric_limits<float>::infinity();
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels::cpu
