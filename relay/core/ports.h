// The seams between the relay's core and the outside world. The core only sees these
// interfaces; pg/ and kafka/ implement them, and the unit tests substitute fakes.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
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

//! The outbox table. Used from the relay's one worker thread. Two lifecycles:
//!  - one batch at a time (read_ahead() false; no production store any more): begin_batch,
//!    then exactly one of finish_batch or abort_batch;
//!  - pipelined (read_ahead() true, both modes: PgOutboxStore and pg::ReplicationSource):
//!    begin_batch and read_after are plain reads that hold nothing, any number of them may
//!    be answered at once, and outcomes are recorded in groups with record_outcome, in any
//!    order. begin_batch reads "by state", with nothing in flight: a row read before and not
//!    recorded is taken as not delivered and read again. A by-state read followed by
//!    record_outcome of its rows (in one or several groups), without read_after, is a valid
//!    use on its own. The core does not call finish_batch and abort_batch here; both stores
//!    implement them as record_outcome and nothing.
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
  //! Whether this store supports the pipelined lifecycle (read_after, record_outcome per
  //! group, several reads unanswered at once).
  virtual bool read_ahead() const { return false; }
  //! As begin_batch, but only rows whose id is above `after_id` (an index range scan), and
  //! only if exactly `pending_upto` pending rows of topics not skipped have ids up to
  //! `after_id` (the relay's own, in flight); otherwise none. A transaction that commits late
  //! may hold rows on both sides of `after_id`: its rows below must be sent first (per-key
  //! order), so the relay drains and reads by state (begin_batch) when this returns nothing.
  virtual std::vector<OutboxEvent> read_after(std::int64_t after_id, std::size_t pending_upto,
                                              std::size_t limit, std::size_t max_bytes,
                                              const std::vector<std::string>& skip_topics) {
    (void)after_id, (void)pending_upto, (void)limit, (void)max_bytes, (void)skip_topics;
    return {};
  }
  //! Records an outcome whose finish_batch failed, in a transaction of its own, with no batch
  //! open. Idempotent: recording it again changes nothing more. Throws UnavailableError; then
  //! nothing was recorded.
  //! A row of the outcome that is gone (VanishedRow: no row has its id, or the row with its id
  //! is another event, as outcome.rows says) is no failure: the rest is recorded, and the
  //! gone rows are kept for take_vanished(). Anything else that matches fewer rows than given
  //! (a row dead-lettered by someone else, a row changed meanwhile) is an UnavailableError.
  virtual void record_outcome(const BatchOutcome& outcome) = 0;
  //! The rows that the finish_batch and record_outcome calls which succeeded since the last
  //! call found gone, and forgets them. Never throws.
  virtual std::vector<VanishedRow> take_vanished() { return {}; }
  //! Blocks until new rows may be pending (true: a hint came) or `timeout` passed (false).
  virtual bool wait_for_rows(std::chrono::milliseconds timeout) = 0;
  //! Called often (about every 100 ms) while a batch waits for Kafka, so a source can keep
  //! its connection alive (replication: status updates before wal_sender_timeout). Never
  //! throws; a failure shows at the next call that does I/O.
  virtual void keep_alive() noexcept {}
};

//! One answered message: the tag it was sent with, and what Kafka said.
struct Completion {
  std::uint64_t tag = 0;
  DeliveryResult result;
};

//! Kafka, asynchronously. Used from the relay's one worker thread. Messages are handed over
//! with send() as soon as they are read; their answers come back from poll(), each with the
//! tag it was sent with, messages of one partition in the order they were sent.
class Publisher {
 public:
  virtual ~Publisher() = default;
  //! Hands `message` over. No copy is made: `message` must stay alive and unchanged until
  //! poll() has returned its completion. Never throws: a message the publisher cannot take
  //! (the producer cannot be created, a local check fails) comes back failed from poll().
  //! May block while the local queue is full, serving answers meanwhile.
  virtual void send(const Message& message, std::uint64_t tag) = 0;
  //! The completions that are ready, waiting up to `timeout` for the first one when none
  //! is. Never reports ok for a message Kafka did not acknowledge.
  virtual std::vector<Completion> poll(std::chrono::milliseconds timeout) = 0;
  //! Gives up on every message sent and not answered yet (shutdown): each comes back from
  //! poll() soon, as a transient failure unless Kafka acknowledged it meanwhile.
  virtual void purge() = 0;
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
