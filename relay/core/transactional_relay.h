// The relay's loop for delivery.guarantee: exactly_once: one Kafka transaction per read,
// with a checkpoint record (the outbox ids of the transaction) committed atomically with the
// data, so that a restarted or newly elected relay can find what was committed and mark it
// instead of sending it again. The protocol and its argument: relay/core/README-eos.md.
//
// The loop, one step:
//   0. an outcome that could not be recorded is recorded first (as BatchRelay, invariant 4);
//   1. a read by state (begin_batch): it also takes (or proves) the leader role;
//   2. if recovery is due (start, or after any transaction whose outcome is not known):
//      the read is dropped, the producer is re-created and init_transactions fences every
//      older producer with the same transactional.id and aborts its open transaction; the
//      last committed checkpoint is read (read_committed; waiting while another producer's
//      open transaction may hide a newer one) and its rows are marked published (those whose
//      event_id matches); the rows of a transaction are capped so its checkpoint fits one
//      record; then the next step reads again;
//   3. begin the transaction; send the read's rows in id order; wait for every answer;
//   4. any failed answer: abort, the rows stay pending (a row proven at fault is
//      dead-lettered, a blocked topic waits, a suspect is sent alone, transient: back off);
//   5. commit with the checkpoint record; on any commit error nothing is marked and
//      recovery is due (the transaction may or may not have committed: the checkpoint says);
//   6. mark the rows published (and dead-lettered ones) in PostgreSQL; the next transaction
//      begins only once this is recorded, so only the last checkpoint can be unmarked.
// No pipelining across transactions: one read is in flight at a time.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/backoff.h"
#include "core/batch_relay.h"
#include "core/observer.h"
#include "core/ports.h"

namespace outbox::core {

//! A newer producer with the same transactional.id exists: this one is a zombie and must
//! neither commit nor mark. The relay drops its producer and recovers before sending again
//! (which, as a standby, it cannot: the read that precedes recovery needs the leader role).
class FencedError : public UnavailableError {
 public:
  using UnavailableError::UnavailableError;
};

//! One row of a checkpoint: the outbox id and the row's event_id. Recovery marks a row only
//! when both match (README-eos.md, "Row identity"); a checkpoint written before event ids
//! were carried (format 1) has event_id "" for every row.
struct CheckpointRow {
  std::int64_t id = 0;
  std::string event_id;
  bool operator==(const CheckpointRow&) const = default;
};

//! What the checkpoint topic says about this transactional.id, read after init().
struct CheckpointRead {
  //! false: another producer's open transaction holds the topic's last stable offset below
  //! its end, so a newer checkpoint of ours may be hidden: nothing may be marked yet.
  bool proven = true;
  std::string record;  //!< the newest checkpoint record of our key, "" when there is none
  std::string hidden;  //!< when not proven: what holds it (offsets), for the log
};

//! Kafka with transactions. Used from the relay's one worker thread.
class TransactionalPublisher {
 public:
  virtual ~TransactionalPublisher() = default;
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
  //! As Publisher::send/poll, inside the open transaction.
  virtual void send(const Message& message, std::uint64_t tag) = 0;
  virtual std::vector<Completion> poll(std::chrono::milliseconds timeout) = 0;
  //! Gives up on what is in flight: each message comes back from poll() soon.
  virtual void purge() = 0;
  //! Adds the checkpoint record `checkpoint` and commits. Returns only when Kafka committed.
  //! Throws FencedError (a newer producer exists) or UnavailableError (aborted, or outcome
  //! unknown): then nothing may be marked. FatalError when the checkpoint record itself is
  //! refused (too large): sending it again could never succeed.
  virtual void commit(const std::string& checkpoint) = 0;
  //! Aborts the open transaction; false when that failed (recovery is due). Never throws.
  virtual bool abort() noexcept = 0;
  virtual std::optional<std::string> topic_problem(const std::string& topic) {
    (void)topic;
    return std::nullopt;
  }
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

//! Marks rows published after recovery: only those still pending (a row the checkpoint
//! names may have been marked and even deleted by retention since), and only when the row's
//! event_id is the checkpoint's (an id reused after a rewind of the database names another
//! event). Throws UnavailableError.
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

//! The checkpoint's text (format 2): "v2;" ids in increasing order as ranges ";" the rows'
//! event ids in the same order, comma-separated: "v2;1-3,7;<uuid>,<uuid>,<uuid>,<uuid>".
std::string encode_checkpoint(std::vector<CheckpointRow> rows);
//! The rows of a checkpoint's text, format 2 or format 1 (ranges only, "1-5,7,9-12": event
//! ids ""); nullopt when it is neither.
std::optional<std::vector<CheckpointRow>> decode_checkpoint(const std::string& text);
//! Upper bounds of a format-2 checkpoint's size: its fixed part, and per row (an id of up
//! to 19 digits and a uuid, each with its separator).
inline constexpr std::size_t kCheckpointFixedBytes = 8;
inline constexpr std::size_t kCheckpointRowBytes = 20 + 37;

//! Lifecycle: construct, run() on one thread until `stop` is set, destroy.
class TransactionalRelay {
 public:
  //! Uses of BatchRelayOptions: batch_size, batch_max_bytes, interval, backoff_*,
  //! shutdown_timeout, topic_map, format (the window is one read).
  TransactionalRelay(OutboxStore& store, TransactionalPublisher& publisher, RecoveryMarker& marker,
                     Clock& clock, BatchRelayOptions options);
  ~TransactionalRelay();
  TransactionalRelay(const TransactionalRelay&) = delete;
  TransactionalRelay& operator=(const TransactionalRelay&) = delete;

  //! One step (see the file comment). Throws UnavailableError / FatalError.
  void step(const std::atomic<bool>& stop);
  //! Until `stop`: steps, backing off on failures. Returns the messages left unrecorded.
  std::size_t run(const std::atomic<bool>& stop);

  const RelayCounters& counters() const { return counters_; }
  void set_observer(RelayObserver* observer) {
    observer_ = observer ? observer : &no_observer_;
    topics_.set_observer(observer_);
  }
  //! Rows marked by recoveries so far (committed by an earlier run, not marked by it).
  std::size_t recovered_rows() const { return recovered_rows_; }
  //! Rows a transaction carries at most (after the first recovery: see max_rows_).
  std::size_t max_rows() const { return max_rows_; }
  bool recovery_due() const { return recovery_due_; }

 private:
  struct InFlight {
    std::int64_t id = 0;
    std::string event_id;  //!< for the checkpoint
    std::string row_topic;
    Message message;
    std::chrono::steady_clock::time_point sent_at;
    std::optional<DeliveryResult> result;
  };
  //! Fences, reads the newest checkpoint (waiting while it cannot be proven the newest),
  //! marks its rows. Returns false when `stop` came first (recovery stays due).
  bool recover(const std::atomic<bool>& stop);
  void record(BatchOutcome outcome);
  void close_batch() noexcept;
  void idle_wait(const std::atomic<bool>& stop);
  //! Waits for every answer; purges after shutdown_timeout once `stop` is set.
  void await_answers(std::vector<InFlight>& sent, const std::atomic<bool>& stop);

  OutboxStore& store_;
  TransactionalPublisher& publisher_;
  RecoveryMarker& marker_;
  Clock& clock_;
  BatchRelayOptions options_;
  const bool pipelined_;
  Backoff backoff_;
  RelayCounters counters_;
  RelayObserver no_observer_;
  RelayObserver* observer_ = &no_observer_;

  bool recovery_due_ = true;  //!< at start, and after any transaction of unknown outcome
  bool batch_open_ = false;   //!< one batch at a time: begin_batch not finished
  std::optional<BatchOutcome> unrecorded_;  //!< committed (or dead-lettered), not recorded
  std::int64_t solo_through_ = 0;           //!< rows up to this id go one at a time
  std::size_t recovered_rows_ = 0;
  //! Rows per transaction: batch_size, lowered after init() so that the checkpoint of a full
  //! read always fits the producer's and the topic's largest record.
  std::size_t max_rows_;
  std::size_t abandoned_ = 0;
  TopicGate topics_;  //!< batch_relay.h invariant 6
};

}  // namespace outbox::core
