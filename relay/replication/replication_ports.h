// The two sides of replication mode as its state machine (replication_source.h) sees them:
// the outbox table, read and marked through the relay's normal session (the one that holds
// the leader lock), and the replication stream, a walsender session on the slot. Every
// PostgreSQL round trip of replication mode goes through one of these two interfaces:
// replication_table.h and replication_stream.h implement them on a server, the unit tests
// with fakes.
//
// Both are used from the relay's one worker thread. Connection failures throw
// core::UnavailableError; conditions no retry cures (slot invalidated or used by another
// consumer, a stream that cannot be decoded) throw core::FatalError.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/event.h"
#include "replication/pgoutput.h"

namespace outbox::replication {

//! What the stream brings, decoded: one CopyData message of START_REPLICATION.
struct StreamMessage {
  enum class Kind {
    keepalive,  //!< the server's end of WAL (`wal`); answer at once when reply_requested
    begin,      //!< a transaction with published changes starts (`xid`: its top-level xid)
    row,        //!< an insert into outbox.events (`event`) of the open transaction
    commit,     //!< the open transaction committed; the stream resumes after it at `end_lsn`
    other,      //!< anything else (other tables, relation metadata, logical messages)
  };
  Kind kind = Kind::other;
  Lsn wal;  //!< keepalive: the server's end of WAL; otherwise where the message starts
  bool reply_requested = false;
  std::uint32_t xid = 0;
  Lsn end_lsn;
  core::OutboxEvent event;
};

//! The replication connection and the slot's administration.
//!
//! Lifecycle: prepare(), then create_slot() and release_snapshot() if the slot is missing,
//! then start(), then read()/send_status() until close(); after close() (or any failure)
//! the next prepare() begins again, with a new connection.
class ReplicationStream {
 public:
  virtual ~ReplicationStream() = default;
  //! Checks (creating it if allowed) the publication, and the slot: true when the slot
  //! exists. A slot held by the walsender of a previous relay session is released here
  //! (core::UnavailableError: try again); one held by another consumer, invalidated or
  //! missing while it may not be created is a core::FatalError.
  virtual bool prepare() = 0;
  //! Creates the slot and exports a snapshot: what it shows is exactly what committed
  //! before the slot's consistent point, and the stream brings exactly what commits after.
  //! The snapshot is valid until the next command on this connection. Waits for the
  //! transactions open at this moment to end (cancelled when the relay stops).
  struct Created {
    Lsn consistent_point;
    std::string snapshot;  //!< for SET TRANSACTION SNAPSHOT
  };
  virtual Created create_slot() = 0;
  //! Ends the exported snapshot (it holds back vacuum while it lives).
  virtual void release_snapshot() = 0;
  //! START_REPLICATION from the slot's confirmed position.
  virtual void start() = 0;
  //! START_REPLICATION that sends only the transactions whose commit record starts at or
  //! after `from` (the server still decodes the ones before, without sending them; from
  //! the slot's confirmed position if that is higher). See replication_source.h, 3a.
  virtual void start_from(Lsn /*from*/) { start(); }
  //! The next message, waiting up to `wait`; nullopt if none came.
  virtual std::optional<StreamMessage> read(std::chrono::milliseconds wait) = 0;
  //! A standby status update: the slot's confirmed position moves to `flushed`.
  virtual void send_status(Lsn written, Lsn flushed, bool reply) = 0;
  //! Drops the connection. Never throws.
  virtual void close() noexcept = 0;
};

//! What one snapshot of the table shows of some streamed rows (ReplicationTable::check).
struct RowCheck {
  //! The rows it shows: id -> still pending (neither published nor dead-lettered).
  std::unordered_map<std::int64_t, bool> pending;
  //! Of the transactions asked about (all committed: the stream sent their Commit), those
  //! whose commit it does not show yet.
  std::unordered_set<std::uint32_t> not_visible;
};

//! outbox.events through the relay's normal session, which holds the leader lock.
class ReplicationTable {
 public:
  virtual ~ReplicationTable() = default;
  //! Connects and takes the leader lock (core::UnavailableError: standing by).
  virtual void connect() = 0;
  //! The highest id pending in the snapshot a slot exported (`name`), 0 if none, and that
  //! snapshot as pg_current_snapshot() prints it. One index probe: the drain is then read by
  //! state among the ids up to it, so nothing of it is held in memory.
  struct Bound {
    std::int64_t upto = 0;
    std::string snapshot;
  };
  virtual Bound pending_bound_in_snapshot(const std::string& name) = 0;
  //! Full (64-bit) ids of the transactions `snapshot` (from pending_bound_in_snapshot) shows
  //! as committed that a new snapshot does not show yet: their commit is written but they
  //! have not left the proc array (e.g. they wait for a synchronous standby).
  virtual std::vector<std::uint64_t> not_yet_visible(const std::string& snapshot) = 0;
  //! Full ids of the transactions clog says committed that a new snapshot does not show yet.
  virtual std::vector<std::uint64_t> committed_not_visible() = 0;
  //! Whether a new snapshot shows every transaction of `xids`.
  virtual bool visible(const std::vector<std::uint64_t>& xids) = 0;
  //! The WAL insert position (`flushed`: the name is older), read first, and then the transactions
  //! a new snapshot does not show as ended (full ids). Once a snapshot shows all of these ended, it
  //! shows every transaction whose commit record starts before `flushed` (replication_source.h,
  //! 3a). nullopt: not known (the stream then starts at the slot's confirmed position).
  struct FlushPoint {
    Lsn flushed;
    std::vector<std::uint64_t> open;
  };
  virtual std::optional<FlushPoint> flush_point() { return std::nullopt; }
  //! The highest id pending now, in a new snapshot; 0 if none.
  virtual std::int64_t pending_bound() = 0;
  //! As core::OutboxStore::read_after (begin_batch when `pending_upto` is nullopt and
  //! `after_id` 0), among the ids up to `upto` only: pending rows with after_id < id <= upto,
  //! in id order, within `limit` and `max_bytes`, leaving out `skip_topics`; none unless
  //! exactly `pending_upto` pending rows of topics not skipped have ids up to `after_id`.
  virtual std::vector<core::OutboxEvent> pending_range(
      std::int64_t after_id, std::int64_t upto, std::optional<std::size_t> pending_upto,
      std::size_t limit, std::size_t max_bytes, const std::vector<std::string>& skip_topics) = 0;
  //! The pending rows of `topics` only, in id order, within `limit` and `max_bytes` (the
  //! rows of deferred topics, read from the table; see replication/replication_source.h, 7).
  virtual std::vector<core::OutboxEvent> pending_of_topics(const std::vector<std::string>& topics,
                                                           std::size_t limit,
                                                           std::size_t max_bytes) = 0;
  //! The pending rows among `ids`, in id order, within `limit` and `max_bytes`.
  virtual std::vector<core::OutboxEvent> pending_rows(const std::vector<std::int64_t>& ids,
                                                      std::size_t limit, std::size_t max_bytes) = 0;
  //! In ONE snapshot: the states of those rows of `ids` it shows, and which of `xids`
  //! (top-level ids of committed transactions) it does not show yet.
  virtual RowCheck check(const std::vector<std::int64_t>& ids,
                         const std::vector<std::uint32_t>& xids) = 0;
  //! As core::OutboxStore::record_outcome (a mark matching fewer rows is an error).
  virtual void record_outcome(const core::BatchOutcome& outcome) = 0;
  //! As core::OutboxStore::take_vanished: the rows record_outcome found gone since the last
  //! call (resolved with the rest of their outcome).
  virtual std::vector<core::VanishedRow> take_vanished() { return {}; }
};

}  // namespace outbox::replication
