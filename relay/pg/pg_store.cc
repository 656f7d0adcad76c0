#include "pg/pg_store.h"

#include <pqxx/pqxx>

#include <limits>
#include <set>
#include <stdexcept>

#include "common/logging.h"
#include "pg/outbox_rows.h"
#include "pg/pg_array.h"
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

class PgOutboxStore::HintReceiver : public pqxx::notification_receiver {
 public:
  explicit HintReceiver(pqxx::connection_base& conn)
      : pqxx::notification_receiver(conn, PgOutboxStore::kChannel) {}
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

PgOutboxStore::PgOutboxStore(Conninfo conninfo, std::string redacted, const core::Clock& clock,
                             ShardSettings shards)
    : conninfo_(std::move(conninfo)),
      redacted_(std::move(redacted)),
      clock_(clock),
      shard_settings_(shards),
      claims_(shards),
      rows_(polling_fetch_sql(shards.shards)),
      pending_sql_(pending_exists_sql(shards.shards)) {}

PgOutboxStore::~PgOutboxStore() { disconnect(); }

void PgOutboxStore::disconnect() noexcept {
  receiver_.reset();
  conn_.reset();
  rows_.close();
  need_rearm_ = true;
  role_ = SessionRole::disconnected;
  if (sharded()) {
    // PostgreSQL released every claim with the session.
    if (!claims_.held().empty()) held_before_ = claims_.held();
    claims_.reset();
    read_set_valid_ = false;
    shards_held_ = 0;
    holds_shard_zero_ = false;
  }
}

void PgOutboxStore::fail(const std::exception& e) {
  disconnect();
  std::string message = std::string("PostgreSQL: ") + e.what();
  if (auto hint = pooler_startup_hint(e.what())) message += " (" + *hint + ")";
  throw core::UnavailableError(message);
}

void PgOutboxStore::open_session() {
  std::string conninfo = conninfo_.current();
  conn_ = std::make_unique<pqxx::connection>(conninfo);
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

void PgOutboxStore::connect() {
  if (sharded()) return connect_sharded();
  if (conn_ && role_.load(std::memory_order_relaxed) == SessionRole::leader) return;
  auto log = logging::get("pg");
  try {
    // A standby keeps its session between calls and waits on the lock again: no reconnect,
    // no backoff pause between the leader's session ending and this one taking over.
    if (!conn_) open_session();
    if (!wait_for_leader_lock()) {
      role_ = SessionRole::standby;
      if (!standby_since_) {
        standby_since_ = clock_.now();
        log->info("another outbox-relay holds the leader lock on this database; standing by");
      }
      throw core::StandbyError("standing by: another outbox-relay is publishing");
    }
    receiver_ = std::make_unique<HintReceiver>(*conn_);
    rows_.open(*conn_);
    role_ = SessionRole::leader;
    if (standby_since_) {
      auto waited = std::chrono::duration<double>(clock_.now() - *standby_since_);
      log->info("connected to PostgreSQL ({}) and holding the leader lock (stood by {:.1f} s)",
                redacted_, waited.count());
      standby_since_.reset();
    } else {
      log->info("connected to PostgreSQL ({}) and holding the leader lock", redacted_);
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

void PgOutboxStore::connect_sharded() {
  if (conn_ && claims_.joined()) return;
  auto log = logging::get("pg");
  try {
    if (!conn_) open_session();
    std::string why;
    if (!claims_.join(*conn_, why)) {
      role_ = SessionRole::standby;
      if (!standby_since_) {
        standby_since_ = clock_.now();
        log->info("standing by: {}", why);
      }
      throw core::StandbyError("standing by: " + why);
    }
    standby_since_.reset();
    receiver_ = std::make_unique<HintReceiver>(*conn_);
    rows_.open(*conn_);
    next_rebalance_ = {};  // look at once
    logged_set_.clear();
    log->info("connected to PostgreSQL ({}) as one of the relays sharing {} shards", redacted_,
              shard_settings_.shards);
  } catch (const core::UnavailableError&) {
    throw;
  } catch (const core::FatalError&) {
    disconnect();
    throw;
  } catch (const std::exception& e) {
    fail(e);
  }
}

void PgOutboxStore::update_claims(bool at_rest, bool wait) {
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

core::BatchOutcome PgOutboxStore::held_part(const core::BatchOutcome& outcome) {
  const std::set<int>& held = claims_.held();
  std::size_t dropped = 0;
  auto mine = [&](std::int64_t id) {
    auto it = row_shard_.find(id);
    bool keep = it != row_shard_.end() && held.count(it->second) > 0;
    if (!keep) ++dropped;
    return keep;
  };
  core::BatchOutcome part;
  part.rows = outcome.rows;
  for (auto id : outcome.published) {
    if (mine(id)) part.published.push_back(id);
  }
  for (const auto& f : outcome.retry) {
    if (mine(f.id)) part.retry.push_back(f);
  }
  for (const auto& f : outcome.dead_letter) {
    if (mine(f.id)) part.dead_letter.push_back(f);
  }
  if (dropped > 0) {
    logging::get("pg")->warn(
        "not recording the outcome of {} rows: their shards are no longer held by this relay "
        "(its session ended); their holder sends them again",
        dropped);
  }
  return part;
}

bool PgOutboxStore::wait_for_leader_lock() {
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

std::vector<core::OutboxEvent> PgOutboxStore::begin_batch(
    std::size_t limit, std::size_t max_bytes, const std::vector<std::string>& skip_topics) {
  return fetch(std::numeric_limits<std::int64_t>::min(), -1, limit, max_bytes, skip_topics);
}

std::vector<core::OutboxEvent> PgOutboxStore::read_after(
    std::int64_t after_id, std::size_t pending_upto, std::size_t limit, std::size_t max_bytes,
    const std::vector<std::string>& skip_topics) {
  return fetch(after_id, static_cast<long long>(pending_upto), limit, max_bytes, skip_topics);
}

std::vector<core::OutboxEvent> PgOutboxStore::fetch(std::int64_t after_id, long long pending_upto,
                                                    std::size_t limit, std::size_t max_bytes,
                                                    const std::vector<std::string>& skip_topics) {
  connect();
  std::vector<core::OutboxEvent> events;
  const bool by_state = pending_upto < 0;
  if (sharded()) {
    // A by-state read: nothing this store returned is unrecorded (see the header), so the
    // shard set may change here, extras included.
    if (by_state) row_shard_.clear();
    try {
      update_claims(by_state, by_state);
    } catch (const core::UnavailableError&) {
      throw;
    } catch (const std::exception& e) {
      fail(e);
    }
    if (by_state) {
      read_set_ = claims_.held();
      read_set_valid_ = true;
    } else if (!read_set_valid_ || read_set_ != claims_.held() || claims_.wants_release()) {
      return events;  // the window drains, and the next read is by state with the new set
    }
  }
  try {
    // One statement, no transaction left open while Kafka answers: the leader lock (or the
    // shards' locks) already make this relay the only reader, so the rows need no lock.
    pqxx::result rows =
        sharded()
            ? rows_.fetch(*conn_, static_cast<long>(limit), static_cast<long long>(max_bytes),
                          text_array(skip_topics), static_cast<long long>(after_id), pending_upto,
                          int_array(read_set_))
            : rows_.fetch(*conn_, static_cast<long>(limit), static_cast<long long>(max_bytes),
                          text_array(skip_topics), static_cast<long long>(after_id), pending_upto);
    events = events_of(rows);
    if (sharded()) {
      for (const auto& row : rows) row_shard_[row[0].as<std::int64_t>()] = row[8].as<int>();
    }
  } catch (const std::exception& e) {
    fail(e);
  }
  return events;
}

void PgOutboxStore::record_outcome(const core::BatchOutcome& outcome) {
  connect();
  try {
    if (sharded()) {
      // After a new session: take the shards back first where they are free (held_before_).
      if (!read_set_valid_) update_claims(false, false);
      core::BatchOutcome part = held_part(outcome);
      rows_.record(*conn_, part, vanished_);
      for (auto id : outcome.published) row_shard_.erase(id);
      for (const auto& f : outcome.retry) row_shard_.erase(f.id);
      for (const auto& f : outcome.dead_letter) row_shard_.erase(f.id);
      return;
    }
    rows_.record(*conn_, outcome, vanished_);
  } catch (const core::UnavailableError&) {
    throw;
  } catch (const std::exception& e) {
    fail(e);
  }
}

std::vector<core::VanishedRow> PgOutboxStore::take_vanished() {
  std::vector<core::VanishedRow> out;
  out.swap(vanished_);
  return out;
}

void PgOutboxStore::with_connection(const std::function<void(pqxx::connection&)>& body) {
  connect();
  try {
    body(*conn_);
  } catch (const core::UnavailableError&) {
    disconnect();
    throw;
  } catch (const std::exception& e) {
    fail(e);
  }
}

bool PgOutboxStore::wait_for_rows(std::chrono::milliseconds timeout) {
  connect();
  try {
    if (sharded()) {
      // Idle: a change of the shards (taken, or extras to give back at the next by-state
      // read) or none held (the by-state read stands by on a shard's lock) ends the wait.
      bool changed = claims_.held() != read_set_ || !read_set_valid_;
      if (!changed) update_claims(false, false);
      if (changed || claims_.held() != read_set_ || claims_.wants_release() ||
          claims_.held().empty()) {
        return true;
      }
    }
    if (need_rearm_) {
      // Re-arm the hint and commit, then look once in a fresh snapshot: a writer that read
      // the hint as still sent before the re-arm committed sends none, but its row is seen
      // here if it committed by now (later ones are left to the interval).
      // The next enqueue's nextval() returns 1 again, and that writer notifies (schema 0003).
      pqxx::nontransaction n(*conn_);
      n.exec("SELECT setval('outbox.relay_wakeup_seq', 1, false)");
      bool pending = sharded() ? n.exec_params1(pending_sql_, int_array(read_set_))[0].as<bool>()
                               : n.exec1(pending_sql_)[0].as<bool>();
      need_rearm_ = false;
      if (pending) return true;
    }
    auto ms = timeout.count();
    int got = conn_->await_notification(ms / 1000, (ms % 1000) * 1000);
    if (got > 0) {
      need_rearm_ = true;
      return true;
    }
    return false;
  } catch (const std::exception& e) {
    fail(e);
  }
}

}  // namespace outbox::pg
