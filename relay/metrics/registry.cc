#include "metrics/registry.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>

namespace outbox::metrics {

namespace {

bool name_char(char c, bool first, bool colon) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':') ||
         (!first && c >= '0' && c <= '9');
}

bool valid_name(const std::string& name, bool colon) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (!name_char(name[i], i == 0, colon)) return false;
  }
  return true;
}

const char* type_name(int type) {
  switch (type) {
    case 0:
      return "counter";
    case 1:
      return "gauge";
    default:
      return "histogram";
  }
}

// {a="x",b="y"} with `extra` (le) last; empty when there are no labels at all.
std::string label_text(const Labels& labels, const std::string& extra_name = "",
                       const std::string& extra_value = "") {
  if (labels.empty() && extra_name.empty()) return "";
  std::string out = "{";
  bool first = true;
  auto add = [&](const std::string& k, const std::string& v) {
    if (!first) out += ',';
    first = false;
    out += k;
    out += "=\"";
    out += escape_label_value(v);
    out += '"';
  };
  for (const auto& [k, v] : labels) add(k, v);
  if (!extra_name.empty()) add(extra_name, extra_value);
  out += '}';
  return out;
}

}  // namespace

bool valid_metric_name(const std::string& name) { return valid_name(name, true); }
bool valid_label_name(const std::string& name) {
  return valid_name(name, false) && name.rfind("__", 0) != 0;
}

namespace {

// Backslash and newline always; the double quote too inside a label value.
std::string escape(const std::string& text, bool quote) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '\\' || (quote && c == '"')) {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string escape_label_value(const std::string& value) { return escape(value, true); }

std::string escape_help(const std::string& text) { return escape(text, false); }

std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    return std::to_string(static_cast<long long>(v));
  }
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  if (ec != std::errc()) return "NaN";
  return std::string(buf, end);
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    if (!std::isfinite(bounds_[i]) || (i > 0 && bounds_[i] <= bounds_[i - 1])) {
      throw std::invalid_argument("histogram bounds must be finite and strictly increasing");
    }
  }
}

void Histogram::observe(double v) noexcept {
  // The first bucket whose bound is >= v (le: less than or equal); past all: +Inf only.
  auto it = std::lower_bound(bounds_.begin(), bounds_.end(), v);
  std::size_t index = static_cast<std::size_t>(it - bounds_.begin());
  std::lock_guard lock(mutex_);
  ++counts_[index];
  sum_ += v;
  ++count_;
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.bounds = bounds_;
  std::lock_guard lock(mutex_);
  std::uint64_t running = 0;
  for (std::uint64_t c : counts_) {
    running += c;
    s.cumulative.push_back(running);
  }
  s.sum = sum_;
  s.count = count_;
  return s;
}

std::vector<double> exponential_buckets(double start, double factor, int count) {
  std::vector<double> out;
  double v = start;
  for (int i = 0; i < count; ++i, v *= factor) out.push_back(v);
  return out;
}

Registry::Series& Registry::series(const std::string& name, const std::string& help, Type type,
                                   const Labels& labels, const std::vector<double>& bounds) {
  std::lock_guard lock(mutex_);
  auto family = std::find_if(families_.begin(), families_.end(),
                             [&](const Family& f) { return f.name == name; });
  if (family == families_.end()) {
    if (!valid_metric_name(name)) throw std::invalid_argument("invalid metric name " + name);
    families_.push_back(Family{name, help, type, bounds, {}});
    family = families_.end() - 1;
  } else if (family->type != type || family->help != help) {
    throw std::invalid_argument("metric " + name + " registered twice, differently");
  }
  for (auto& s : family->series) {
    if (s.labels == labels) return s;
  }
  for (const auto& [k, v] : labels) {
    if (!valid_label_name(k) || (type == Type::histogram && k == "le")) {
      throw std::invalid_argument("invalid label name " + k + " of " + name);
    }
  }
  Series& s = family->series.emplace_back();
  s.labels = labels;
  switch (type) {
    case Type::counter:
      s.counter = std::make_unique<Counter>();
      break;
    case Type::gauge:
      s.gauge = std::make_unique<Gauge>();
      break;
    case Type::histogram:
      s.histogram = std::make_unique<Histogram>(family->bounds);
      break;
  }
  return s;
}

Counter& Registry::counter(const std::string& name, const std::string& help, const Labels& labels) {
  return *series(name, help, Type::counter, labels, {}).counter;
}

Gauge& Registry::gauge(const std::string& name, const std::string& help, const Labels& labels) {
  return *series(name, help, Type::gauge, labels, {}).gauge;
}

Histogram& Registry::histogram(const std::string& name, const std::string& help,
                               const std::vector<double>& bounds, const Labels& labels) {
  return *series(name, help, Type::histogram, labels, bounds).histogram;
}

std::string Registry::expose() const {
  std::lock_guard lock(mutex_);
  std::string out;
  for (const Family& f : families_) {
    out += "# HELP " + f.name + " " + escape_help(f.help) + "\n";
    out += "# TYPE " + f.name + " " + type_name(static_cast<int>(f.type)) + "\n";
    for (const Series& s : f.series) {
      switch (f.type) {
        case Type::counter:
          out += f.name + label_text(s.labels) + " " + std::to_string(s.counter->value()) + "\n";
          break;
        case Type::gauge:
          out += f.name + label_text(s.labels) + " " + format_value(s.gauge->value()) + "\n";
          break;
        case Type::histogram: {
          Histogram::Snapshot snap = s.histogram->snapshot();
          for (std::size_t i = 0; i <= snap.bounds.size(); ++i) {
            std::string le = i < snap.bounds.size() ? format_value(snap.bounds[i]) : "+Inf";
            out += f.name + "_bucket" + label_text(s.labels, "le", le) + " " +
                   std::to_string(snap.cumulative[i]) + "\n";
          }
          out += f.name + "_sum" + label_text(s.labels) + " " + format_value(snap.sum) + "\n";
          out += f.name + "_count" + label_text(s.labels) + " " + std::to_string(snap.count) + "\n";
          break;
        }
      }
    }
  }
  return out;
}

}  // namespace outbox::metrics
