// A small metrics registry and its Prometheus text exposition (format 0.0.4).
//
// Families are registered once, at start, in the order they are exposed; series of a family
// may be added later (a new label value). Updates are lock-free for counters and gauges and
// take a per-histogram mutex for histograms; expose() may run on any thread at any time.
// Names and label names must match Prometheus' rules ([a-zA-Z_:][a-zA-Z0-9_:]*, checked at
// registration: a bad name is a programming error and throws std::invalid_argument).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace outbox::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

//! Only goes up (a restart starts it at 0 again, which Prometheus' rate() understands).
class Counter {
 public:
  void inc(std::uint64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

//! Any value, set as it is measured.
class Gauge {
 public:
  void set(double v) noexcept { value_.store(v, std::memory_order_relaxed); }
  double value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

//! Observations counted into buckets with upper bounds (le); exposed cumulatively, with the
//! +Inf bucket, _sum and _count.
class Histogram {
 public:
  //! `bounds` strictly increasing and finite (+Inf is implied).
  explicit Histogram(std::vector<double> bounds);
  void observe(double v) noexcept;

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<std::uint64_t> cumulative;  //!< one per bound, then +Inf (== count)
    double sum = 0;
    std::uint64_t count = 0;
  };
  Snapshot snapshot() const;

 private:
  const std::vector<double> bounds_;
  mutable std::mutex mutex_;
  std::vector<std::uint64_t> counts_;  //!< per bucket (not cumulative), last one: above all
  double sum_ = 0;
  std::uint64_t count_ = 0;
};

//! Bounds start, start*factor, ... (count of them).
std::vector<double> exponential_buckets(double start, double factor, int count);

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  //! The series of family `name` with `labels`, created on first use. Asking for an existing
  //! family with another type or help throws std::invalid_argument. References stay valid
  //! for the registry's lifetime.
  Counter& counter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& gauge(const std::string& name, const std::string& help, const Labels& labels = {});
  //! Every series of one histogram family shares the bounds of its first registration.
  Histogram& histogram(const std::string& name, const std::string& help,
                       const std::vector<double>& bounds, const Labels& labels = {});

  //! Every family, HELP and TYPE lines first, in registration order.
  std::string expose() const;

 private:
  enum class Type { counter, gauge, histogram };
  struct Series {
    Labels labels;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
  };
  struct Family {
    std::string name;
    std::string help;
    Type type;
    std::vector<double> bounds;
    std::deque<Series> series;
  };
  Series& series(const std::string& name, const std::string& help, Type type, const Labels& labels,
                 const std::vector<double>& bounds);

  mutable std::mutex mutex_;
  std::deque<Family> families_;
};

//! A label value as the text format wants it: \ " and newline escaped.
std::string escape_label_value(const std::string& value);
//! A HELP text: \ and newline escaped.
std::string escape_help(const std::string& text);
//! A sample value: integers without a fraction, +Inf, -Inf, NaN, else the shortest exact form.
std::string format_value(double v);
//! [a-zA-Z_:][a-zA-Z0-9_:]* (metric names); label names exclude ':'.
bool valid_metric_name(const std::string& name);
bool valid_label_name(const std::string& name);

}  // namespace outbox::metrics
