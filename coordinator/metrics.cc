#include "coordinator/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/check.h"

namespace tessera::coordinator {
namespace {

void AtomicAdd(std::atomic<double>& target, double by) {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + by, std::memory_order_relaxed)) {
  }
}

// Values as Prometheus parses them back: integers (exactly representable, |v| < 2^53) without a
// fraction or exponent, everything else in the shortest form that round-trips.
void AppendValue(std::string& out, double value) {
  if (std::isnan(value)) {
    out += "NaN";
    return;
  }
  if (std::isinf(value)) {
    out += value > 0 ? "+Inf" : "-Inf";
    return;
  }
  constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53
  if (value == std::trunc(value) && std::fabs(value) < kMaxExactInteger) {
    if (value == 0.0) {
      out += std::signbit(value) ? "-0" : "0";
      return;
    }
    absl::StrAppend(&out, static_cast<int64_t>(value));
    return;
  }
  char buffer[64];
  const std::to_chars_result result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  TESSERA_CHECK(result.ec == std::errc()) << "to_chars failed for a double";
  out.append(buffer, result.ptr);
}

std::string FormatValue(double value) {
  std::string out;
  AppendValue(out, value);
  return out;
}

// HELP text: backslash and newline escaped.
void AppendEscapedHelp(std::string& out, absl::string_view help) {
  for (const char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

// Label values: backslash, double quote and newline escaped.
void AppendEscapedLabelValue(std::string& out, absl::string_view value) {
  for (const char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

bool IsValidLabelName(absl::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    const bool digit = c >= '0' && c <= '9';
    if (!alpha && !(digit && i > 0)) return false;
  }
  // Names starting with "__" are reserved; "le" is the histogram's own label.
  return !(name.size() >= 2 && name[0] == '_' && name[1] == '_');
}

bool IsValidMetricName(absl::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    const bool digit = c >= '0' && c <= '9';
    if (!alpha && !(digit && i > 0)) return false;
  }
  return true;
}

void AppendHeader(std::string& out, absl::string_view name, absl::string_view help,
                  absl::string_view type) {
  absl::StrAppend(&out, "# HELP ", name, " ");
  AppendEscapedHelp(out, help);
  absl::StrAppend(&out, "\n# TYPE ", name, " ", type, "\n");
}

// One sample line. `extra_name`/`extra_value`: one more label after the family's (histogram le).
void AppendSample(std::string& out, absl::string_view name, absl::string_view suffix,
                  const std::vector<std::string>& label_names,
                  const std::vector<std::string>& label_values, absl::string_view extra_name,
                  absl::string_view extra_value, double value) {
  absl::StrAppend(&out, name, suffix);
  const bool has_extra = !extra_name.empty();
  if (!label_names.empty() || has_extra) {
    out += '{';
    for (size_t i = 0; i < label_names.size(); ++i) {
      if (i > 0) out += ',';
      absl::StrAppend(&out, label_names[i], "=\"");
      AppendEscapedLabelValue(out, label_values[i]);
      out += '"';
    }
    if (has_extra) {
      if (!label_names.empty()) out += ',';
      absl::StrAppend(&out, extra_name, "=\"");
      AppendEscapedLabelValue(out, extra_value);
      out += '"';
    }
    out += '}';
  }
  out += ' ';
  AppendValue(out, value);
  out += '\n';
}

void CheckNames(const std::string& name, const std::vector<std::string>& label_names) {
  TESSERA_CHECK(IsValidMetricName(name)) << "invalid metric name '" << name << "'";
  for (const std::string& label : label_names) {
    TESSERA_CHECK(IsValidLabelName(label))
        << "invalid label name '" << label << "' in metric '" << name << "'";
  }
}

}  // namespace

void Counter::Increment(double by) {
  if (!(by >= 0.0)) return;  // negative or NaN
  AtomicAdd(value_, by);
}

void Gauge::Add(double by) { AtomicAdd(value_, by); }

Histogram::Histogram(std::vector<double> upper_bounds) : upper_bounds_(std::move(upper_bounds)) {
  // +Inf is implied; tolerate it given explicitly as the last bound.
  if (!upper_bounds_.empty() && std::isinf(upper_bounds_.back()) && upper_bounds_.back() > 0) {
    upper_bounds_.pop_back();
  }
  for (size_t i = 0; i < upper_bounds_.size(); ++i) {
    TESSERA_CHECK(!std::isnan(upper_bounds_[i])) << "histogram bound is NaN";
    if (i > 0) {
      TESSERA_CHECK(upper_bounds_[i - 1] < upper_bounds_[i])
          << "histogram bounds must be strictly ascending";
    }
  }
  buckets_ = std::make_unique<std::atomic<uint64_t>[]>(upper_bounds_.size() + 1);
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) buckets_[i].store(0);
}

void Histogram::Observe(double value) {
  // The first bucket whose bound is >= value (le semantics); NaN lands in +Inf.
  const size_t index = std::isnan(value)
                           ? upper_bounds_.size()
                           : static_cast<size_t>(std::lower_bound(upper_bounds_.begin(),
                                                                  upper_bounds_.end(), value) -
                                                 upper_bounds_.begin());
  buckets_[index].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, value);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::bucket_counts() const {
  std::vector<uint64_t> counts(upper_bounds_.size() + 1);
  for (size_t i = 0; i < counts.size(); ++i) {
    counts[i] = buckets_[i].load(std::memory_order_relaxed);
  }
  return counts;
}

template <typename Metric>
Metric& Family<Metric>::WithLabels(const std::vector<std::string>& label_values) {
  TESSERA_CHECK_EQ(label_values.size(), label_names_.size())
      << "wrong number of label values for metric '" << name_ << "'";
  absl::MutexLock lock(&mu_);
  auto it = children_.find(label_values);
  if (it == children_.end()) {
    it = children_.emplace(label_values, make_()).first;
  }
  return *it->second;
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

void MetricsRegistry::CheckNewName(const std::string& name) const {
  for (const Entry& entry : entries_) {
    const std::string* existing = nullptr;
    switch (entry.kind) {
      case Kind::kCounter:
        existing = &entry.counter->name_;
        break;
      case Kind::kGauge:
        existing = &entry.gauge->name_;
        break;
      case Kind::kHistogram:
        existing = &entry.histogram->name_;
        break;
      case Kind::kGaugeCallback:
        existing = &entry.name;
        break;
    }
    TESSERA_CHECK(*existing != name) << "metric '" << name << "' added twice";
  }
}

Family<Counter>& MetricsRegistry::AddCounter(std::string name, std::string help,
                                             std::vector<std::string> label_names) {
  CheckNames(name, label_names);
  absl::MutexLock lock(&mu_);
  CheckNewName(name);
  Entry entry{.kind = Kind::kCounter};
  entry.counter.reset(new Family<Counter>(std::move(name), std::move(help), std::move(label_names),
                                          [] { return std::make_unique<Counter>(); }));
  entries_.push_back(std::move(entry));
  return *entries_.back().counter;
}

Family<Gauge>& MetricsRegistry::AddGauge(std::string name, std::string help,
                                         std::vector<std::string> label_names) {
  CheckNames(name, label_names);
  absl::MutexLock lock(&mu_);
  CheckNewName(name);
  Entry entry{.kind = Kind::kGauge};
  entry.gauge.reset(new Family<Gauge>(std::move(name), std::move(help), std::move(label_names),
                                      [] { return std::make_unique<Gauge>(); }));
  entries_.push_back(std::move(entry));
  return *entries_.back().gauge;
}

Family<Histogram>& MetricsRegistry::AddHistogram(std::string name, std::string help,
                                                 std::vector<std::string> label_names,
                                                 std::vector<double> upper_bounds) {
  CheckNames(name, label_names);
  for (const std::string& label : label_names) {
    TESSERA_CHECK(label != "le") << "histogram '" << name << "' may not have a label 'le'";
  }
  // Validate the bounds now (the first child is made later, on WithLabels).
  const Histogram validated(std::move(upper_bounds));
  absl::MutexLock lock(&mu_);
  CheckNewName(name);
  Entry entry{.kind = Kind::kHistogram};
  entry.histogram.reset(new Family<Histogram>(
      std::move(name), std::move(help), std::move(label_names),
      [bounds = validated.upper_bounds()] { return std::make_unique<Histogram>(bounds); }));
  entries_.push_back(std::move(entry));
  return *entries_.back().histogram;
}

void MetricsRegistry::AddGaugeCallback(
    std::string name, std::string help, std::vector<std::string> label_names,
    std::function<std::vector<std::pair<std::vector<std::string>, double>>()> read) {
  CheckNames(name, label_names);
  absl::MutexLock lock(&mu_);
  CheckNewName(name);
  Entry entry{.kind = Kind::kGaugeCallback};
  entry.name = std::move(name);
  entry.help = std::move(help);
  entry.label_names = std::move(label_names);
  entry.read = std::move(read);
  entries_.push_back(std::move(entry));
}

std::string MetricsRegistry::Render() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  for (const Entry& entry : entries_) {
    switch (entry.kind) {
      case Kind::kCounter: {
        const Family<Counter>& family = *entry.counter;
        AppendHeader(out, family.name_, family.help_, "counter");
        absl::MutexLock family_lock(&family.mu_);
        for (const auto& [labels, counter] : family.children_) {
          AppendSample(out, family.name_, "", family.label_names_, labels, "", "",
                       counter->value());
        }
        break;
      }
      case Kind::kGauge: {
        const Family<Gauge>& family = *entry.gauge;
        AppendHeader(out, family.name_, family.help_, "gauge");
        absl::MutexLock family_lock(&family.mu_);
        for (const auto& [labels, gauge] : family.children_) {
          AppendSample(out, family.name_, "", family.label_names_, labels, "", "", gauge->value());
        }
        break;
      }
      case Kind::kHistogram: {
        const Family<Histogram>& family = *entry.histogram;
        AppendHeader(out, family.name_, family.help_, "histogram");
        absl::MutexLock family_lock(&family.mu_);
        for (const auto& [labels, histogram] : family.children_) {
          // Cumulative counts from one read of the buckets; _count is their total, so the +Inf
          // bucket and _count agree even while other threads observe.
          const std::vector<uint64_t> counts = histogram->bucket_counts();
          const std::vector<double>& bounds = histogram->upper_bounds();
          uint64_t cumulative = 0;
          for (size_t i = 0; i < counts.size(); ++i) {
            cumulative += counts[i];
            const std::string le = i < bounds.size() ? FormatValue(bounds[i]) : "+Inf";
            AppendSample(out, family.name_, "_bucket", family.label_names_, labels, "le", le,
                         static_cast<double>(cumulative));
          }
          AppendSample(out, family.name_, "_sum", family.label_names_, labels, "", "",
                       histogram->sum());
          // _count equals the +Inf bucket, as Prometheus requires, even mid-update.
          AppendSample(out, family.name_, "_count", family.label_names_, labels, "", "",
                       static_cast<double>(cumulative));
        }
        break;
      }
      case Kind::kGaugeCallback: {
        AppendHeader(out, entry.name, entry.help, "gauge");
        for (const auto& [labels, value] : entry.read()) {
          TESSERA_CHECK_EQ(labels.size(), entry.label_names.size())
              << "gauge callback '" << entry.name << "' returned the wrong number of labels";
          AppendSample(out, entry.name, "", entry.label_names, labels, "", "", value);
        }
        break;
      }
    }
  }
  return out;
}

}  // namespace tessera::coordinator
