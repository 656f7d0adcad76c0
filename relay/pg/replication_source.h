// Replication mode's state machine, behind core::OutboxStore so that the same BatchRelay
// drives both modes: which pending rows are published from the table (the drain), when the
// stream takes over, and which stream position may be confirmed. It sees PostgreSQL only
// through pg/replication_ports.h and time only through core::Clock, so its rules are
// unit-tested against fakes (tests/replication_source_test.cc).
//
// Phases (Phase): stopped -> draining -> streaming. A connection failure anywhere goes back
// to stopped (core::UnavailableError; the next call starts again), a fatal one stops the
// relay (core::FatalError).
//   stopped    take the leader lock, check the publication and the slot, and make the drain
//              list: the ids of the pending rows the stream will not bring (2, 3 below).
//   draining   DrainSource publishes the rows of the list in id order, batch by batch, as
//              polling does. A row leaves the list once published or dead-lettered (or seen
//              no longer pending); a row retried or left pending (Kafka down, unknown topic)
//              stays and the next batch reads it again. The stream is not read meanwhile.
//   streaming  once the list is empty: START_REPLICATION, then StreamSource.
//
// Why the hand-over is exact: no row lost, none published twice by the hand-over, no
// streamed row before a drained row of its key, and no time margin anywhere.
//  1. A row is pending from the commit of its INSERT (rows only ever appear by insert, a
//     replay inserts a copy) until it is marked published or dead-lettered. The stream
//     brings the inserts of exactly the transactions that commit after the slot's confirmed
//     position, where START_REPLICATION resumes.
//  2. First start (the slot is created now). CREATE_REPLICATION_SLOT exports a snapshot S
//     that shows exactly the transactions committed before the slot's consistent point,
//     where the stream starts. The drain list is the pending rows of S: their ids (and S's
//     own xmin:xmax:xip) are read at once on the normal session (SET TRANSACTION SNAPSHOT,
//     while the replication connection is still idle), then S is released (it would hold
//     back vacuum for the whole drain). Drain list and stream are disjoint and together hold
//     every row.
//     One more step before the drain reads a row: S counts a transaction as committed once
//     its commit record is decoded, a moment before the committing backend leaves the proc
//     array (for as long as it waits for a synchronous standby, say), and until then new
//     snapshots, which the drain reads and marks with, do not show it. Those transactions
//     are exactly the ones S counts as ended (below its xmax, not in its xip) that a new
//     snapshot does not: in its xip, or at or above its xmax (xmax only moves once a
//     transaction has left the proc array), found as a backend's xid. The relay waits,
//     without deadline, until a new snapshot shows them all. From then on a row of the list
//     that a new snapshot does not show as pending is resolved (or was deleted): a row is
//     never dropped from the list for not being visible yet.
//  3. Restart (the slot exists, confirmed at C; no snapshot can be exported for it). The rows
//     the stream will not bring are those pending and committed before C. By invariant 5
//     every streamed transaction before C has all its rows marked, so these committed before
//     the slot's consistent point: left by an interrupted drain (2), or the slot was made by
//     someone else. For a slot this relay made, a snapshot taken now shows them all (2
//     waited for that, and what a snapshot shows never shrinks). For a slot made elsewhere,
//     a transaction may have committed before its consistent point and still be in the
//     proc array; clog already says committed for it (clog is set in the commit's own
//     critical section, before the commit record can be decoded). So, always: take the
//     transactions a new snapshot does not show as ended (its xip, and any backend's xid at
//     or above its xmax), keep those clog says committed, wait (no deadline) until a new
//     snapshot shows them, and then take the pending ids of a new snapshot. That is a
//     superset of what is needed: it also holds rows committed after C, which the stream
//     brings again and drops as marked (4). A superset is safe, a subset is not, which is
//     why the list is not "ids below the smallest id the stream can bring": ids are taken
//     at insert, not at commit, so a transaction still open at C may bring any older id, and
//     no bound on it is known before the stream has been read to its end.
//  4. Before a streamed row is published, its state and whether its transaction (the
//     Begin's xid) is visible are read in ONE snapshot. Visible and not pending: published
//     or dead-lettered already (by the drain, or before a crash): dropped. Visible and
//     pending: published. Absent while its transaction is visible: deleted since, dropped
//     (polling would never see it either). Transaction not visible yet (the walsender sends
//     a transaction as soon as its commit is flushed, a moment before other sessions see
//     it): read again, without deadline, the stream kept alive meanwhile. A row not visible
//     is never taken for marked, and a row is marked only once visible (a mark that
//     matches fewer rows is an error in the table, never a success).
//  5. Invariant 5: the slot's confirmed position moves past a transaction only once each
//     of its events was acknowledged by Kafka (or dead-lettered) and marked
//     (core::ConfirmTracker); a retried row holds it. A keepalive's position is confirmed
//     only when nothing at all is pending.
//  6. Order: the stream is read only after the drain ended, and the drain ends only when
//     every row of its list is resolved, so every drained row reaches Kafka before any
//     streamed row (of any key). The stream brings transactions in commit order.
//
// Memory: the drain list holds 8 bytes per row pending at the start; rows are read batch
// by batch, and the stream only as far as the batch needs (rows and bytes), whatever the
// size of a transaction.
//
// Lifecycle and thread: as core::OutboxStore, one worker thread; the ports and the clock
// outlive this object.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/confirm_tracker.h"
#include "core/ports.h"
#include "pg/replication_ports.h"

namespace outbox::pg {

struct ReplicationSourceOptions {
  std::string slot_name = "outbox_relay";  //!< for the logs
  //! How often the confirmed position is reported at the least (also while Kafka keeps a
  //! batch waiting: the walsender's wal_sender_timeout counts from the last report).
  std::chrono::milliseconds status_interval{10'000};
  //! When idle, how often to ask the server for its position so that the slot advances.
  std::chrono::milliseconds heartbeat_interval{10'000};
  //! How soon to look again for a committed transaction that is not visible yet.
  std::chrono::milliseconds visibility_retry{2};
  //! How often a wait for visibility is logged.
  std::chrono::milliseconds visibility_log_every{10'000};
};

//! One phase's supply of rows: begin, then finish or abort.
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual std::vector<core::OutboxEvent> begin(std::size_t limit, std::size_t max_bytes,
                                               const std::vector<std::string>& skip_topics) = 0;
  virtual void finish(const core::BatchOutcome& outcome) = 0;
  virtual void abort() noexcept = 0;
};

//! The rows pending at the start that the stream will not bring (the drain list).
class DrainSource : public BatchSource {
 public:
  DrainSource(ReplicationTable& table, std::vector<std::int64_t> ids);
  //! The first rows of the list that are still pending, in id order; rows no longer pending
  //! leave the list. Empty only when the list is. `skip_topics` is not applied here: a row
  //! left out would look resolved to the list; the core leaves such rows pending itself.
  std::vector<core::OutboxEvent> begin(std::size_t limit, std::size_t max_bytes,
                                       const std::vector<std::string>& skip_topics) override;
  //! Records the outcome; published and dead-lettered rows leave the list.
  void finish(const core::BatchOutcome& outcome) override;
  void abort() noexcept override {}
  bool done() const { return head_ == ids_.size(); }
  std::size_t left() const { return ids_.size() - head_; }

 private:
  //! Removes `gone` from the first `window` ids of the list, keeping the order.
  template <typename Gone>
  void erase_front(std::size_t window, const Gone& gone);

  ReplicationTable& table_;
  std::vector<std::int64_t> ids_;  // ascending; [head_, end) still to resolve
  std::size_t head_ = 0;
  std::size_t window_ = 0;  // the open batch's rows are among the first window_ ids
};

//! The replication stream: decoded transactions, the rows checked against the table, and
//! the confirmed position (invariant 5).
class StreamSource : public BatchSource {
 public:
  StreamSource(ReplicationTable& table, ReplicationStream& stream, core::Clock& clock,
               const ReplicationSourceOptions& options, std::function<bool()> stopping);

  //! START_REPLICATION (the previous session's decoded state is forgotten).
  void start();
  //! The stream is gone: everything after the confirmed position comes again.
  void reset() noexcept;

  //! Rows of `skip_topics` are parked, in arrival order and unresolved (the confirmed
  //! position stays before them), and come first once their topic is no longer skipped.
  std::vector<core::OutboxEvent> begin(std::size_t limit, std::size_t max_bytes,
                                       const std::vector<std::string>& skip_topics) override;
  void finish(const core::BatchOutcome& outcome) override;
  void abort() noexcept override;
  //! As core::OutboxStore::wait_for_rows: reads the stream up to `timeout`.
  bool wait(std::chrono::milliseconds timeout);
  //! Reports the unchanged position every status_interval, reading nothing.
  void keep_alive() noexcept;
  //! A clean stop reports how far it got. Never throws.
  void final_report() noexcept;

  Lsn confirmed() const { return confirmed_; }
  Lsn reported() const { return reported_; }

 private:
  struct Queued {
    core::OutboxEvent event;
    core::ConfirmTracker::TxnSeq txn;
    std::uint32_t xid;
  };
  void handle(StreamMessage message);
  //! Drops from batch_ the rows already resolved (4 in the header); waits while a row's
  //! transaction is not visible. Returns the rows to publish.
  std::vector<core::OutboxEvent> check_batch();
  void report(bool reply);
  void report_if_due();

  ReplicationTable& table_;
  ReplicationStream& stream_;
  core::Clock& clock_;
  const ReplicationSourceOptions& options_;
  std::function<bool()> stopping_;
  bool started_ = false;

  core::ConfirmTracker tracker_;
  std::uint32_t open_xid_ = 0;    // of the transaction being decoded
  std::deque<Queued> queued_;     // decoded, not yet in a batch
  std::vector<Queued> batch_;     // the open batch
  std::vector<Queued> retained_;  // not resolved by the last batch: first in the next
  std::vector<Queued> parked_;    // of topics the relay skips for now (blocked topics)

  Lsn received_;
  Lsn confirmed_;
  Lsn reported_;
  std::chrono::steady_clock::time_point last_report_{};
};

class ReplicationSource : public core::OutboxStore {
 public:
  enum class Phase { stopped, draining, streaming };

  //! `stopping` ends the waits on the server (creating the slot, visibility) early.
  ReplicationSource(ReplicationTable& table, ReplicationStream& stream, core::Clock& clock,
                    ReplicationSourceOptions options, std::function<bool()> stopping);
  ~ReplicationSource() override;

  std::vector<core::OutboxEvent> begin_batch(std::size_t limit, std::size_t max_bytes,
                                             const std::vector<std::string>& skip_topics) override;
  void finish_batch(const core::BatchOutcome& outcome) override;
  void abort_batch() noexcept override;
  //! Marks in the table only: after a failed finish_batch everything was reset, and the
  //! rows come again (through the drain or the stream) and are dropped once seen marked.
  void record_outcome(const core::BatchOutcome& outcome) override;
  bool wait_for_rows(std::chrono::milliseconds timeout) override;
  void keep_alive() noexcept override;

  Phase phase() const { return phase_; }
  //! Rows of the drain list not yet resolved (0 when not draining).
  std::size_t drain_left() const { return drain_ ? drain_->left() : 0; }
  Lsn confirmed() const { return stream_source_.confirmed(); }

 private:
  //! The source of the current phase, starting (stopped -> draining) and handing over
  //! (draining -> streaming) as due. Only between batches.
  BatchSource& current();
  void start();
  //! Until a new snapshot shows every transaction of `xids`; no deadline.
  void wait_visible(const std::vector<std::uint64_t>& xids);
  void reset() noexcept;
  template <typename F>
  auto guarded(F&& body) -> decltype(body());

  ReplicationTable& table_;
  ReplicationStream& stream_;
  core::Clock& clock_;
  ReplicationSourceOptions options_;
  std::function<bool()> stopping_;

  Phase phase_ = Phase::stopped;
  std::optional<DrainSource> drain_;
  StreamSource stream_source_;
  BatchSource* open_ = nullptr;  // the source of the open batch
};

}  // namespace outbox::pg
