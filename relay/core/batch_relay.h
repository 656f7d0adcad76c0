// The relay's one loop: read pending rows, hand their messages to Kafka, record the outcome.
// Both delivery guarantees run it; the delivery mode supplies the difference:
//  - at_least_once: answered rows are recorded in groups as their reports arrive;
//  - exactly_once: the reads sent while a Kafka transaction is open belong to it; it commits
//    (with the checkpoint of its rows, core/checkpoint.h) once all of its messages were
//    answered, and its rows are recorded only then. Protocol and argument: README-eos.md.
//
// It is a pipeline. Messages are handed to the publisher as soon as their rows are read;
// while Kafka answers, the next rows are read and sent (read-ahead). What is in flight is
// bounded by a WINDOW: the rows from the oldest one not yet answered to the newest one sent,
// plus the rows answered and not yet recorded (at most max_in_flight_rows, answered ones
// included, so a stuck partition stops the read-ahead once the window is full, and a crash
// sends at most that many rows again), and the bytes of the unanswered ones (at most
// max_in_flight_bytes; a payload is dropped as soon as its report arrived). In exactly_once
// a transaction takes reads ahead only while they come back full (a backlog: a short read
// means the rows that came are committed at once, as one read per transaction did), and no
// more once it holds max_rows() rows (its checkpoint must fit one record) or once it is
// kTransactionWindow old (a steady flow would otherwise keep the window from ever draining).
//
// The loop's state is named (LoopPhase below, TransactionState for exactly_once), each
// transition made by one function that logs it and refuses one the table does not allow
// (core/state_machine.h).
//
// Invariant mark-after-ack: a row is recorded as published only when the publisher
// reported Kafka's acknowledgement for its message; in exactly_once, only once the Kafka
// transaction holding it committed.
// Invariant no-row-skipped: reads "by state" (pending, from the start of the
// table) are made whenever nothing is in flight; read-ahead reads take only rows above the
// last id read (OutboxStore::read_after), so a row that commits late with a smaller id is
// left to the next by-state read. That read is never deferred for long: a read-ahead that
// sees such a row returns nothing (below), as long as the row is pending, so nothing more is
// sent and the window drains; and after any failed delivery read-ahead stops. A read that
// reached the end of the pending rows (short) is followed by a read-ahead only once an
// answer came in since (new rows may have committed), not in a loop.
// Invariant send-in-id-order: messages are handed to the publisher in id order within a read,
// reads in flight are in increasing id order, and the producer keeps each partition's order
// (idempotence, enable.gapless.guarantee, message.timeout.ms=0; in exactly_once a failed
// message aborts its whole transaction instead), so one key's events reach Kafka in id order.
// A transaction that commits late may hold ids on both sides of the last id read; its rows
// above must not go before its rows below. So a read-ahead returns rows only if, in the same
// snapshot, the pending rows up to the last id read are exactly the relay's own (unanswered,
// or answered and not recorded: a count); one more is a late row, and then the window
// drains and a read by state sends the late transaction's rows in id order. After any failed
// delivery nothing more is read until everything in flight is answered, then the next read
// starts from the oldest pending row again.
// Invariant record-before-read: an outcome that could not be recorded (the mark
// failed: connection lost, a trigger, a revoked grant, statement_timeout) is kept and its
// recording retried with backoff before anything else is read; its messages are never sent
// again by this process for that reason, so a mark that fails every time costs no
// duplicates. In exactly_once this is also what makes at most the last committed
// transaction unmarked (README-eos.md, loop step 1). A row that is gone when it is marked
// (deleted, or the database went back in time: core::VanishedRow) is no failure: the store
// records the rest, the gone rows are reported (warn log with event id and topic,
// RelayObserver::on_vanished, outbox.vanished) and the relay goes on. A mark matches (id,
// event_id), so an id that now names another event is gone for the acknowledged one and the
// other row stays pending.
// Invariant dead-letter-own-reason: a row is dead-lettered only for a reason proven its own:
// checked on the row alone (topic name, headers, librdkafka's own size check), or an error
// Kafka may answer for a whole produce request (too large, invalid record) repeated with the
// row sent ALONE: nothing else in flight from its send until its answer (no read-ahead while
// suspects remain, nor while the last of them waits for its answer). Both modes use this one
// rule (exactly_once used to say "the only message of its transaction", which meant the same
// only as long as a transaction was one read).
// Invariant blocked-topic-waits: a topic that cannot take messages (unknown, not
// authorized, policy) never dead-letters its rows: it waits with its own backoff, asked about
// before its rows are sent again, while the other topics flow (its rows are skipped when
// reading; core/topic_gate.h).
// Invariant memory-bounded: memory is bounded by the window (rows and bytes) plus one
// read (batch_size, batch_max_bytes); messages live in the window until their report arrived
// (librdkafka points into them without copying), whatever Kafka does.
// Invariant recover-before-send (exactly_once): nothing is sent before recovery (fencing
// by init_transactions, the newest checkpoint marked) succeeded, at start and after any
// transaction whose outcome is not known; recovery follows a successful read by state, so
// only the leader recovers (README-eos.md, "Recovery").
// Invariant checkpoint-fits (exactly_once): a transaction carries at most max_rows() rows,
// so that its checkpoint always fits one record.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>

#include "core/backoff.h"
#include "core/checkpoint.h"
#include "core/observer.h"
#include "core/ports.h"
#include "core/state_machine.h"
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

//! What happened since the last by-state read (a cycle: it ends when the window is empty).
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
  std::atomic<std::uint64_t> vanished{
      0};  //!< rows found gone when recorded (invariant gone-row-reported)
};

//! What the loop may do next. Replaces the flags it used to infer this from.
enum class LoopPhase {
  //! Nothing in flight, nothing unrecorded: the next read is by state.
  empty,
  //! Rows in flight, the last read was full: read ahead while the window allows.
  reading,
  //! Rows in flight, the last read reached the end of the pending rows: read ahead again
  //! once an answer came in (rows committed meanwhile go out without waiting for the drain).
  after_short_read,
  //! Nothing more is read until the window is empty: a delivery failed (invariant
  //! send-in-id-order), a
  //! suspect was sent alone (invariant dead-letter-own-reason), or the Kafka transaction takes no
  //! more reads.
  draining,
  //! An outcome could not be recorded: its recording is retried before anything else
  //! (invariant record-before-read).
  unrecorded,
};
struct LoopPhaseTraits {
  using State = LoopPhase;
  static constexpr const char* kWhat = "relay loop";
  static const char* name(LoopPhase s);
  static bool allowed(LoopPhase from, LoopPhase to);
};

//! exactly_once: where the loop stands with its Kafka transaction.
enum class TransactionState {
  //! At start, and after a transaction whose outcome is not known (commit or abort failed,
  //! fenced, begin failed): recover before anything is sent (invariant recover-before-send).
  recovery_due,
  //! Recovered; no transaction open.
  idle,
  //! Begun: reads join it while it is young and below max_rows().
  open,
  //! Takes no more reads; commits (every answer ok) or aborts once the window is empty.
  closed,
};
struct TransactionStateTraits {
  using State = TransactionState;
  static constexpr const char* kWhat = "exactly_once transaction";
  static const char* name(TransactionState s);
  static bool allowed(TransactionState from, TransactionState to);
};

//! Lifecycle: construct, run() (or step()) on one thread until `stop` is set, destroy.
class BatchRelay {
 public:
  //! at_least_once.
  BatchRelay(OutboxStore& store, Publisher& publisher, Clock& clock, BatchRelayOptions options);
  //! exactly_once: reads grouped into Kafka transactions of `publisher`, gated by its commit;
  //! `marker` marks what recovery finds committed and not marked.
  BatchRelay(OutboxStore& store, TransactionalPublisher& publisher, RecoveryMarker& marker,
             Clock& clock, BatchRelayOptions options);
  //! Purges what is still in flight (run() left by a FatalError) and waits for the reports:
  //! librdkafka points into the messages until then.
  ~BatchRelay();
  BatchRelay(const BatchRelay&) = delete;
  BatchRelay& operator=(const BatchRelay&) = delete;

  //! Until `stop` becomes true: the pipeline, waiting for rows when idle, backing off on
  //! failures. After `stop`, what is in flight gets up to shutdown_timeout to be
  //! acknowledged, the rest is purged (its rows stay pending), and what was acknowledged is
  //! recorded (exactly_once: the open transaction is committed when every answer was ok,
  //! else aborted); run() then returns the number of messages it had to leave unanswered.
  std::size_t run(const std::atomic<bool>& stop);

  //! One turn of run() without its failure handling: the end of a cycle (idle wait or
  //! backoff pause) when the window is empty, then a read (by state, or ahead), the answers
  //! that came, what may be recorded. Throws UnavailableError, FatalError.
  void step(const std::atomic<bool>& stop);
  //! Nothing in flight, nothing unrecorded, no transaction open: the current cycle is over.
  bool settled() const;
  //! The current cycle (since the last by-state read), and whether it has not ended yet (its
  //! end, an idle wait or a backoff pause, is the next step's).
  const BatchReport& cycle() const { return cycle_; }
  bool cycle_open() const { return cycle_open_; }

  const RelayCounters& counters() const { return counters_; }
  LoopPhase phase() const { return phase_.state(); }

  //! exactly_once: rows marked by recoveries so far (committed by an earlier run, not marked).
  std::size_t recovered_rows() const { return recovered_rows_; }
  //! exactly_once: rows a transaction carries at most (invariant checkpoint-fits; known after
  //! recovery).
  std::size_t max_rows() const { return max_rows_; }
  bool recovery_due() const { return txn_.is(TransactionState::recovery_due); }
  TransactionState transaction_state() const { return txn_.state(); }

  //! Reports progress and health to `observer` (not owned; outlives run()). Call before run().
  void set_observer(RelayObserver* observer) {
    observer_ = observer ? observer : &no_observer_;
    topics_.set_observer(observer_);
  }

  //! exactly_once: how long a transaction takes reads (see the file comment).
  static constexpr std::chrono::milliseconds kTransactionWindow{50};

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

  bool exactly_once() const { return marker_ != nullptr; }
  //! The one function per transition of LoopPhase (logged; an invalid one throws).
  void to(LoopPhase next, const char* why) { phase_.set(next, why); }
  void to(TransactionState next, const char* why) { txn_.set(next, why); }

  //! Reads rows (by state when `by_state`, else after the last id read) and sends them.
  void read(bool by_state, const std::atomic<bool>& stop);
  bool may_read_ahead() const;
  //! exactly_once: the open transaction stops taking reads when full or old enough.
  void close_transaction_if_due();
  //! exactly_once: the open transaction takes no more reads; unless a delivery failed, its
  //! checkpoint is sent at once (TransactionalPublisher::send_checkpoint).
  void close_transaction(const char* why);
  //! exactly_once: the rows sent in the open transaction, answered or not.
  std::vector<CheckpointRow> transaction_rows() const;
  //! Rows sent and not yet recorded: the window, and what was answered but not recorded.
  std::size_t in_flight_rows() const;
  //! Polls the publisher up to `timeout` and applies the answers to the window.
  void collect(std::chrono::milliseconds timeout);
  void answer(InFlight& entry, std::uint64_t tag, const DeliveryResult& result);
  //! Records what was answered (at_least_once: in groups; exactly_once: once the transaction
  //! is settled). Throws UnavailableError (invariant record-before-read).
  void record(bool force);
  //! exactly_once, the window empty: commits the transaction (every answer ok: the checkpoint
  //! of its rows) or aborts it (its acknowledged rows stay pending). Throws.
  void settle_transaction();
  //! exactly_once (invariant recover-before-send): fences, reads the newest checkpoint (waiting
  //! while it cannot be proven the newest), marks its rows. False when `stop` came first.
  bool recover(const std::atomic<bool>& stop);
  //! The window is empty: what the cycle since the last by-state read came to.
  void end_cycle(const std::atomic<bool>& stop);
  std::size_t shut_down();
  void count(const BatchOutcome& outcome);

  OutboxStore& store_;
  Publisher& publisher_;
  TransactionalPublisher* txn_publisher_ = nullptr;  //!< exactly_once only
  RecoveryMarker* marker_ = nullptr;                 //!< exactly_once only
  Clock& clock_;
  BatchRelayOptions options_;
  Backoff backoff_;
  RelayCounters counters_;

  StateMachine<LoopPhaseTraits> phase_{LoopPhase::empty, "core"};
  //! idle for ever in at_least_once; exactly_once starts recovery_due.
  StateMachine<TransactionStateTraits> txn_{TransactionState::idle, "core"};

  std::deque<InFlight> window_;
  std::uint64_t front_tag_ = 1;         //!< the tag of window_.front(); tags count up
  std::size_t unanswered_ = 0;          //!< rows of window_ not answered yet
  std::size_t unanswered_bytes_ = 0;    //!< and their bytes
  std::optional<std::uint64_t> alone_;  //!< the tag sent with nothing else in flight (5)
  BatchOutcome answered_;               //!< answered, not recorded yet
  std::int64_t last_read_id_ = 0;
  //! when the answers not yet recorded began to gather (grouped marks)
  std::optional<std::chrono::steady_clock::time_point> group_since_;
  BatchReport cycle_;  //!< since the last by-state read
  //! Whether a by-state read began a cycle that has not ended: end_cycle's idle wait or pause.
  bool cycle_open_ = false;
  std::size_t abandoned_ = 0;  //!< purged at shutdown
  std::int64_t solo_through_ =
      0;  //!< rows up to this id go one at a time (invariant dead-letter-own-reason)

  // exactly_once
  std::size_t max_rows_;          //!< invariant checkpoint-fits
  std::size_t txn_rows_ = 0;      //!< messages sent in the open transaction
  std::size_t txn_failures_ = 0;  //!< of which answered not ok: abort
  std::chrono::steady_clock::time_point txn_since_{};
  //! The checkpoint sent when the transaction closed (its rows), committed by settle.
  std::optional<std::string> txn_checkpoint_;
  std::size_t recovered_rows_ = 0;

  TopicGate topics_;  //!< invariant blocked-topic-waits
  RelayObserver no_observer_;
  RelayObserver* observer_ = &no_observer_;
};

}  // namespace outbox::core
