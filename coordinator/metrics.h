// Prometheus metrics: counters, gauges and histograms in labelled families, rendered in the text
// exposition format 0.0.4 (what vLLM's /metrics serves and Prometheus scrapes). Written here, not
// taken from prometheus-cpp, which Debian 12 does not package (docs/decisions/0007-serving.md).
//
// Names are given whole, as they appear in the output ("vllm:prompt_tokens_total"). A family's
// label names are fixed when it is added; WithLabels returns the child for one set of values,
// creating it on first use (children live as long as the registry; the reference stays valid).
// Thread-safe: updates are lock-free atomics on the child; adding families, WithLabels and
// Render take the registry's mutex.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace tessera::coordinator {

class Counter {
 public:
  void Increment(double by = 1.0);  // by >= 0 (negative values are ignored)
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double by);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Cumulative buckets with the upper bounds given (ascending; +Inf is implied), sum and count.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);
  const std::vector<double>& upper_bounds() const { return upper_bounds_; }
  // Per bucket (not cumulative; the last is +Inf), sum, count: a consistent-enough snapshot.
  std::vector<uint64_t> bucket_counts() const;
  double sum() const { return sum_.load(std::memory_order_relaxed); }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> upper_bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // upper_bounds_.size() + 1
  std::atomic<double> sum_{0.0};
  std::atomic<uint64_t> count_{0};
};

template <typename Metric>
class Family {
 public:
  // The child for `label_values` (one per label name, in order; a TESSERA_CHECK guards the
  // count — a programming error, never input).
  Metric& WithLabels(const std::vector<std::string>& label_values);

 private:
  friend class MetricsRegistry;
  Family(std::string name, std::string help, std::vector<std::string> label_names,
         std::function<std::unique_ptr<Metric>()> make)
      : name_(std::move(name)),
        help_(std::move(help)),
        label_names_(std::move(label_names)),
        make_(std::move(make)) {}

  std::string name_;
  std::string help_;
  std::vector<std::string> label_names_;
  std::function<std::unique_ptr<Metric>()> make_;
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<Metric>> children_ ABSL_GUARDED_BY(mu_);
};

class MetricsRegistry {
 public:
  // A name already added is a programming error (TESSERA_CHECK). Label names must be valid
  // Prometheus label names; metric names may contain ':' (vLLM's "vllm:" prefix).
  Family<Counter>& AddCounter(std::string name, std::string help,
                              std::vector<std::string> label_names);
  Family<Gauge>& AddGauge(std::string name, std::string help, std::vector<std::string> label_names);
  Family<Histogram>& AddHistogram(std::string name, std::string help,
                                  std::vector<std::string> label_names,
                                  std::vector<double> upper_bounds);
  // A gauge read at render time (e.g. from a replica's last heartbeat): `read` returns one value
  // per label-value set; it is called under the registry's mutex and must not call back into it.
  void AddGaugeCallback(
      std::string name, std::string help, std::vector<std::string> label_names,
      std::function<std::vector<std::pair<std::vector<std::string>, double>>()> read);

  // Every family in the order added: # HELP, # TYPE, then the samples (histograms as _bucket with
  // le, _sum, _count). Label values are escaped (\\, \", \n); values printed so that they parse
  // back exactly (+Inf, -Inf, NaN as Prometheus spells them).
  std::string Render() const;

 private:
  enum class Kind { kCounter, kGauge, kHistogram, kGaugeCallback };
  struct Entry {
    Kind kind;
    std::unique_ptr<Family<Counter>> counter;
    std::unique_ptr<Family<Gauge>> gauge;
    std::unique_ptr<Family<Histogram>> histogram;
    // kGaugeCallback only.
    std::string name;
    std::string help;
    std::vector<std::string> label_names;
    std::function<std::vector<std::pair<std::vector<std::string>, double>>()> read;
  };
  void CheckNewName(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera::coordinator
