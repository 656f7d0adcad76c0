// What the relay loop (BatchRelay) does in several places: wait for rows,
// pause with backoff, and run one step with the failure handling of run().
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

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

//! After an outcome was recorded: the rows its recording found gone (VanishedRow), each
//! logged at warn with its event id and topic, and counted.
struct VanishedCount {
  std::size_t total = 0;
  std::size_t acknowledged = 0;  //!< of which Kafka acknowledged (not marked published)
};
inline VanishedCount report_vanished(OutboxStore& store, RelayObserver& observer) {
  VanishedCount count;
  std::vector<VanishedRow> gone = store.take_vanished();
  if (gone.empty()) return count;
  auto log = logging::get("core");
  for (const VanishedRow& v : gone) {
    std::string event = v.event_id.empty() ? "unknown" : v.event_id;
    std::string topic = v.topic.empty() ? "unknown" : v.topic;
    std::string where = v.recorded ? "recorded in outbox.vanished for `audit`"
                                   : "not recorded for `audit` (no table outbox.vanished: "
                                     "run outbox-relay migrate)";
    std::string now = v.reused_by.empty() ? "no row has this id any more"
                                          : "the row with this id is now event " + v.reused_by +
                                                " (the id was used again), which stays pending";
    if (v.acknowledged) {
      log->warn(
          "row {} (event {}, topic {}) vanished: Kafka acknowledged its message, and when it "
          "was to be marked published {} (deleted, or the database went back in time: a "
          "failover to a replica that lacked the last commits, a restore); its message stays in "
          "Kafka; {}; the relay goes on",
          v.id, event, topic, now, where);
    } else {
      log->warn(
          "row {} (event {}, topic {}) vanished: its failed delivery was to be recorded, and {}; "
          "{}; the relay goes on",
          v.id, event, topic, now, where);
    }
  }
  observer.on_vanished(gone.size());
  count.total = gone.size();
  count.acknowledged = static_cast<std::size_t>(
      std::count_if(gone.begin(), gone.end(), [](const VanishedRow& v) { return v.acknowledged; }));
  return count;
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
