// What both relay loops (BatchRelay, TransactionalRelay) do the same way: wait for rows,
// pause with backoff, and run one step with the failure handling of run().
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>

#include "common/logging.h"
#include "core/backoff.h"
#include "core/observer.h"
#include "core/ports.h"

namespace outbox::core {

//! Waits up to `interval` for the store's hint, in slices so that a stop request is seen
//! promptly however long the interval; ticks the observer meanwhile.
inline void wait_for_rows(OutboxStore& store, Clock& clock, RelayObserver& observer,
                          std::chrono::milliseconds interval, const std::atomic<bool>& stop) {
  constexpr std::chrono::milliseconds kSlice{200};
  auto deadline = clock.now() + interval;
  while (!stop.load()) {
    observer.on_tick();
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock.now());
    if (left <= std::chrono::milliseconds::zero()) return;
    if (store.wait_for_rows(std::min(left, kSlice))) return;
  }
}

//! A backoff pause, in slices that tick, so a long pause never looks like a stuck loop.
inline void pause_ticking(Clock& clock, RelayObserver& observer, std::chrono::milliseconds pause,
                          const std::atomic<bool>& stop) {
  auto until = clock.now() + pause;
  while (!stop.load() && clock.now() < until) {
    observer.on_tick();
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clock.now());
    clock.sleep_for(std::min(left, std::chrono::milliseconds(500)), [&] { return stop.load(); });
  }
}

//! One turn of run(): `step`; a standby calls again at once (the store already waited on
//! the leader lock, and a pause would only delay the take-over); any other UnavailableError
//! backs off. FatalError goes through.
inline void step_or_back_off(const std::function<void()>& step, Backoff& backoff, Clock& clock,
                             RelayObserver& observer, const std::atomic<bool>& stop) {
  observer.on_tick();
  try {
    step();
  } catch (const StandbyError& e) {
    backoff.reset();
    observer.on_failure(e.what());
  } catch (const UnavailableError& e) {
    auto pause = backoff.next();
    logging::get("core")->warn("{}; retrying in {} ms", e.what(), pause.count());
    observer.on_failure(e.what());
    pause_ticking(clock, observer, pause, stop);
  }
}

}  // namespace outbox::core
