#include "pg/leader_session.h"

#include <utility>

#include "common/logging.h"
#include "pg/session_probe.h"

namespace outbox::pg {

namespace {

// One key for every relay of a database: whoever holds it publishes. A session lock: it is
// freed only when the holder's session ends (the relay unlocks it only where it took it in a
// session not its own, below).
// The process id and session marker come with it (invariant own-session, session_probe.h):
// the lock is the relay's only if this statement ran in the session probed at connect.
constexpr const char* kLeaderLockSql =
    "SELECT pg_advisory_lock(hashtext('outbox-relay')), pg_backend_pid(), "
    "coalesce(current_setting('outbox.session_probe', true), '')";
constexpr const char* kLeaderUnlockSql = "SELECT pg_advisory_unlock(hashtext('outbox-relay'))";
// How long one connect() waits on the lock before telling the loop it stands by. PostgreSQL
// grants a waited-for lock the moment it is freed, so this bounds only how long the loop goes
// without a tick (observer: at least every second), not the take-over.
// statement_timeout 0: a role's own statement_timeout below 800 ms would end every wait with
// an error (and the session: the standby reconnected with backoff instead of standing by).
constexpr const char* kStandbyWaitSql =
    "SET LOCAL lock_timeout = '800ms'; SET LOCAL statement_timeout = 0";
constexpr const char* kLockNotAvailable = "55P03";  // lock_timeout expired

}  // namespace

class LeaderSession::HintReceiver : public pqxx::notification_receiver {
 public:
  explicit HintReceiver(pqxx::connection_base& conn)
      : pqxx::notification_receiver(conn, LeaderSession::kChannel) {}
  void operator()(const std::string&, int) override { ++received; }
  int received = 0;
};

const char* to_string(SessionRole role) {
  switch (role) {
    case SessionRole::disconnected:
      return "disconnected";
    case SessionRole::standby:
      return "standby";
    case SessionRole::leader:
      return "leader";
  }
  return "unknown";
}

LeaderSession::LeaderSession(Conninfo conninfo, std::string redacted, const core::Clock& clock,
                             ShardSettings shards, std::function<void(pqxx::connection&)> opened)
    : conninfo_(std::move(conninfo)),
      redacted_(std::move(redacted)),
      clock_(clock),
      shard_settings_(shards),
      opened_(std::move(opened)),
      claims_(shards) {}

LeaderSession::~LeaderSession() { disconnect(); }

void LeaderSession::disconnect() noexcept {
  receiver_.reset();
  conn_.reset();
  leading_ = false;
  need_rearm_ = true;
  role_ = SessionRole::disconnected;
  if (sharded()) {
    // PostgreSQL released every claim with the session.
    if (!claims_.held().empty()) held_before_ = claims_.held();
    claims_.reset();
    shards_held_ = 0;
    holds_shard_zero_ = false;
  }
}

void LeaderSession::fail(const std::exception& e) {
  disconnect();
  std::string message = std::string("PostgreSQL: ") + e.what();
  if (auto hint = pooler_startup_hint(e.what())) message += " (" + *hint + ")";
  throw core::UnavailableError(message);
}

void LeaderSession::open() {
  std::string conninfo = conninfo_.current();
  conn_ = std::make_unique<pqxx::connection>(conninfo);
  ++generation_;
  session_marker_ = new_session_marker();
  SessionFinding found = probe_session(*conn_, conninfo, session_marker_, &session_pid_);
  if (!found.own_session()) {
    disconnect();
    throw core::FatalError(found.refusal() + "; " + pooler_fix());
  }
  if (found.mode == SessionMode::session && !pooler_logged_) {
    pooler_logged_ = true;
    logging::get("pg")->info("postgres session: {}", found.describe());
  }
}

void LeaderSession::connect() {
  if (conn_ && leading_) return;
  auto log = logging::get("pg");
  try {
    // A standby keeps its session between calls and waits on the lock (or the claims) again:
    // no reconnect, no backoff pause between the leader's session ending and this one taking
    // over.
    if (!conn_) open();
    if (auto refusal = lead()) {
      role_ = SessionRole::standby;
      if (!standby_since_) {
        standby_since_ = clock_.now();
        log->info("{}", refusal->log);
      }
      throw core::StandbyError(refusal->error);
    }
    receiver_ = std::make_unique<HintReceiver>(*conn_);
    if (opened_) opened_(*conn_);
    leading_ = true;
    // Sharded, the role follows the shards held (update_claims).
    if (!sharded()) role_ = SessionRole::leader;
    next_rebalance_ = {};  // sharded: look at once
    logged_set_.clear();
    std::string leads = sharded() ? "as one of the relays sharing " +
                                        std::to_string(shard_settings_.shards) + " shards"
                                  : "and holding the leader lock";
    if (standby_since_) {
      auto waited = std::chrono::duration<double>(clock_.now() - *standby_since_);
      log->info("connected to PostgreSQL ({}) {} (stood by {:.1f} s)", redacted_, leads,
                waited.count());
      standby_since_.reset();
    } else {
      log->info("connected to PostgreSQL ({}) {}", redacted_, leads);
    }
  } catch (const core::UnavailableError&) {
    throw;
  } catch (const core::FatalError&) {
    disconnect();
    throw;
  } catch (const std::exception& e) {
    fail(e);
  }
}

std::optional<LeaderSession::Refusal> LeaderSession::lead() {
  if (sharded()) {
    std::string why;
    if (claims_.join(*conn_, why)) return std::nullopt;
    return Refusal{"standing by: " + why, "standing by: " + why};
  }
  if (wait_for_leader_lock()) return std::nullopt;
  return Refusal{"another outbox-relay holds the leader lock on this database; standing by",
                 "standing by: another outbox-relay is publishing"};
}

void LeaderSession::update_claims(bool at_rest, bool wait) {
  auto now = clock_.now();
  bool due =
      now >= next_rebalance_ || claims_.held().empty() || (at_rest && claims_.wants_release());
  if (due) {
    claims_.rebalance(*conn_, at_rest, held_before_);
    next_rebalance_ = now + shard_settings_.rebalance_interval;
  }
  if (claims_.held().empty() && wait) claims_.wait_for_one(*conn_);
  const std::set<int>& held = claims_.held();
  if (!held.empty()) held_before_.clear();
  shards_held_ = static_cast<int>(held.size());
  shard_members_ = claims_.members();
  holds_shard_zero_ = held.count(0) > 0;
  role_ = held.empty() ? SessionRole::standby : SessionRole::leader;
  if (held != logged_set_ || claims_.members() != logged_members_) {
    logging::get("pg")->info("holding shards {} of {} (relays sharing them: {})", shard_list(held),
                             shard_settings_.shards, claims_.members());
    logged_set_ = held;
    logged_members_ = claims_.members();
  }
  if (held.empty() && wait) {
    throw core::StandbyError("standing by: every shard is held by another outbox-relay");
  }
}

bool LeaderSession::wait_for_leader_lock() {
  // In a transaction only so that lock_timeout is SET LOCAL: the session-level lock outlives
  // it. Should the timeout and the grant coincide, the lock is held anyway and the next call
  // gets it again at once (session locks stack; the relay never unlocks, its session ending
  // frees them all).
  pqxx::work txn(*conn_);
  txn.exec0(kStandbyWaitSql);
  pqxx::row row;
  try {
    row = txn.exec1(kLeaderLockSql);
  } catch (const pqxx::sql_error& e) {
    if (e.sqlstate() == kLockNotAvailable) return false;  // txn rolls back as it goes
    throw;
  }
  if (auto moved = session_moved(session_pid_, session_marker_, row[1].as<int>(),
                                 row[2].as<std::string>())) {
    // Taken in a session that is not this relay's: give it back there (the transaction keeps
    // the pooler on that session) rather than leave it to whoever gets the session next.
    txn.exec1(kLeaderUnlockSql);
    txn.commit();
    throw core::FatalError("taking the leader lock, " + *moved + "; " + pooler_fix());
  }
  txn.commit();
  return true;
}

bool LeaderSession::wait_for_hint(std::chrono::milliseconds timeout,
                                  const std::function<bool(pqxx::connection&)>& pending) {
  if (need_rearm_) {
    // Re-arm the hint and commit, then look once in a fresh snapshot: a writer that read
    // the hint as still sent before the re-arm committed sends none, but its row is seen
    // here if it committed by now (later ones are left to the interval).
    // The next enqueue's nextval() returns 1 again, and that writer notifies (schema 0003).
    {
      pqxx::nontransaction n(*conn_);
      n.exec("SELECT setval('outbox.relay_wakeup_seq', 1, false)");
    }
    bool found = pending(*conn_);
    need_rearm_ = false;
    if (found) return true;
  }
  auto ms = timeout.count();
  int got = conn_->await_notification(ms / 1000, (ms % 1000) * 1000);
  if (got > 0) {
    need_rearm_ = true;
    return true;
  }
  return false;
}

}  // namespace outbox::pg
