// Replication mode's state machine, behind core::OutboxStore so that the same BatchRelay
// drives both modes: which pending rows are published from the table (the drain), when the
// stream takes over, and which stream position may be confirmed. It sees PostgreSQL only
// through pg/replication_ports.h and time only through core::Clock, so its rules are
// unit-tested against fakes (tests/replication_source_test.cc).
//
// It is pipelined like polling (core::OutboxStore::read_ahead() is true): begin_batch reads
// "by state", when nothing is in flight; read_after reads the next rows while earlier ones
// wait for Kafka; record_outcome records answered rows in groups, in any order.
//
// Phases (Phase): stopped -> draining -> streaming. A connection failure anywhere goes back
// to stopped (core::UnavailableError; the next by-state read starts again), a fatal one
// stops the relay (core::FatalError).
//   stopped    take the leader lock, check the publication and the slot, and make the drain
//              list: the ids of the pending rows the stream will not bring (2, 3 below).
//              Only a by-state read (or wait_for_rows, also called with nothing in flight)
//              starts; read_after returns nothing and record_outcome only marks the table.
//   draining   DrainSource publishes the rows of the list in id order. By state: the first
//              rows of the list still pending; read_after(after_id): the next rows of the
//              list above after_id still pending. A row leaves the list once recorded
//              published or dead-lettered (or seen no longer pending); a row retried or
//              left pending (Kafka down, unknown topic) stays, and since the core reads
//              nothing more after a failed delivery until the window drained, the next
//              by-state read sends it again, first. The stream is not read meanwhile.
//   streaming  once the list is empty, at a by-state read: START_REPLICATION, then
//              StreamSource: rows in the stream's (commit) order.
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
//     A restart happens only at a by-state read, so nothing of the previous session is in
//     flight then: what the core still had in flight when the connection failed was
//     answered and recorded (marks only) before; what it could not record stays pending
//     and is in the new list.
//  4. Before a row is sent, drained or streamed, its state is read: a drained row is read
//     from the table by id (pending_rows: pending and visible in that statement's
//     snapshot). A streamed row's state and whether its transaction (the Begin's xid) is
//     visible are read in ONE snapshot, every time it is sent (again). Visible and not
//     pending: published or dead-lettered already (by the drain, or before a crash):
//     dropped. Visible and pending: sent. Absent while its transaction is visible: deleted
//     since, dropped (polling would never see it either). Transaction not visible yet (the
//     walsender sends a transaction as soon as its commit is flushed, a moment before other
//     sessions see it): read again, without deadline, the stream kept alive meanwhile. A row
//     not visible is never taken for marked, and a row is marked only once visible (a mark
//     that matches fewer rows is an error in the table, never a success).
//  5. Invariant 5: the slot's confirmed position moves past a transaction only once each
//     of its events was acknowledged by Kafka (or dead-lettered) and marked
//     (core::ConfirmTracker: an event is resolved only after record_outcome's mark
//     committed, and the position is the end of the longest prefix of committed
//     transactions with every event resolved, so groups recorded in any order never move
//     it past an event still in flight or retried). A keepalive's position is confirmed
//     only when no decoded event at all is unresolved.
//  6. Order: the stream is read only after the drain ended, and the drain ends only at a
//     by-state read (nothing in flight) that finds every row of its list resolved, so every
//     drained row was acknowledged before any streamed row (of any key) is sent.
//     Within the drain, rows are sent in id order (the list is ascending; read_after reads
//     above the last id read), as polling does. A late row cannot exist there (the list is
//     fixed, its rows committed and visible before the first read), so pending_upto is
//     used only as a check that every row of the list up to after_id is one the relay has
//     in flight: when it left one unsent (its topic blocked), the next rows of that topic
//     must not overtake it, so nothing is read ahead until the next by-state read.
//     Within the stream, rows are sent in the order they were decoded (commit order; a
//     transaction's rows in its own order). A row sent and not resolved by the next
//     by-state read (a failed delivery: the core reads nothing more until the window
//     drained) comes first in that read, in its original order, with the rows parked or
//     left for later; read_after returns rows only while every row it handed out since the
//     by-state read is in the core's window (pending_upto: the core left none unsent) and
//     sends older unsent rows (parked ones of a topic no longer skipped) before newer
//     ones, so the rows of one topic are sent in decoded order.
//
// Memory: the drain list holds 8 bytes per row pending at the start. The stream is read
// only as far as a read needs (rows and bytes), whatever the size of a transaction; a
// streamed row handed to the core keeps only its id, topic, size and transaction here (its
// payload moves to the core), and is read again from the table when it must be sent again;
// rows of skipped topics are parked with their payload, at most a read's `limit` of them
// before the stream stops being read.
//
// Lifecycle and thread: as core::OutboxStore, one worker thread; the ports and the clock
// outlive this object.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/confirm_tracker.h"
#include "core/ports.h"
#include "pg/replication_ports.h"

namespace outbox::pg {

struct ReplicationSourceOptions {
  std::string slot_name = "outbox_relay";  //!< for the logs
  //! How often the confirmed position is reported at the least (also while Kafka keeps
  //! rows waiting: the walsender's wal_sender_timeout counts from the last report).
  std::chrono::milliseconds status_interval{10'000};
  //! When idle, how often to ask the server for its position so that the slot advances.
  std::chrono::milliseconds heartbeat_interval{10'000};
  //! How soon to look again for a committed transaction that is not visible yet.
  std::chrono::milliseconds visibility_retry{2};
  //! How often a wait for visibility is logged.
  std::chrono::milliseconds visibility_log_every{10'000};
};

//! The rows pending at the start that the stream will not bring (the drain list).
class DrainSource {
 public:
  DrainSource(ReplicationTable& table, std::vector<std::int64_t> ids);
  //! By state: the first rows of the list that are still pending, in id order; rows no
  //! longer pending leave the list. Empty only when the list is. Skipped topics are not
  //! applied here: a row left out would look resolved to the list; the core leaves such
  //! rows unsent itself.
  std::vector<core::OutboxEvent> begin(std::size_t limit, std::size_t max_bytes);
  //! The next rows of the list above `after_id` that are still pending, in id order, if
  //! exactly `pending_upto` rows of the list up to `after_id` are unresolved (6 in the
  //! header); otherwise none.
  std::vector<core::OutboxEvent> after(std::int64_t after_id, std::size_t pending_upto,
                                       std::size_t limit, std::size_t max_bytes);
  //! A recorded outcome: published and dead-lettered rows leave the list.
  void resolved(const core::BatchOutcome& outcome);
  bool done() const { return head_ == ids_.size(); }
  std::size_t left() const { return ids_.size() - head_; }

 private:
  //! Reads the pending rows among the list from index `from` on, window by window, until
  //! some come or the list ends.
  std::vector<core::OutboxEvent> read_from(std::size_t from, std::size_t limit,
                                           std::size_t max_bytes);
  //! Removes the ids for which `gone` is true from the list's indexes [head_, end), keeping
  //! the order (the ids before `end` move up; cost: end - head_).
  template <typename Gone>
  void erase_before(std::size_t end, const Gone& gone);

  ReplicationTable& table_;
  std::vector<std::int64_t> ids_;  // ascending; [head_, end) still to resolve
  std::size_t head_ = 0;
};

//! The replication stream: decoded transactions, the rows checked against the table, and
//! the confirmed position (invariant 5).
class StreamSource {
 public:
  StreamSource(ReplicationTable& table, ReplicationStream& stream, core::Clock& clock,
               const ReplicationSourceOptions& options, std::function<bool()> stopping);

  //! START_REPLICATION (the previous session's decoded state is forgotten).
  void start();
  //! The stream is gone: everything after the confirmed position comes again.
  void reset() noexcept;

  //! By state: every row handed out before and not resolved is unsent again and comes
  //! first, in decoded order, then the next decoded rows. Rows of `skip_topics` are parked,
  //! in order and unresolved (the confirmed position stays before them), and come once
  //! their topic is no longer skipped.
  std::vector<core::OutboxEvent> begin(std::size_t limit, std::size_t max_bytes,
                                       const std::vector<std::string>& skip_topics);
  //! The next rows in decoded order, if exactly `pending_upto` rows handed out since the
  //! by-state read are unresolved (all in the core's window); otherwise none.
  std::vector<core::OutboxEvent> after(std::size_t pending_upto, std::size_t limit,
                                       std::size_t max_bytes,
                                       const std::vector<std::string>& skip_topics);
  //! A recorded (marked) outcome: published and dead-lettered rows are resolved.
  void resolved(const core::BatchOutcome& outcome);
  //! As core::OutboxStore::wait_for_rows: reads the stream up to `timeout`.
  bool wait(std::chrono::milliseconds timeout);
  //! Reports the unchanged position every status_interval, reading nothing.
  void keep_alive() noexcept;
  //! A clean stop reports how far it got. Never throws.
  void final_report() noexcept;

  Lsn confirmed() const { return confirmed_; }
  Lsn reported() const { return reported_; }
  //! Rows decoded and not resolved (handed out, parked, or to be sent again).
  std::size_t unresolved() const { return held_.size(); }

 private:
  //! A decoded row, from the moment a read looks at it until it is resolved.
  struct Held {
    core::OutboxEvent event;  //!< its payload, key and headers move out when handed out
    core::ConfirmTracker::TxnSeq txn = 0;
    std::uint32_t xid = 0;
    std::size_t bytes = 0;  //!< core::event_bytes at decoding
    enum class State { unsent, parked, out } state = State::unsent;
    bool has_payload = true;
  };
  struct Queued {
    core::OutboxEvent event;
    core::ConfirmTracker::TxnSeq txn;
    std::uint32_t xid;
  };
  std::vector<core::OutboxEvent> read(std::size_t limit, std::size_t max_bytes,
                                      const std::vector<std::string>& skip_topics);
  void handle(StreamMessage message);
  //! Checks `picked` (4 in the header): resolves the rows already marked or deleted,
  //! waits while a row's transaction is not visible, reads from the table the payload of
  //! rows sent before. Returns the rows to send, in decoded order, handed out.
  std::vector<core::OutboxEvent> hand_out(const std::vector<std::uint64_t>& picked);
  void resolve(std::map<std::uint64_t, Held>::iterator it);
  void report(bool reply);
  void report_if_due();

  ReplicationTable& table_;
  ReplicationStream& stream_;
  core::Clock& clock_;
  const ReplicationSourceOptions& options_;
  std::function<bool()> stopping_;
  bool started_ = false;

  core::ConfirmTracker tracker_;
  std::uint32_t open_xid_ = 0;                          // of the transaction being decoded
  std::deque<Queued> queued_;                           // decoded, not looked at by a read yet
  std::map<std::uint64_t, Held> held_;                  // by decoded order
  std::unordered_map<std::int64_t, std::uint64_t> at_;  // id -> key in held_
  std::uint64_t next_order_ = 1;
  std::size_t out_ = 0;            // rows of held_ handed out since the last by-state read
  std::size_t parked_ = 0;         // rows of held_ parked
  std::size_t park_limit_ = 1000;  // the stream is not read while this many are parked

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

  //! A read by state: nothing may be in flight (every row read before was recorded, or is
  //! taken as not delivered and sent again). Starts, and hands over to the stream, as due.
  std::vector<core::OutboxEvent> begin_batch(std::size_t limit, std::size_t max_bytes,
                                             const std::vector<std::string>& skip_topics) override;
  bool read_ahead() const override { return true; }
  std::vector<core::OutboxEvent> read_after(std::int64_t after_id, std::size_t pending_upto,
                                            std::size_t limit, std::size_t max_bytes,
                                            const std::vector<std::string>& skip_topics) override;
  //! Marks in the table, then resolves the rows (drain list, confirmed position). When
  //! stopped (a connection failed), marks only: the rows come again (through the drain or
  //! the stream) and are dropped once seen marked.
  void record_outcome(const core::BatchOutcome& outcome) override;
  //! Not used by the pipelined core; kept for the one-batch lifecycle of ports.h:
  //! finish_batch is record_outcome, abort_batch records nothing (the rows not recorded
  //! are sent again by the next by-state read).
  void finish_batch(const core::BatchOutcome& outcome) override { record_outcome(outcome); }
  void abort_batch() noexcept override {}
  bool wait_for_rows(std::chrono::milliseconds timeout) override;
  void keep_alive() noexcept override;

  Phase phase() const { return phase_; }
  //! Rows of the drain list not yet resolved (0 when not draining).
  std::size_t drain_left() const { return drain_ ? drain_->left() : 0; }
  Lsn confirmed() const { return stream_source_.confirmed(); }

 private:
  //! Starts (stopped -> draining) and hands over (draining -> streaming) as due. Only with
  //! nothing in flight (a by-state read, wait_for_rows).
  void advance();
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
};

}  // namespace outbox::pg
