// Exponential backoff between retries of an unavailable dependency.
#pragma once

#include <algorithm>
#include <chrono>

namespace outbox::core {

//! Doubles from `initial` up to `max`; reset() after a success. Not thread-safe.
class Backoff {
 public:
  Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max)
      : initial_(initial), max_(max), next_(initial) {}

  //! The pause to take now; the one after it is twice as long (capped).
  std::chrono::milliseconds next() {
    auto current = next_;
    next_ = std::min(max_, next_ * 2);
    return current;
  }
  void reset() { next_ = initial_; }

 private:
  std::chrono::milliseconds initial_;
  std::chrono::milliseconds max_;
  std::chrono::milliseconds next_;
};

}  // namespace outbox::core
