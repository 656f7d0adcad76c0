// Replication mode's state machine, behind core::OutboxStore so that the same BatchRelay
// drives both modes: which pending rows are published from the table (the drain), when the
// stream takes over, and which stream position may be confirmed. It sees PostgreSQL only
// through replication/replication_ports.h and time only through core::Clock, so its rules are
// unit-tested against fakes (tests/replication_source_test.cc).
//
// It is pipelined like polling (several reads in flight): begin_batch reads
// "by state", when nothing is in flight; read_after reads the next rows while earlier ones
// wait for Kafka; record_outcome records answered rows in groups, in any order.
//
// Phases (Phase): stopped -> draining -> streaming. A connection failure anywhere goes back
// to stopped (core::UnavailableError; the next by-state read starts again), a fatal one
// stops the relay (core::FatalError).
//   stopped    take the leader lock, check the publication and the slot, and fix the
//              drain's bound: the highest id pending that the stream may not bring (2, 3
//              below). Only a by-state read (or wait_for_rows, also called with nothing in
//              flight) starts; read_after returns nothing and record_outcome only marks.
//   draining   DrainSource publishes the pending rows with ids up to the bound, in id order,
//              read as polling reads them (by state from the lowest; read_after above the
//              last id read, with polling's guard against a row committed late below it),
//              leaving out the skipped topics. A row retried or left pending (Kafka down)
//              stays pending, and since the core reads nothing more after a failed delivery
//              until the window drained, the next by-state read sends it again, first. The
//              stream is not read meanwhile.
//   streaming  once a by-state read of the drain finds no row up to the bound pending but
//              those of skipped topics: START_REPLICATION, then StreamSource: rows in the
//              stream's (commit) order; the skipped topics are deferred (7).
//
// Why the hand-over is exact: no row lost, none published twice by the hand-over, no
// streamed row before a drained row of its key, and no time margin anywhere. The invariants
// by name (docs/design/invariants.md): drain-covers-pending (2, 3), visible-before-send (4),
// confirm-below-pending (5), drain-before-stream (6), deferred-topic-from-table (7).
//  1. A row is pending from the commit of its INSERT (rows only ever appear by insert, a
//     replay inserts a copy) until it is marked published or dead-lettered. The stream
//     brings the inserts of exactly the transactions that commit after the slot's confirmed
//     position, where START_REPLICATION resumes.
//  2. First start (the slot is created now). CREATE_REPLICATION_SLOT exports a snapshot S
//     that shows exactly the transactions committed before the slot's consistent point,
//     where the stream starts. The drain's bound is the highest id pending in S: it (and S's
//     own xmin:xmax:xip) is read at once on the normal session (SET TRANSACTION SNAPSHOT,
//     while the replication connection is still idle), then S is released (it would hold
//     back vacuum for the whole drain). The drain reads the rows pending up to S's highest
//     pending id: every row pending in S, and maybe rows committed after the consistent
//     point with lower ids, which the stream brings again and drops as marked (4). Together
//     they hold every row.
//     One more step before the drain reads a row: S counts a transaction as committed once
//     its commit record is decoded, a moment before the committing backend leaves the proc
//     array (for as long as it waits for a synchronous standby, say), and until then new
//     snapshots, which the drain reads and marks with, do not show it. Those transactions
//     are exactly the ones S counts as ended (below its xmax, not in its xip) that a new
//     snapshot does not: in its xip, or at or above its xmax (xmax only moves once a
//     transaction has left the proc array), found as a backend's xid. The relay waits,
//     without deadline, until a new snapshot shows them all. From then on a row pending in S
//     that a new snapshot does not show as pending is resolved (or was deleted): a row is
//     never taken for resolved for not being visible yet.
//  3. Restart (the slot exists, confirmed at C; no snapshot can be exported for it). The rows
//     the stream will not bring are those pending and committed before C. By invariant
//     confirm-below-pending (5) every streamed transaction before C has all its rows marked, so
//     these committed before the slot's consistent point: left by an interrupted drain (2), or the
//     slot was made by someone else. For a slot this relay made, a snapshot taken now shows them
//     all (2 waited for that, and what a snapshot shows never shrinks). For a slot made elsewhere,
//     a transaction may have committed before its consistent point and still be in the
//     proc array; clog already says committed for it (clog is set in the commit's own
//     critical section, before the commit record can be decoded). So, always: take the
//     transactions a new snapshot does not show as ended (its xip, and any backend's xid at
//     or above its xmax), keep those clog says committed, wait (no deadline) until a new
//     snapshot shows them, and then take the highest pending id of a new snapshot as the
//     bound: the drain reads every pending row up to it. That is a superset of what is
//     needed: it also holds rows committed after C, which the stream brings again and drops
//     as marked (4). A superset is safe, a subset is not, which is why the bound is not
//     "below the smallest id the stream can bring": ids are taken at insert, not at commit,
//     so a transaction still open at C may bring any older id, and no bound on it is known
//     before the stream has been read to its end.
//     A restart happens only at a by-state read, so nothing of the previous session is in
//     flight then: what the core still had in flight when the connection failed was
//     answered and recorded (marks only) before; what it could not record stays pending
//     and is in the new list.
//  3a. Restart, where the stream starts: without more, at C, and it would bring again every
//     row the drain just published (all the rows committed while the relay was away: after a
//     1,000,000-row drain the walsender decodes and sends them all, the relay checks and drops
//     each, and a new row waits behind them for seconds). Instead: first read F, the WAL
//     insert position (not the flush position, which asynchronous commits leave behind the
//     commits: the stream then sent again most of what the drain publishes), then (a new snapshot)
//     the transactions open, and wait a little for all of these to end (not at all: start at C as
//     before). A transaction whose commit record starts before F had its xid before that snapshot
//     and was either ended in it or open in it, so once those have ended the bound's snapshot
//     (taken after) shows every transaction that commits before F. The drain publishes every row
//     pending in it up to the bound, and its rows above the bound cannot be pending there (the
//     bound is the highest pending id). So everything committed before F is resolved once the drain
//     is done (rows of skipped topics: read from the table, 7), and the stream may start at F:
//     START_REPLICATION at F sends only transactions whose commit starts at or after F.
//     The server still reads and decodes the WAL from the slot's restart point to F (it
//     only does not send it): that is why the stream is opened at F when the drain starts,
//     not when it ends. Nothing of it is handled during the drain: keep_alive takes what the
//     server sends out of the socket (keepalives answered and dropped, the rest kept in order
//     for the first read, invariant early-stream-read in stream_source.h), so that the
//     server never waits on a full socket and ends the connection, and only the old
//     confirmed position is reported; once the
//     drain is done F is confirmed with the rest (invariant 5: everything before F is then
//     marked), and a new row comes as soon as the server has read to it, not a drain's WAL
//     later. A failure of the stream during the drain is seen at its first read, after the
//     drain: the next by-state read starts again (a new drain, nothing pending left).
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
//  5. Invariant confirm-below-pending: the slot's confirmed position moves past a
//     transaction only once each of its events was acknowledged by Kafka (or dead-lettered)
//     and marked
//     (ConfirmTracker: an event is resolved only after record_outcome's mark
//     committed, and the position is the end of the longest prefix of committed
//     transactions with every event resolved, so groups recorded in any order never move
//     it past an event still in flight or retried). A keepalive's position is confirmed
//     only when no decoded event at all is unresolved.
//  6. Order: the stream is read only after the drain ended, and the drain ends only at a
//     by-state read (nothing in flight) that finds every row of its list resolved, so every
//     drained row was acknowledged before any streamed row (of any key) is sent.
//     Within the drain, rows are sent in id order, as polling sends them, with polling's
//     guard (pending_upto): a read-ahead returns rows only while every pending row up to
//     after_id is one the relay has in flight; one more (a late commit below it, or a row
//     the core left unsent, its topic blocked) must not be overtaken, so nothing is read
//     ahead until the next by-state read.
//     Within the stream, rows are sent in the order they were decoded (commit order; a
//     transaction's rows in its own order). A row sent and not resolved by the next
//     by-state read (a failed delivery: the core reads nothing more until the window
//     drained) comes first in that read, in its original order, with the rows left for
//     later; read_after returns rows only while every row it handed out since the by-state
//     read is in the core's window (pending_upto: the core left none unsent) and sends
//     older unsent rows before newer ones, so the rows of one topic are sent in decoded
//     order.
//  7. Deferred topics: a topic Kafka refuses (TopicGate, core/topic_gate.h: unknown, not
//     authorized, a policy) must hold neither the other topics, nor the relay's memory, nor
//     the slot's WAL, however many rows it gets. So its rows are not kept: a streamed row of
//     a skipped or deferred topic is checked as any streamed row (4: its transaction
//     visible, waited for if not), and then forgotten and resolved for the confirmed
//     position, its topic deferred. Sound because the row is pending and visible in the
//     table (or resolved since), and the table, not the stream, is the truth: a deferred
//     topic's rows are read from the table by state (pending_of_topics, id order) at each
//     by-state read once the topic is no longer skipped (no read-ahead meanwhile), before
//     any later streamed row of the topic (those are deferred too). The topic is streamed
//     again only after a by-state read (nothing in flight) whose complete table read found
//     none of its rows pending: every row the stream deferred was visible before it was
//     forgotten, so it was in that read unless resolved; a row decoded later and not yet
//     looked at is checked (4) when it is. A restart loses nothing: the drain's bound
//     covers every pending row (3), the drain leaves the skipped topics out, and those
//     become deferred at the hand-over. Invariants confirm-below-pending with
//     deferred-topic-from-table: the position passes a transaction once each of its events was
//     acknowledged and marked, dead-lettered, or deferred (visible and pending in the table,
//     published from there).
//
// Memory: nothing per pending row at the start (the drain reads by state up to a bound).
// The stream is read only as far as a read needs (rows and bytes), whatever the size of a
// transaction; a streamed row handed to the core keeps only its id, topic, size and
// transaction here (its payload moves to the core), and is read again from the table when
// it must be sent again; rows of refused topics are not kept at all (7). A read looks at no
// more than 8 x `limit` streamed rows, so a long run of deferred rows never keeps the loop
// from its health ticks.
//
// Lifecycle and thread: as core::OutboxStore, one worker thread; the ports and the clock
// outlive this object.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/ports.h"
#include "replication/drain_source.h"
#include "replication/replication_ports.h"
#include "replication/stream_source.h"

namespace outbox::replication {

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
  std::vector<core::OutboxEvent> read_after(std::int64_t after_id, std::size_t pending_upto,
                                            std::size_t limit, std::size_t max_bytes,
                                            const std::vector<std::string>& skip_topics) override;
  //! Marks in the table, then resolves the rows (the confirmed position). When
  //! stopped (a connection failed), marks only: the rows come again (through the drain or
  //! the stream) and are dropped once seen marked.
  void record_outcome(const core::BatchOutcome& outcome) override;
  //! The rows the table's marks found gone (ReplicationTable::take_vanished). They are
  //! resolved with the rest of their outcome (nothing more can come of them), so they do
  //! not hold the slot's confirmed position back.
  std::vector<core::VanishedRow> take_vanished() override { return table_.take_vanished(); }
  bool wait_for_rows(std::chrono::milliseconds timeout) override;
  void keep_alive() noexcept override;

  Phase phase() const { return phase_; }
  //! While draining, the highest id the drain reads (2, 3 in the header); else nullopt.
  std::optional<std::int64_t> drain_upto() const {
    return drain_ ? std::optional<std::int64_t>(drain_->upto()) : std::nullopt;
  }
  //! Topics whose rows are read from the table rather than the stream (7).
  const std::set<std::string>& deferred_topics() const { return stream_source_.deferred(); }
  //! Streamed rows held here (handed out, or to be sent again).
  std::size_t unresolved() const { return stream_source_.unresolved(); }
  Lsn confirmed() const { return stream_source_.confirmed(); }

 private:
  //! Starts (stopped -> draining) and hands over (draining -> streaming) as due. Only with
  //! nothing in flight (a by-state read, wait_for_rows).
  void advance();
  void start();
  //! Until a new snapshot shows every transaction of `xids`; no deadline.
  void wait_visible(const std::vector<std::uint64_t>& xids);
  //! Whether a new snapshot shows every transaction of `xids` within a few short retries.
  bool ended_soon(const std::vector<std::uint64_t>& xids);
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
  //! Where the stream starts after a restart's drain (3a); 0: the slot's confirmed position.
  Lsn skip_to_;
  StreamSource stream_source_;
};

}  // namespace outbox::replication
