// The real clock behind core::Clock.
#pragma once

#include <algorithm>
#include <thread>

#include "core/ports.h"

namespace outbox::core {

class SteadyClock : public Clock {
 public:
  std::chrono::steady_clock::time_point now() const override {
    return std::chrono::steady_clock::now();
  }
  void sleep_for(std::chrono::milliseconds d, const std::function<bool()>& wake) override {
    // Sleeps in short slices so that a stop request is seen within 50 ms.
    auto deadline = now() + d;
    while (!wake() && now() < deadline) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now());
      std::this_thread::sleep_for(std::min(left, std::chrono::milliseconds(50)));
    }
  }
};

}  // namespace outbox::core
