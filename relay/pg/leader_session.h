// The leader's PostgreSQL session, one for both source modes: the session the relay reads and
// marks outbox rows on (polling: pg/pg_store.h; replication: replication/replication_table.h).
//
// Lifecycle: construct (no I/O); connect() before each use opens the session when there is
// none, probes it (invariant own-session, session_probe.h), takes the leader lock or joins
// the shard claims, and LISTENs for the hint; it returns at once while the session leads.
// Any failure ends the session (fail(): core::UnavailableError with the server's message),
// and the next connect() opens a new one. One thread (the relay's worker) uses it; role(),
// shards_held(), shard_members() and runs_chores() are read from any thread.
//
// Leadership (invariant one-publisher): one relay at a time publishes a database's rows. The
// two ways of leading differ only in what connect() takes on the session:
//  - single (ShardSettings.shards 1): a session advisory lock. A second relay stands by: it
//    keeps its session and waits on the lock (pg_advisory_lock under a short lock_timeout,
//    then core::StandbyError so the loop ticks and calls again), so that PostgreSQL grants it
//    the lock the moment the leader's session ends: at once when the leader's process dies
//    (its socket closes), within the keepalive bound (conninfo.h, about 10 s) when the network
//    to it is cut.
//  - sharded (shards > 1, pg/shards.h): the shard claims instead (join, then
//    update_claims()): a relay leads while it holds at least one shard.
//
// Own session (pg/session_probe.h): each new session is probed before anything else; a
// connection pooler in transaction or statement mode is refused with core::FatalError (the
// lock would be left in a server session other clients get), and the leader lock's statement
// checks it ran in the probed session.
#pragma once

#include <pqxx/pqxx>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "core/ports.h"
#include "pg/conninfo.h"
#include "pg/shards.h"

namespace outbox::pg {

//! Where a session stands, readable from any thread (metrics, readiness, retention):
//! core::Role (disconnected, standby, leader).
using SessionRole = core::Role;
const char* to_string(SessionRole role);

class LeaderSession : public core::Leadership {
 public:
  //! `conninfo` (built again at each new session: a rotated password file is read then);
  //! `redacted` is what logs may show of it. `shards`: the default is the leader lock.
  //! `clock` (which outlives this) times the shards' rebalancing and the standby's wait.
  //! `opened` runs on each new session once it leads, before it is reported leading (the
  //! statements its holder needs on the session: OutboxRows::open).
  LeaderSession(Conninfo conninfo, std::string redacted, const core::Clock& clock,
                ShardSettings shards = {}, std::function<void(pqxx::connection&)> opened = nullptr);
  ~LeaderSession() override;
  LeaderSession(const LeaderSession&) = delete;
  LeaderSession& operator=(const LeaderSession&) = delete;

  //! Opens the session and leads as described above; returns at once while it leads.
  //! Throws core::StandbyError (standing by), core::UnavailableError, core::FatalError.
  void connect();
  //! The session; only after connect() returned.
  pqxx::connection& conn() { return *conn_; }
  //! Counts the sessions opened: a value seen before names the same session, still open.
  std::uint64_t generation() const { return conn_ ? generation_ : 0; }
  //! Ends the session (PostgreSQL frees its locks with it). Never throws.
  void disconnect() noexcept;
  //! Ends the session and throws `e` as core::UnavailableError (with the pooler hint when
  //! `e` is a refused startup parameter).
  [[noreturn]] void fail(const std::exception& e);

  //! Sharded: rebalances when due (gives back extras only `at_rest`), waits as a standby
  //! while it holds nothing (`wait`: then throws core::StandbyError); publishes the held set.
  void update_claims(bool at_rest, bool wait);
  const std::set<int>& held() const { return claims_.held(); }
  bool wants_release() const { return claims_.wants_release(); }

  //! Waits up to `timeout` for the hint (outbox.hint_relay()), true when it came. Re-arms it
  //! first when due, then asks `pending` (on its session) whether a row is pending already:
  //! true at once if so.
  bool wait_for_hint(std::chrono::milliseconds timeout,
                     const std::function<bool(pqxx::connection&)>& pending);

  //! Set by the worker thread as it connects, fails or stands by; read from any thread.
  //! Sharded: leader while it holds at least one shard, standby while it holds none.
  SessionRole role() const override { return role_.load(std::memory_order_relaxed); }
  //! Whether this relay does the database's chores (retention): the leader, or when
  //! sharded the holder of shard 0, so that exactly one relay does them at a time.
  bool runs_chores() const override {
    return sharded() ? holds_shard_zero_.load(std::memory_order_relaxed)
                     : role() == SessionRole::leader;
  }
  bool sharded() const { return shard_settings_.shards > 1; }
  //! Shards in all (1: not sharded), held now, relays sharing them (any thread).
  int shards() const { return shard_settings_.shards; }
  int shards_held() const { return shards_held_.load(std::memory_order_relaxed); }
  int shard_members() const { return shard_members_.load(std::memory_order_relaxed); }

  //! The channel outbox.hint_relay() notifies.
  static constexpr const char* kChannel = "outbox_events";

 private:
  class HintReceiver;
  //! Why this relay stands by: the log line (once per wait) and the error's message.
  struct Refusal {
    std::string log;
    std::string error;
  };
  //! A new connection, refused (core::FatalError) unless its server session is its own.
  void open();
  //! Takes the leader lock, or joins the shard claims: nullopt when it leads.
  std::optional<Refusal> lead();
  bool wait_for_leader_lock();

  Conninfo conninfo_;
  std::string redacted_;
  const core::Clock& clock_;
  ShardSettings shard_settings_;
  std::function<void(pqxx::connection&)> opened_;
  std::unique_ptr<pqxx::connection> conn_;
  std::unique_ptr<HintReceiver> receiver_;
  bool leading_ = false;  //!< the lock is held, or the claims joined, on conn_
  std::uint64_t generation_ = 0;
  bool need_rearm_ = true;
  int session_pid_ = 0;         //!< conn_'s server process, as probed
  std::string session_marker_;  //!< the marker the probe set in conn_'s session
  bool pooler_logged_ = false;  //!< a session-mode pooler was logged once
  std::optional<std::chrono::steady_clock::time_point> standby_since_;
  std::atomic<SessionRole> role_{SessionRole::disconnected};

  // Sharded (shards.h).
  ShardClaims claims_;
  std::set<int> held_before_;  //!< held when the last session ended (taken back first)
  std::set<int> logged_set_;   //!< the held set last logged
  int logged_members_ = 0;
  std::chrono::steady_clock::time_point next_rebalance_{};
  std::atomic<int> shards_held_{0};
  std::atomic<int> shard_members_{0};
  std::atomic<bool> holds_shard_zero_{false};
};

}  // namespace outbox::pg
