// The seams between the relay's core and the outside world. The core only sees these
// interfaces; pg/ and kafka/ implement them, and the unit tests substitute fakes.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/event.h"

namespace outbox::core {

//! A dependency (PostgreSQL, Kafka) failed in a way that a later retry may cure.
class UnavailableError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

//! PostgreSQL answers, but another relay holds the leader lock: this one stands by. The
//! store already waited on the lock (about a second) before throwing, so the loop may call
//! again at once instead of backing off; the lock is granted the moment the leader's session
//! ends, and a backoff pause would only delay the take-over.
class StandbyError : public UnavailableError {
 public:
  using UnavailableError::UnavailableError;
};

//! A condition no retry can cure (a replication slot that was invalidated or is held by
//! another process): the relay stops with a non-zero exit and this message.
class FatalError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

//! The outbox table. Lifecycle: begin_batch, then exactly one of finish_batch or
//! abort_batch. Used from the relay's one worker thread.
class OutboxStore {
 public:
  virtual ~OutboxStore() = default;
  //! Returns pending rows in id order: at most `limit` rows, and rows only while the
  //! event_bytes() of those before stay below `max_bytes` (so the first row always comes,
  //! and a batch whose bytes reach max_bytes may have more waiting), leaving out rows whose
  //! row topic is in `skip_topics` (they stay pending, in order). No PostgreSQL transaction
  //! stays open while the batch waits for Kafka. Throws UnavailableError when PostgreSQL
  //! cannot be reached.
  virtual std::vector<OutboxEvent> begin_batch(std::size_t limit, std::size_t max_bytes,
                                               const std::vector<std::string>& skip_topics) = 0;
  //! Records the outcome and releases the rows, atomically. Throws UnavailableError; then
  //! nothing was recorded and the rows stay pending.
  virtual void finish_batch(const BatchOutcome& outcome) = 0;
  //! Releases the rows without recording anything. Never throws.
  virtual void abort_batch() noexcept = 0;
  //! Records an outcome whose finish_batch failed, in a transaction of its own, with no batch
  //! open. Idempotent: recording it again changes nothing more. Throws UnavailableError; then
  //! nothing was recorded.
  virtual void record_outcome(const BatchOutcome& outcome) = 0;
  //! Blocks until new rows may be pending (true: a hint came) or `timeout` passed (false).
  virtual bool wait_for_rows(std::chrono::milliseconds timeout) = 0;
  //! Called often (about every 100 ms) while a batch waits for Kafka, so a source can keep
  //! its connection alive (replication: status updates before wal_sender_timeout). Never
  //! throws; a failure shows at the next call that does I/O.
  virtual void keep_alive() noexcept {}
};

//! Kafka. Used from the relay's one worker thread.
class Publisher {
 public:
  virtual ~Publisher() = default;
  //! Sends `messages` in order and waits for each one's delivery report, returning one
  //! result per message. Waiting ends early only when `give_up` returns true, after which
  //! undelivered messages come back as transient failures. Never reports ok for a message
  //! Kafka did not acknowledge.
  virtual std::vector<DeliveryResult> publish(const std::vector<Message>& messages,
                                              const std::function<bool()>& give_up) = 0;
  //! Asks the cluster whether Kafka topic `topic` can take messages now: nullopt if it can
  //! (or the cluster cannot say just now), else why not (unknown topic, not authorized).
  virtual std::optional<std::string> topic_problem(const std::string& topic) {
    (void)topic;
    return std::nullopt;
  }
};

//! Time, so that backoff and deadlines can be tested without waiting.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual std::chrono::steady_clock::time_point now() const = 0;
  //! Sleeps up to `d`, returning early when `wake` becomes true.
  virtual void sleep_for(std::chrono::milliseconds d, const std::function<bool()>& wake) = 0;
};

}  // namespace outbox::core
