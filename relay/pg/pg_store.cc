#include "pg/pg_store.h"

#include <pqxx/pqxx>

#include <limits>
#include <set>
#include <stdexcept>
#include <string_view>

#include "common/crash_point.h"
#include "common/logging.h"
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

// Rows above id $4 while the bytes before them stay below $2, and (read-ahead, $5 >= 0) only
// when exactly $5 pending rows have ids up to $4: the relay's own in flight. One more is a
// transaction that committed late below $4; it may have rows above $4 too, which must not
// go before its rows below (per-key order), so then nothing comes and the relay reads by
// state. The count runs once per statement (an InitPlan) over the pending index up to $4.
// (core::event_bytes, computed from lengths: payloads beyond the budget are never fetched, let
// alone detoasted).
constexpr const char* kFetchSql = R"sql(
SELECT id, event_id::text, topic, key, payload, headers_text, attempts,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_text
FROM (SELECT id, event_id, topic, key, payload, created_at, headers::text AS headers_text, attempts,
             sum(coalesce(octet_length(payload), 0) + coalesce(octet_length(key), 0) +
                 octet_length(headers::text)) OVER (ORDER BY id) AS upto
      FROM outbox.events
      WHERE published_at IS NULL AND dead_lettered_at IS NULL AND topic <> ALL($3::text[])
        AND id > $4
        AND ($5::bigint < 0 OR (SELECT count(*) FROM outbox.events
                        WHERE published_at IS NULL AND dead_lettered_at IS NULL
                          AND topic <> ALL($3::text[]) AND id <= $4) = $5::bigint)
      ORDER BY id
      LIMIT $1) AS candidates
WHERE upto - coalesce(octet_length(payload), 0) - coalesce(octet_length(key), 0) -
      octet_length(headers_text) < $2
ORDER BY id)sql";

// Idempotent (recording an outcome again keeps the first time). A row matches by id and,
// when the relay knows it ($2 not empty), by event_id: an id that now names another event
// (the id sequence rewound by a restore) is not marked for the acknowledged one. The ids
// returned are those matched; the others are classified by kClassifySql (write_outcome).
constexpr const char* kMarkPublishedSql = R"sql(
UPDATE outbox.events e SET published_at = coalesce(e.published_at, now()), last_error = NULL
FROM unnest($1::bigint[], $2::text[]) AS g(id, event_id)
WHERE e.id = ANY($1::bigint[]) AND e.id = g.id
  AND (g.event_id = '' OR e.event_id::text = g.event_id) AND e.dead_lettered_at IS NULL
RETURNING e.id)sql";

constexpr const char* kRecordRetrySql = R"sql(
UPDATE outbox.events e SET attempts = e.attempts + 1, last_error = f.err
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS f(id, err, event_id)
WHERE e.id = ANY($1::bigint[]) AND e.id = f.id
  AND (f.event_id = '' OR e.event_id::text = f.event_id)
RETURNING e.id)sql";

constexpr const char* kDeadLetterSql = R"sql(
UPDATE outbox.events e SET attempts = e.attempts + 1, last_error = f.err, dead_lettered_at = now()
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS f(id, err, event_id)
WHERE e.id = ANY($1::bigint[]) AND e.id = f.id
  AND (f.event_id = '' OR e.event_id::text = f.event_id)
RETURNING e.id)sql";

// What became of rows a statement above did not match. A statement of its own in the mark's
// (READ COMMITTED) transaction: a fresh snapshot, which shows the commit of whoever changed a
// row while the UPDATE waited for its lock (a delete then shows as no row).
constexpr const char* kClassifySql = R"sql(
SELECT g.id, e.id IS NOT NULL, coalesce(e.event_id::text, ''), e.dead_lettered_at IS NOT NULL
FROM unnest($1::bigint[]) AS g(id)
LEFT JOIN outbox.events e ON e.id = g.id)sql";

// The rows found gone, for `outbox-relay audit` (schema 0008); a mark recorded again after a
// lost commit acknowledgement writes nothing twice.
constexpr const char* kRecordVanishedSql = R"sql(
INSERT INTO outbox.vanished (id, event_id, topic, acknowledged, reused_by)
SELECT v.id, nullif(v.event_id, '')::uuid, nullif(v.topic, ''), v.acknowledged,
       nullif(v.reused_by, '')::uuid
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::boolean[], $5::text[])
     AS v(id, event_id, topic, acknowledged, reused_by)
ON CONFLICT DO NOTHING)sql";

// Whether this PostgreSQL session may write outbox.vanished (a relay may run before `migrate` added
// it).
constexpr const char* kVanishedTableSql = R"sql(
SELECT coalesce(has_table_privilege(t.oid, 'INSERT'), false)
FROM (SELECT to_regclass('outbox.vanished') AS oid) AS t)sql";

// Every statement of the hot path is prepared once per session (ensure_prepared).
constexpr const char* kFetch = "outbox_fetch";
constexpr const char* kMarkPublished = "outbox_mark_published";
constexpr const char* kRecordRetry = "outbox_record_retry";
constexpr const char* kDeadLetter = "outbox_dead_letter";

// The ids of `given` a statement did not match (`matched`: its RETURNING ids).
std::vector<std::int64_t> unmatched(const std::vector<std::int64_t>& given,
                                    const pqxx::result& matched) {
  if (static_cast<std::size_t>(matched.size()) == given.size()) return {};
  std::set<std::int64_t> hit;
  for (const auto& row : matched) hit.insert(row[0].as<std::int64_t>());
  std::vector<std::int64_t> out;
  for (auto id : given) {
    if (hit.count(id) == 0) out.push_back(id);
  }
  return out;
}

std::string bool_array(const std::vector<bool>& values) {
  std::string out = "{";
  for (std::size_t i = 0; i < values.size(); ++i) {
    out += (i ? "," : "") + std::string(values[i] ? "t" : "f");
  }
  return out + "}";
}

// The event an id stood for when read ('' if the caller did not say: matched by id only).
const std::string& event_of(const core::BatchOutcome& outcome, std::int64_t id) {
  static const std::string kNone;
  auto it = outcome.rows.find(id);
  return it == outcome.rows.end() ? kNone : it->second.event_id;
}

void split(const core::BatchOutcome& outcome, const std::vector<core::RowFailure>& failures,
           std::vector<std::int64_t>& ids, std::vector<std::string>& errors,
           std::vector<std::string>& events) {
  for (const auto& f : failures) {
    ids.push_back(f.id);
    errors.push_back(f.error);
    events.push_back(event_of(outcome, f.id));
  }
}

// Sharded: kFetchSql restricted to the shards in $6 (both the rows and the order guard's
// count), with each row's shard as an eighth column. An index scan of events_pending_idx
// as before, the shard a filter on each row it visits: a relay also visits the pending rows
// of the other relays' shards between its own (docs/operations/sizing.md, "Scaling out": the cost).
std::string sharded_fetch_sql(int shards) {
  const std::string shard = shard_sql(shards);
  std::string sql = kFetchSql;
  auto replace = [&sql](const std::string& from, const std::string& to) {
    auto at = sql.find(from);
    if (at == std::string::npos) throw std::logic_error("kFetchSql changed: " + from);
    sql.replace(at, from.size(), to);
  };
  replace("AS created_text\nFROM (SELECT", "AS created_text, shard\nFROM (SELECT");
  replace("headers::text AS headers_text, attempts,",
          "headers::text AS headers_text, attempts, " + shard + " AS shard,");
  replace("AND id > $4", "AND id > $4 AND " + shard + " = ANY($6::int[])");
  replace("AND id <= $4)", "AND id <= $4 AND " + shard + " = ANY($6::int[]))");
  return sql;
}

// A copy of kFetchSql with `from` replaced by `to` (each must be found: kFetchSql changing
// shape fails the first read loudly, and the unit tests build every variant).
void replace_in(std::string& sql, const std::string& from, const std::string& to) {
  auto at = sql.find(from);
  if (at == std::string::npos) throw std::logic_error("kFetchSql changed: " + from);
  sql.replace(at, from.size(), to);
}

std::string sharded_pending_sql(int shards) {
  return "SELECT EXISTS (SELECT 1 FROM outbox.events WHERE published_at IS NULL AND "
         "dead_lettered_at IS NULL AND " +
         shard_sql(shards) + " = ANY($1::int[]))";
}

std::string int_array(const std::set<int>& values) {
  std::string out = "{";
  for (int v : values) {
    if (out.size() > 1) out += ",";
    out += std::to_string(v);
  }
  return out + "}";
}

}  // namespace

std::string fetch_sql(FetchScope scope) {
  std::string sql = kFetchSql;
  switch (scope) {
    case FetchScope::upto:
      replace_in(sql, "AND id > $4\n", "AND id > $4 AND id <= $6\n");
      break;
    case FetchScope::topics:
      replace_in(sql, "AND topic <> ALL($3::text[])\n", "AND topic = ANY($3::text[])\n");
      break;
    case FetchScope::among: {
      // The filter from the topics to the read-ahead guard, replaced by the ids.
      const std::string from = "AND topic <> ALL($3::text[])\n";
      const std::string to = "= $5::bigint)\n";
      auto start = sql.find(from);
      auto end = sql.find(to, start);
      if (start == std::string::npos || end == std::string::npos) {
        throw std::logic_error("kFetchSql changed: the filter of FetchScope::among");
      }
      sql.replace(start, end + to.size() - start, "AND id = ANY($3::bigint[])\n");
      break;
    }
  }
  return sql;
}

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
      claims_(shards) {
  if (sharded()) {
    fetch_sql_ = sharded_fetch_sql(shards.shards);
    pending_sql_ = sharded_pending_sql(shards.shards);
  }
}

PgOutboxStore::~PgOutboxStore() { disconnect(); }

void PgOutboxStore::disconnect() noexcept {
  receiver_.reset();
  conn_.reset();
  prepared_ = false;
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
    look_for_vanished_table();
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
    look_for_vanished_table();
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

void PgOutboxStore::look_for_vanished_table() {
  {
    pqxx::nontransaction n(*conn_);
    vanished_table_ = n.exec1(kVanishedTableSql)[0].as<bool>();
  }
  if (!vanished_table_ && !vanished_table_warned_) {
    vanished_table_warned_ = true;
    logging::get("pg")->warn(
        "outbox.vanished is missing or not writable by this role: rows found gone when marked "
        "are logged and counted, not listed for `audit` (run outbox-relay migrate)");
  }
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

std::vector<core::OutboxEvent> events_of(const pqxx::result& rows) {
  std::vector<core::OutboxEvent> events;
  events.reserve(rows.size());
  // By name: a query that does not select it leaves OutboxEvent::created_at empty.
  std::optional<pqxx::row::size_type> created;
  for (pqxx::row::size_type c = 0; c < rows.columns(); ++c) {
    if (std::string_view(rows.column_name(c)) == "created_text") created = c;
  }
  for (const auto& row : rows) {
    core::OutboxEvent e;
    e.id = row[0].as<std::int64_t>();
    e.event_id = row[1].as<std::string>();
    e.topic = row[2].as<std::string>();
    if (!row[3].is_null()) e.key = row[3].as<std::string>();
    if (!row[4].is_null()) e.payload = pqxx::binarystring(row[4]).str();
    e.headers_json = row[5].is_null() ? "" : row[5].as<std::string>();
    e.attempts = row[6].as<int>();
    if (created && !row[*created].is_null()) e.created_at = row[*created].as<std::string>();
    events.push_back(std::move(e));
  }
  return events;
}

void PgOutboxStore::ensure_prepared() {
  if (prepared_) return;
  conn_->prepare(kFetch, sharded() ? fetch_sql_.c_str() : kFetchSql);
  conn_->prepare(kMarkPublished, kMarkPublishedSql);
  conn_->prepare(kRecordRetry, kRecordRetrySql);
  conn_->prepare(kDeadLetter, kDeadLetterSql);
  prepared_ = true;
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
    ensure_prepared();
    // One statement, no transaction left open while Kafka answers: the leader lock (or the
    // shards' locks) already make this relay the only reader, so the rows need no lock.
    pqxx::nontransaction n(*conn_);
    pqxx::result rows =
        sharded()
            ? n.exec_prepared(kFetch, static_cast<long>(limit), static_cast<long long>(max_bytes),
                              text_array(skip_topics), static_cast<long long>(after_id),
                              pending_upto, int_array(read_set_))
            : n.exec_prepared(kFetch, static_cast<long>(limit), static_cast<long long>(max_bytes),
                              text_array(skip_topics), static_cast<long long>(after_id),
                              pending_upto);
    events = events_of(rows);
    if (sharded()) {
      for (const auto& row : rows) row_shard_[row[0].as<std::int64_t>()] = row[8].as<int>();
    }
  } catch (const std::exception& e) {
    fail(e);
  }
  return events;
}

void PgOutboxStore::write_outcome(pqxx::work& txn, const core::BatchOutcome& outcome,
                                  std::vector<core::VanishedRow>& gone) {
  // Rows a statement did not match: gone (no row with the id, or another event has it) is
  // no failure; anything else is (invariant gone-row-reported), and the whole outcome rolls back.
  auto classify = [&](const std::vector<std::int64_t>& missed, bool acknowledged,
                      const char* what) {
    if (missed.empty()) return;
    for (const auto& row : txn.exec_params(kClassifySql, bigint_array(missed))) {
      std::int64_t id = row[0].as<std::int64_t>();
      bool present = row[1].as<bool>();
      std::string now_event = row[2].as<std::string>();
      bool dead = row[3].as<bool>();
      core::VanishedRow v;
      v.id = id;
      v.acknowledged = acknowledged;
      auto it = outcome.rows.find(id);
      if (it != outcome.rows.end()) {
        v.event_id = it->second.event_id;
        v.topic = it->second.topic;
      }
      if (!present || (!v.event_id.empty() && now_event != v.event_id)) {
        if (present) v.reused_by = now_event;
        gone.push_back(std::move(v));
        continue;
      }
      if (dead) {
        throw std::runtime_error(
            std::string("marking ") + what + ": row " + std::to_string(id) +
            " is dead-lettered by someone else (another relay publishing the same rows? see "
            "`outbox-relay status` for the leader lock's holder); nothing of this outcome is "
            "recorded, it is tried again");
      }
      throw std::runtime_error(std::string("marking ") + what + ": row " + std::to_string(id) +
                               " changed while it was being marked; tried again");
    }
  };
  if (!outcome.published.empty()) {
    std::vector<std::string> events;
    events.reserve(outcome.published.size());
    for (auto id : outcome.published) events.push_back(event_of(outcome, id));
    pqxx::result r =
        txn.exec_prepared(kMarkPublished, bigint_array(outcome.published), text_array(events));
    classify(unmatched(outcome.published, r), true, "published");
  }
  std::vector<std::int64_t> ids;
  std::vector<std::string> errors, events;
  if (!outcome.retry.empty()) {
    split(outcome, outcome.retry, ids, errors, events);
    pqxx::result r =
        txn.exec_prepared(kRecordRetry, bigint_array(ids), text_array(errors), text_array(events));
    classify(unmatched(ids, r), false, "retried");
  }
  if (!outcome.dead_letter.empty()) {
    ids.clear();
    errors.clear();
    events.clear();
    split(outcome, outcome.dead_letter, ids, errors, events);
    pqxx::result r =
        txn.exec_prepared(kDeadLetter, bigint_array(ids), text_array(errors), text_array(events));
    classify(unmatched(ids, r), false, "dead-lettered");
  }
  if (gone.empty() || !vanished_table_) return;
  std::vector<std::int64_t> gone_ids;
  std::vector<std::string> gone_events, gone_topics, reused;
  std::vector<bool> acknowledged;
  for (const auto& v : gone) {
    gone_ids.push_back(v.id);
    gone_events.push_back(v.event_id);
    gone_topics.push_back(v.topic);
    acknowledged.push_back(v.acknowledged);
    reused.push_back(v.reused_by);
  }
  txn.exec_params0(kRecordVanishedSql, bigint_array(gone_ids), text_array(gone_events),
                   text_array(gone_topics), bool_array(acknowledged), text_array(reused));
  for (auto& v : gone) v.recorded = true;
}

void PgOutboxStore::record_outcome(const core::BatchOutcome& outcome) {
  connect();
  try {
    ensure_prepared();
    if (sharded()) {
      // After a new session: take the shards back first where they are free (held_before_).
      if (!read_set_valid_) update_claims(false, false);
      core::BatchOutcome part = held_part(outcome);
      std::vector<core::VanishedRow> gone;
      pqxx::work txn(*conn_);
      write_outcome(txn, part, gone);
      common::crash_point("inside_mark");
      txn.commit();
      for (auto& v : gone) vanished_.push_back(std::move(v));
      for (auto id : outcome.published) row_shard_.erase(id);
      for (const auto& f : outcome.retry) row_shard_.erase(f.id);
      for (const auto& f : outcome.dead_letter) row_shard_.erase(f.id);
      return;
    }
    std::vector<core::VanishedRow> gone;
    pqxx::work txn(*conn_);
    write_outcome(txn, outcome, gone);
    common::crash_point("inside_mark");
    txn.commit();
    for (auto& v : gone) vanished_.push_back(std::move(v));
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
                               : n.exec1(
                                      "SELECT EXISTS (SELECT 1 FROM outbox.events "
                                      "WHERE published_at IS NULL AND dead_lettered_at IS NULL)")[0]
                                     .as<bool>();
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
