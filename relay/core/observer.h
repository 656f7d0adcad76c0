// What the relay loop reports while it works, for metrics and health. The loop calls these
// from its one worker thread; an implementation must be cheap, thread-safe towards its own
// readers (an HTTP thread), and must never throw. Every method has a no-op default.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

#include "core/event.h"

namespace outbox::core {

class RelayObserver {
 public:
  virtual ~RelayObserver() = default;
  //! The loop is alive and not stuck: called at least every second while the loop runs,
  //! whatever it waits on (Kafka, an idle wait, a backoff).
  virtual void on_tick() noexcept {}
  //! A read from the store returned `rows` rows, `bytes` bytes (core::event_bytes), in `took`.
  virtual void on_read(std::size_t rows, std::size_t bytes,
                       std::chrono::nanoseconds took) noexcept {
    (void)rows, (void)bytes, (void)took;
  }
  //! Kafka answered one message of row topic `topic`, `took` after it was handed over.
  virtual void on_delivery(const std::string& topic, bool ok, FailureKind kind,
                           std::chrono::nanoseconds took) noexcept {
    (void)topic, (void)ok, (void)kind, (void)took;
  }
  //! An outcome was recorded in PostgreSQL (marked published, retried, dead-lettered).
  virtual void on_recorded(std::size_t published, std::size_t retried, std::size_t dead_lettered,
                           std::chrono::nanoseconds took) noexcept {
    (void)published, (void)retried, (void)dead_lettered, (void)took;
  }
  //! `n` rows of row topic `topic` were dead-lettered.
  virtual void on_dead_lettered(const std::string& topic, std::size_t n) noexcept {
    (void)topic, (void)n;
  }
  //! Recording an outcome found `n` of its rows gone (core::VanishedRow), each logged.
  virtual void on_vanished(std::size_t n) noexcept { (void)n; }
  //! Row topic `topic` started (true) or stopped (false) waiting for its Kafka topic.
  virtual void on_topic_blocked(const std::string& topic, bool blocked) noexcept {
    (void)topic, (void)blocked;
  }
  //! A step failed and the loop backs off: PostgreSQL or Kafka unavailable, or a standby.
  virtual void on_failure(const std::string& what) noexcept { (void)what; }
  //! Kafka acknowledged messages again after failures (or for the first time).
  virtual void on_kafka_ok() noexcept {}
  //! Replication mode: the relay has waited `waited` for transactions that committed and are
  //! not visible to other sessions yet (a synchronous standby's wait); 0 once they are.
  virtual void on_visibility_wait(std::chrono::nanoseconds waited) noexcept { (void)waited; }
};

}  // namespace outbox::core
