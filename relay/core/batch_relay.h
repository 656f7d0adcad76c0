// The relay's loop: read pending rows, hand their messages to Kafka, record the outcome.
//
// It is a pipeline. Messages are handed to the publisher as soon as their rows are read;
// while Kafka answers, the next rows are read and sent (read-ahead), and answered rows are
// recorded in groups (one transaction per group) as their reports arrive. What is in flight
// is bounded by a WINDOW: the rows from the oldest one not yet answered to the newest one
// sent, plus the rows answered and not yet recorded (at most max_in_flight_rows, answered
// ones included, so a stuck partition stops the read-ahead once the window is full, and a
// crash sends at most that many rows again), and the bytes of the unanswered ones (at most
// max_in_flight_bytes; a payload is dropped as soon as its report arrived). Both stores
// (polling and replication) read ahead; a store that cannot keep several reads open
// (OutboxStore::read_ahead() false, the fakes of the unit tests) gets a window of one
// batch: read, send, every report, finish_batch.
//
// Invariant 1: a row is recorded as published only when the publisher reported Kafka's
// acknowledgement for its message.
// Invariant 2: no late-committing row is skipped. Reads "by state" (pending, from the
// start of the table) are made whenever nothing is in flight; read-ahead reads take only
// rows above the last id read (OutboxStore::read_after), so a row that commits late with a
// smaller id is left to the next by-state read. That read is never deferred for long: a
// read-ahead that sees such a row returns nothing (below), as long as the row is pending, so
// nothing more is sent and the window drains; and after any failed delivery read-ahead
// stops. A read that reached the end of the pending rows (short) is followed by a read-ahead
// only once an answer came in since (new rows may have committed), not in a loop.
// Invariant 3: messages are handed to the publisher in id order within a read, reads in
// flight are in increasing id order, and the producer keeps each partition's order
// (idempotence, enable.gapless.guarantee, message.timeout.ms=0), so one key's events reach
// Kafka in id order. A transaction that commits late may hold ids on both sides of the
// last id read; its rows above must not go before its rows below. So a read-ahead returns
// rows only if, in the same snapshot, the pending rows up to the last id read are exactly
// the relay's own (unanswered, or answered and not recorded: a count); one more is a late
// row, and then the window drains and a read by state sends the late transaction's rows in
// id order. After any failed delivery nothing more is read until everything in flight is
// answered, then the next read starts from the oldest pending row again.
// Invariant 4: an outcome that could not be recorded (the mark failed: connection lost, a
// trigger, a revoked grant, statement_timeout) is kept and its recording retried with
// backoff before anything else is read; its messages are never sent again by this process
// for that reason, so a mark that fails every time costs no duplicates. Answers that arrive
// meanwhile join it. A row that is gone when it is marked (deleted, or the database went back
// in time: core::VanishedRow) is no failure: the store records the rest, the gone rows are
// reported (warn log with event id and topic, RelayObserver::on_vanished, outbox.vanished)
// and the relay goes on. A mark matches (id, event_id), so an id that now names another
// event is gone for the acknowledged one and the other row stays pending.
// Invariant 5: a row is dead-lettered only for a reason proven its own: checked on the row
// alone (topic name, headers, librdkafka's own size check), or an error Kafka may answer for
// a whole produce request (too large, invalid record) repeated with the row sent alone
// (nothing else in flight from its send to its answer: no read-ahead while suspects remain,
// nor while the last of them waits for its answer).
// Invariant 6: a topic that cannot take messages (unknown, not authorized, policy)
// never dead-letters its rows: it waits with its own backoff, asked about before its rows
// are sent again, while the other topics flow (its rows are skipped when reading).
// Invariant 7: memory is bounded by the window (rows and bytes) plus one read (batch_size,
// batch_max_bytes); messages live in the window until their report arrived (librdkafka
// points into them without copying), whatever Kafka does.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "core/backoff.h"
#include "core/observer.h"
#include "core/ports.h"
#include "core/topic_gate.h"

namespace outbox::core {

struct BatchRelayOptions {
  std::size_t batch_size = 1000;
  std::size_t batch_max_bytes = 16 << 20;  //!< see OutboxStore::begin_batch
  std::chrono::milliseconds interval{500};
  std::chrono::milliseconds backoff_initial{200};
  std::chrono::milliseconds backoff_max{30'000};
  std::chrono::milliseconds shutdown_timeout{30'000};
  //! The window (see above); read-ahead stops at either limit.
  std::size_t max_in_flight_rows = 5'000;
  std::size_t max_in_flight_bytes = 32 << 20;
  std::map<std::string, std::string> topic_map;
  MessageFormat format;  //!< topic template, headers, key and value bytes (message_mapping.h)
};

//! What one read and the answers to its messages came to (run_batch); in the pipeline, what
//! happened since the last by-state read.
struct BatchReport {
  std::size_t read = 0;
  bool full = false;  //!< stopped at a limit (rows or bytes): more rows may be waiting
  std::size_t published = 0;
  std::size_t retried = 0;
  std::size_t dead_lettered = 0;
  std::size_t left_pending = 0;   //!< not resolved: stays pending, sent again later
  std::size_t transient = 0;      //!< of which the cluster's fault (the relay backs off)
  std::size_t topic_blocked = 0;  //!< of which waiting for their topic
  std::size_t suspects = 0;       //!< of which to be sent alone (batch-level error)
};

//! Counters since start, readable from any thread.
struct RelayCounters {
  std::atomic<std::uint64_t> published{0};
  std::atomic<std::uint64_t> dead_lettered{0};
  std::atomic<std::uint64_t> failed_attempts{0};
  std::atomic<std::uint64_t> batches{0};
  std::atomic<std::uint64_t> vanished{0};  //!< rows found gone when recorded (invariant 4)
};

//! Lifecycle: construct, run() on one thread until `stop` is set, destroy.
class BatchRelay {
 public:
  BatchRelay(OutboxStore& store, Publisher& publisher, Clock& clock, BatchRelayOptions options);
  //! Purges what is still in flight (run() left by a FatalError) and waits for the reports:
  //! librdkafka points into the messages until then.
  ~BatchRelay();
  BatchRelay(const BatchRelay&) = delete;
  BatchRelay& operator=(const BatchRelay&) = delete;

  //! One read by state, seen through without read-ahead: sent, every report awaited (until
  //! `give_up` returns true, then what is left is purged), recorded. Throws UnavailableError
  //! when PostgreSQL failed; then nothing of this batch was recorded (or, invariant 4, the
  //! outcome is kept and only its recording retried by the next call).
  BatchReport run_batch(const std::function<bool()>& give_up);

  //! Until `stop` becomes true: the pipeline, waiting for rows when idle, backing off on
  //! failures. After `stop`, what is in flight gets up to shutdown_timeout to be
  //! acknowledged, the rest is purged (its rows stay pending), and what was acknowledged is
  //! recorded; run() then returns the number of messages it had to leave unrecorded.
  std::size_t run(const std::atomic<bool>& stop);

  const RelayCounters& counters() const { return counters_; }

  //! Reports progress and health to `observer` (not owned; outlives run()). Call before run().
  void set_observer(RelayObserver* observer) {
    observer_ = observer ? observer : &no_observer_;
    topics_.set_observer(observer_);
  }

 private:
  //! One row in flight. Lives in window_ (a deque: its address never changes) until its
  //! report arrived and every row before it was answered too.
  struct InFlight {
    std::int64_t id = 0;
    std::string event_id;  //!< the event read with this id: the mark matches both
    std::string row_topic;
    Message message;  //!< librdkafka points into it until the report; emptied after
    std::size_t bytes = 0;
    std::chrono::steady_clock::time_point sent_at;
    bool answered = false;
  };

  //! One step of run(): record, read (by state or ahead), collect answers, record.
  void step(const std::atomic<bool>& stop);
  //! Reads rows (by state when `by_state`, else after the last id read) and sends them.
  void read(bool by_state);
  bool may_read_ahead() const;
  //! Rows sent and not yet recorded: the window, and what was answered but not recorded.
  std::size_t in_flight_rows() const;
  //! Polls the publisher up to `timeout` and applies the answers to the window.
  void collect(std::chrono::milliseconds timeout);
  void answer(InFlight& entry, std::uint64_t tag, const DeliveryResult& result);
  //! Records what was answered: a group (pipelined stores) or the whole batch once every
  //! message was answered (one batch at a time). Throws UnavailableError (invariant 4).
  void record(bool force);
  //! The window is empty: what the cycle since the last by-state read came to.
  void end_cycle(const std::atomic<bool>& stop);
  std::size_t shut_down();
  void idle_wait(const std::atomic<bool>& stop);
  void pause_for(std::chrono::milliseconds pause, const std::atomic<bool>& stop);
  void count(const BatchOutcome& outcome);

  OutboxStore& store_;
  Publisher& publisher_;
  Clock& clock_;
  BatchRelayOptions options_;
  const bool pipelined_;
  Backoff backoff_;
  RelayCounters counters_;

  std::deque<InFlight> window_;
  std::uint64_t front_tag_ = 1;         //!< the tag of window_.front(); tags count up
  std::size_t unanswered_ = 0;          //!< rows of window_ not answered yet
  std::size_t unanswered_bytes_ = 0;    //!< and their bytes
  std::optional<std::uint64_t> alone_;  //!< the tag sent with nothing else in flight
  BatchOutcome answered_;               //!< answered, not recorded yet
  bool record_failed_ = false;          //!< answered_ could not be recorded (invariant 4)
  bool batch_open_ = false;             //!< one batch at a time: begin_batch not finished
  bool hold_ = false;                   //!< a failed delivery: no read-ahead until drained
  bool wait_for_rows_ = false;          //!< the last by-state read was not full: idle wait
  bool any_ok_ = false;                 //!< an acknowledgement since the last record
  std::int64_t last_read_id_ = 0;
  bool last_read_full_ = false;
  bool answered_since_read_ = false;
  //! when the answers not yet recorded began to gather (grouped marks)
  std::optional<std::chrono::steady_clock::time_point>
      group_since_;            //!< a short read may be followed by a read-ahead
  BatchReport cycle_;          //!< since the last by-state read
  std::size_t abandoned_ = 0;  //!< purged at shutdown

  TopicGate topics_;  //!< invariant 6
  RelayObserver no_observer_;
  RelayObserver* observer_ = &no_observer_;
  std::int64_t solo_through_ = 0;  //!< rows up to this id go one at a time (invariant 5)
  bool solo_in_flight_ = false;    //!< such a row is unanswered: nothing may join it
};

}  // namespace outbox::core
