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

#include "core/checkpoint.h"
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

//! The outbox table. Used from the relay's one worker thread. begin_batch and read_after are
//! plain reads that hold nothing; any number of them may be answered at once, and outcomes
//! are recorded in groups with record_outcome, in any order. begin_batch reads "by state",
//! with nothing in flight: a row read before and not recorded is taken as not delivered and
//! read again. A by-state read followed by record_outcome of its rows (in one or several
//! groups), without read_after, is a valid use on its own. Implemented by pg::PgOutboxStore
//! (polling) and pg::ReplicationSource (replication).
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
  //! As begin_batch, but only rows whose id is above `after_id` (an index range scan), and
  //! only if exactly `pending_upto` pending rows of topics not skipped have ids up to
  //! `after_id` (the relay's own, in flight); otherwise none. A transaction that commits late
  //! may hold rows on both sides of `after_id`: its rows below must be sent first (per-key
  //! order), so the relay drains and reads by state (begin_batch) when this returns nothing.
  virtual std::vector<OutboxEvent> read_after(std::int64_t after_id, std::size_t pending_upto,
                                              std::size_t limit, std::size_t max_bytes,
                                              const std::vector<std::string>& skip_topics) = 0;
  //! Records an outcome (a group of answered rows), in a transaction of its own. Idempotent:
  //! recording it again changes nothing more. Throws UnavailableError; then nothing was recorded.
  //! A row of the outcome that is gone (VanishedRow: no row has its id, or the row with its id
  //! is another event, as outcome.rows says) is no failure: the rest is recorded, and the
  //! gone rows are kept for take_vanished(). Anything else that matches fewer rows than given
  //! (a row dead-lettered by someone else, a row changed meanwhile) is an UnavailableError.
  virtual void record_outcome(const BatchOutcome& outcome) = 0;
  //! The rows that the record_outcome calls which succeeded since the last
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

//! exactly_once: a newer producer with the same transactional.id exists: this one is a zombie
//! and must neither commit nor mark. The relay drops its producer and recovers before sending
//! again (which, as a standby, it cannot: the read that precedes recovery needs the leader
//! role).
class FencedError : public UnavailableError {
 public:
  using UnavailableError::UnavailableError;
};

//! What the checkpoint topic says about this transactional.id, read after init().
struct CheckpointRead {
  //! false: another producer's open transaction holds the topic's last stable offset below
  //! its end, so a newer checkpoint of ours may be hidden: nothing may be marked yet.
  bool proven = true;
  std::string record;  //!< the newest checkpoint record of our key, "" when there is none
  std::string hidden;  //!< when not proven: what holds it (offsets), for the log
};

//! Kafka with transactions (delivery.guarantee: exactly_once): a Publisher whose send() is
//! valid only inside a transaction (begin() .. commit() or abort()). Used from the relay's one
//! worker thread.
class TransactionalPublisher : public Publisher {
 public:
  //! (Re-)creates the producer and calls init_transactions: every older producer with the
  //! same transactional.id is fenced and its open transaction aborted (or completed, if it
  //! was already committing). Messages of the previous producer must all have been answered.
  //! Checks the checkpoint topic first (one partition, cleanup.policy=compact): FatalError
  //! when it is not usable. Throws UnavailableError.
  virtual void init() = 0;
  //! The newest checkpoint of this transactional.id committed before init (read
  //! read_committed up to the end of the topic as init left it), or not proven when an open
  //! transaction of another producer hides part of that range. Throws UnavailableError.
  virtual CheckpointRead last_checkpoint() = 0;
  //! The largest checkpoint record (bytes) the producer and the checkpoint topic accept;
  //! known after init(). The relay bounds the rows of a transaction by it.
  virtual std::size_t max_checkpoint_bytes() const = 0;
  //! Throws UnavailableError (then recovery is due).
  virtual void begin() = 0;
  //! Sends the checkpoint record `checkpoint` in the open transaction without waiting for its
  //! answer, so that it travels with the transaction's last messages instead of after them.
  //! At most once per transaction; commit() then takes the same text. Its answer is never one
  //! of poll()'s: commit() waits for it. A transaction aborted later aborts it too.
  virtual void send_checkpoint(const std::string& checkpoint) = 0;
  //! Adds the checkpoint record `checkpoint` (unless send_checkpoint sent it) and commits.
  //! Returns only when Kafka committed.
  //! Throws FencedError (a newer producer exists) or UnavailableError (aborted, or outcome
  //! unknown): then nothing may be marked. FatalError when the checkpoint record itself is
  //! refused (too large): sending it again could never succeed.
  virtual void commit(const std::string& checkpoint) = 0;
  //! Aborts the open transaction; false when that failed (recovery is due). Never throws.
  virtual bool abort() noexcept = 0;
  //! Called at least every few seconds while init/commit/abort wait for the cluster, so the
  //! loop stays alive (health, the replication connection's status updates).
  void set_tick(std::function<void()> tick) { tick_ = std::move(tick); }

 protected:
  void tick() const {
    if (tick_) tick_();
  }

 private:
  std::function<void()> tick_;
};

//! exactly_once: marks rows published after recovery: only those still pending (a row the
//! checkpoint names may have been marked and even deleted by retention since), and only when
//! the row's event_id is the checkpoint's (an id reused after a rewind of the database names
//! another event). Throws UnavailableError. Implemented by pg::PgRecoveryMarker.
class RecoveryMarker {
 public:
  struct Result {
    std::size_t marked = 0;  //!< pending, same event: marked now
    std::size_t reused = 0;  //!< pending under a checkpoint's id, another event: left pending
  };
  virtual ~RecoveryMarker() = default;
  //! Rows with an empty event_id (a format-1 checkpoint) are matched by id alone.
  virtual Result mark_published(const std::vector<CheckpointRow>& rows) = 0;
};

//! What a store's session holds: nothing yet (not connected, or the last session failed),
//! standby (another relay leads), or the leader role (the leader lock; replication: and the
//! slot). Values as pg::SessionRole and metrics::Role.
enum class Role : int { disconnected = 0, standby = 1, leader = 2 };

//! Who leads, read from any thread (metrics, retention). Implemented by the stores.
class Leadership {
 public:
  virtual ~Leadership() = default;
  //! The session's role now.
  virtual Role role() const = 0;
  //! Whether this process runs the deployment's chores (retention): the leader, or, sharded,
  //! the holder of shard 0.
  virtual bool runs_chores() const { return role() == Role::leader; }
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
