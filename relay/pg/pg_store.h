// The outbox table in PostgreSQL, behind core::OutboxStore.
//
// Lifecycle: construct (no I/O), then reads (begin_batch by state, read_after above an id),
// record_outcome per group of answered rows (pipelined, core::OutboxStore::read_ahead) and
// wait_for_rows, from the relay's one worker thread. The connection is opened on first use
// and re-opened after any failure; every libpqxx failure surfaces as core::UnavailableError
// with the server's message. No transaction is open between a read and the marks:
// reading is one prepared statement, recording a group's outcome one short transaction of
// prepared statements with array parameters.
//
// Leadership: each connection takes a session advisory lock before reading, so that one
// relay at a time publishes from a database (per-key order across replicas). A second
// relay stands by: it keeps its session and waits on the lock (pg_advisory_lock under a
// short lock_timeout, then core::StandbyError so the loop ticks and calls again), so that
// PostgreSQL grants it the lock the moment the leader's session ends: at once when the
// leader's process dies (its socket closes), within the keepalive bound (conninfo.h, about
// 10 s) when the network to it is cut.
//
// Own session (pg/session_probe.h): each new connection is probed before anything else; a
// connection pooler in transaction or statement mode is refused with core::FatalError (the
// lock would be left in a server session other clients get), and the leader lock's statement
// checks it ran in the probed session.
//
// Sharded (ShardSettings.shards > 1, pg/shards.h): instead of the leader lock, the relay
// claims shards and reads only their rows (the fetch, its order guard count and the idle
// check all filter on the shard expression). What keeps per-key order:
//  - the shard set changes only at a by-state read (begin_batch), where nothing this store
//    returned is unrecorded (the core records every answered row before a by-state read,
//    and a row not answered is not in flight): extras are given back only there;
//  - a read_after returns nothing unless the shard set and the session are those of the
//    last begin_batch, so a newly taken shard's rows are first read by state, in id order,
//    and the order guard's count is over a set whose pending rows below the last id read
//    are exactly this relay's own in flight plus late commits, as in single-relay mode;
//  - an outcome is recorded only for rows of shards held now (a session that ended lost its
//    shards; rows of one not taken back are dropped from the outcome, stay pending and
//    are sent again by their new holder, as after a crash), so the holder of a shard is the
//    only one writing its rows.
#pragma once

#include <pqxx/pqxx>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>

#include "core/ports.h"
#include "pg/conninfo.h"
#include "pg/outbox_rows.h"
#include "pg/shards.h"

namespace outbox::pg {

//! Where a store's session stands, readable from any thread (metrics, readiness, retention):
//! core::Role (disconnected, standby, leader).
using SessionRole = core::Role;
const char* to_string(SessionRole role);

class PgOutboxStore : public core::OutboxStore, public core::Leadership {
 public:
  //! `conninfo` (built again at each new session: a rotated password file is read then);
  //! `redacted` is what logs may show of it.
  //! `shards`: scale-out (see above); the default is one relay publishing everything.
  //! `clock` (which outlives this) times the shards' rebalancing and the standby's wait.
  PgOutboxStore(Conninfo conninfo, std::string redacted, const core::Clock& clock,
                ShardSettings shards = {});
  ~PgOutboxStore() override;

  std::vector<core::OutboxEvent> begin_batch(std::size_t limit, std::size_t max_bytes,
                                             const std::vector<std::string>& skip_topics) override;
  //! Reads hold nothing, marks are record_outcome (one transaction per group).
  std::vector<core::OutboxEvent> read_after(std::int64_t after_id, std::size_t pending_upto,
                                            std::size_t limit, std::size_t max_bytes,
                                            const std::vector<std::string>& skip_topics) override;
  bool wait_for_rows(std::chrono::milliseconds timeout) override;

  //! Marks by (id, event_id) where outcome.rows gives the event (see core::OutboxStore);
  //! the rows not matched are looked at again in the same transaction: a row gone
  //! (core::VanishedRow) is written to outbox.vanished (when the schema has it) and kept for
  //! take_vanished(), anything else rolls the whole outcome back (UnavailableError).
  void record_outcome(const core::BatchOutcome& outcome) override;
  std::vector<core::VanishedRow> take_vanished() override;
  //! Runs `body` on this store's session (connecting and taking the leader lock first), for
  //! the queries of replication mode (replication/replication_table.h). A failure disconnects and
  //! throws core::UnavailableError, as the other calls do.
  void with_connection(const std::function<void(pqxx::connection&)>& body);

  //! Set by the worker thread as it connects, fails or stands by; read from any thread.
  //! Sharded: leader while it holds at least one shard, standby while it holds none.
  SessionRole role() const override { return role_.load(std::memory_order_relaxed); }
  //! Shards in all (1: not sharded), held now, relays sharing them (any thread).
  int shards() const { return shard_settings_.shards; }
  int shards_held() const { return shards_held_.load(std::memory_order_relaxed); }
  int shard_members() const { return shard_members_.load(std::memory_order_relaxed); }
  //! Whether this relay does the database's chores (retention): the leader, or when
  //! sharded the holder of shard 0, so that exactly one relay does them at a time.
  bool runs_chores() const override {
    return shard_settings_.shards > 1 ? holds_shard_zero_.load(std::memory_order_relaxed)
                                      : role() == SessionRole::leader;
  }

  //! The channel outbox.hint_relay() notifies.
  static constexpr const char* kChannel = "outbox_events";

 private:
  class HintReceiver;
  void connect();
  void connect_sharded();
  //! A new connection, refused (core::FatalError) unless its server session is its own
  //! (invariant own-session, session_probe.h).
  void open_session();
  //! Sharded: rebalances when due (gives back extras only `at_rest`), waits as a standby
  //! while it holds nothing (`wait`); publishes the held set. Throws StandbyError.
  void update_claims(bool at_rest, bool wait);
  //! The outcome restricted to rows of shards held now (sharded).
  core::BatchOutcome held_part(const core::BatchOutcome& outcome);
  bool wait_for_leader_lock();
  void disconnect() noexcept;
  [[noreturn]] void fail(const std::exception& e);
  std::vector<core::OutboxEvent> fetch(std::int64_t after_id, long long pending_upto,
                                       std::size_t limit, std::size_t max_bytes,
                                       const std::vector<std::string>& skip_topics);

  Conninfo conninfo_;
  std::string redacted_;
  const core::Clock& clock_;
  std::unique_ptr<pqxx::connection> conn_;
  std::unique_ptr<HintReceiver> receiver_;
  bool need_rearm_ = true;
  std::vector<core::VanishedRow> vanished_;  //!< found gone by committed marks, not taken
  int session_pid_ = 0;                      //!< conn_'s server process, as probed
  std::string session_marker_;               //!< the marker the probe set in conn_'s session
  bool pooler_logged_ = false;               //!< a session-mode pooler was logged once
  std::optional<std::chrono::steady_clock::time_point> standby_since_;
  std::atomic<SessionRole> role_{SessionRole::disconnected};

  // Sharded mode (shards.h).
  bool sharded() const { return shard_settings_.shards > 1; }
  ShardSettings shard_settings_;
  ShardClaims claims_;
  OutboxRows rows_;              //!< the fetch (sharded: of the shards in $6) and the marks
  std::string pending_sql_;      //!< whether a row is pending (sharded: of the shards in $1)
  std::set<int> read_set_;       //!< the shards of the last begin_batch
  bool read_set_valid_ = false;  //!< ... on the same PostgreSQL session
  std::set<int> held_before_;    //!< held when the last session ended (taken back first)
  std::set<int> logged_set_;     //!< the held set last logged
  int logged_members_ = 0;
  std::chrono::steady_clock::time_point next_rebalance_{};
  std::unordered_map<std::int64_t, int> row_shard_;  //!< rows returned and not recorded
  std::atomic<int> shards_held_{0};
  std::atomic<int> shard_members_{0};
  std::atomic<bool> holds_shard_zero_{false};
};

}  // namespace outbox::pg
