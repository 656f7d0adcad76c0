#include "pg/read_floor.h"

#include <algorithm>
#include <limits>

#include "common/logging.h"
#include "pg/pg_array.h"
#include "pg/shards.h"

namespace outbox::pg {

namespace {

// Whether the argument's premises hold (see the header), one boolean expression, checked at
// each connection and again by every fence statement (a premise can change while the relay
// runs: ALTER ... SET CACHE 20):
// - ids come from the identity sequence only, in increasing order: GENERATED ALWAYS, cache 1,
//   increment above 0, no cycle;
// - every insert locks outbox.events itself: a plain table, no partitions or children (an
//   insert into a child locks only the child), no logical replication subscription writing
//   into it (its apply worker writes the publisher's ids, in the publisher's commit order);
// - a prepared transaction keeps its locks under its own vxid from PREPARE on: from 14.1 and
//   13.5 (PREPARE TRANSACTION moved its locks only after leaving the proc array before
//   PostgreSQL's fix "Fix CREATE INDEX CONCURRENTLY for the newest prepared transactions");
//   earlier minors only without prepared transactions.
// pg_attribute, pg_sequence, pg_class, pg_inherits and pg_subscription_rel are readable by
// every role.
constexpr const char* kPremisesSql = R"sql(coalesce((
  SELECT a.attidentity = 'a' AND s.seqincrement > 0 AND s.seqcache = 1 AND NOT s.seqcycle
  FROM pg_attribute a
  JOIN pg_sequence s ON s.seqrelid = pg_get_serial_sequence('outbox.events', 'id')::regclass
  WHERE a.attrelid = 'outbox.events'::regclass AND a.attname = 'id'), false)
  AND (SELECT c.relkind = 'r' FROM pg_class c WHERE c.oid = 'outbox.events'::regclass)
  AND NOT EXISTS (SELECT FROM pg_inherits i WHERE i.inhparent = 'outbox.events'::regclass)
  AND NOT EXISTS (SELECT FROM pg_subscription_rel r WHERE r.srrelid = 'outbox.events'::regclass)
  AND (current_setting('max_prepared_transactions')::int = 0
       OR current_setting('server_version_num')::int >= 140001
       OR current_setting('server_version_num')::int BETWEEN 130005 AND 139999))sql";

// One statement: the premises, X (the snapshot's highest id), H (read after the snapshot),
// whether the open fence's holders ($1) still hold any lock, and whether no pending row of
// the scope has an id in [$2, $3) (in this snapshot, taken after any pass seen by an earlier
// statement). The modes: every lock mode an INSERT takes or implies (a transaction that
// locked the table harder still inserts under RowExclusiveLock, held beside its stronger
// one). A lock shown under a vxid ending in "/0" belongs to no transaction in progress (a
// transaction's locks show so between its end and their release, and a session's own locks
// while it is idle): such a holder would keep a fence open for as long as that session
// idles, and it holds no id of a transaction that can still commit.
constexpr const char* kFenceSql = R"sql(
SELECT %PREMISES% AS premises,
       (SELECT coalesce(max(id), 0) FROM outbox.events) AS x,
       (SELECT coalesce(array_agg(DISTINCT l.virtualtransaction), '{}'::text[])
        FROM pg_locks l
        WHERE l.locktype = 'relation' AND l.relation = 'outbox.events'::regclass
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                         'AccessExclusiveLock')
          AND l.virtualtransaction NOT LIKE '%/0'
          AND l.pid IS DISTINCT FROM pg_backend_pid()) AS holders,
       (SELECT string_agg(DISTINCT coalesce(l.pid::text, 'prepared'), ', ')
        FROM pg_locks l WHERE l.virtualtransaction = ANY($1::text[])) AS alive,
       (SELECT min(id) FROM outbox.events
        WHERE published_at IS NULL AND dead_lettered_at IS NULL
          AND id >= $2::bigint AND id < $3::bigint) AS first_pending)sql";

std::string with_premises(std::string sql) {
  const std::string mark = "%PREMISES%";
  sql.replace(sql.find(mark), mark.size(), kPremisesSql);
  return sql;
}

constexpr const char* kWhyNot =
    "outbox.events.id must be an identity column GENERATED ALWAYS with "
    "cache 1, on a plain table no subscription writes into (and with prepared transactions, "
    "PostgreSQL 14.1 / 13.5 or later); reads start at the pending index's first entry "
    "(slower after a large backlog, nothing skipped; docs/design/how-it-works.md, \"The read "
    "floor\")";

std::vector<std::string> text_values(const pqxx::field& f) {
  std::vector<std::string> out;
  auto parser = f.as_array();
  for (auto [kind, value] = parser.get_next(); kind != pqxx::array_parser::juncture::done;
       std::tie(kind, value) = parser.get_next()) {
    if (kind == pqxx::array_parser::juncture::string_value) out.push_back(value);
  }
  return out;
}

}  // namespace

bool read_floor_premises(pqxx::transaction_base& tx, std::string& why) {
  bool ok = tx.exec1(std::string("SELECT ") + kPremisesSql)[0].as<bool>();
  if (!ok) why = std::string("off: ") + kWhyNot;
  return ok;
}

ReadFloor::ReadFloor(int shards) : fence_sql_(with_premises(kFenceSql)), sharded_(shards > 1) {
  if (sharded_) {
    const std::string from = "AND id >= $2::bigint";
    auto at = fence_sql_.find(from);
    fence_sql_.replace(at, from.size(), from + " AND " + shard_sql(shards) + " = ANY($4::int[])");
  }
}

void ReadFloor::open(pqxx::connection& conn) {
  // A new connection may follow a restore that set the sequence back: nothing of before holds.
  forget();
  unrecorded_.clear();
  next_.reset();
  try {
    pqxx::nontransaction n(conn);
    std::string why;
    enabled_ = read_floor_premises(n, why);
    if (!enabled_ && !told_) logging::get("pg")->info("the read floor is off: {}", kWhyNot);
  } catch (const pqxx::broken_connection&) {
    throw;
  } catch (const std::exception& e) {  // a catalog this role may not read: no floor
    enabled_ = false;
    if (!told_)
      logging::get("pg")->info("the read floor is off: {} (the premises could not be read: {})",
                               kWhyNot, e.what());
  }
  told_ = told_ || !enabled_;
}

void ReadFloor::forget() {
  floor_ = 0;
  passed_ = 0;
  open_.reset();
}

void ReadFloor::before_read(pqxx::connection& conn, std::chrono::steady_clock::time_point now,
                            bool by_state, const std::set<int>& shards) {
  if (by_state) unrecorded_.clear();
  advance(conn, now, shards);
}

void ReadFloor::returned(const std::vector<core::OutboxEvent>& events) {
  for (const auto& e : events) unrecorded_.insert(e.id);
}

void ReadFloor::recorded(const core::BatchOutcome& outcome,
                         const std::vector<core::VanishedRow>& gone) {
  for (auto id : outcome.published) unrecorded_.erase(id);
  for (const auto& f : outcome.dead_letter) unrecorded_.erase(f.id);
  for (const auto& v : gone) unrecorded_.erase(v.id);
}

void ReadFloor::advance(pqxx::connection& conn, std::chrono::steady_clock::time_point now,
                        const std::set<int>& shards) {
  if (!enabled_ || (next_ && now < *next_)) return;
  next_ = now + kFenceInterval;
  // Proven again from the start (see the header): passes too, so a row written with an id of
  // its own, or below ids set back, is caught by the next fence.
  if (floor_ > 0 && now >= expires_) forget();
  std::int64_t to = floor_;
  const std::int64_t unrecorded_min =
      unrecorded_.empty() ? std::numeric_limits<std::int64_t>::max() : *unrecorded_.begin();
  if (passed_ > 0) to = std::max(floor_, std::min(passed_ + 1, unrecorded_min));
  std::vector<std::string> holders = open_ ? open_->holders : std::vector<std::string>{};
  pqxx::nontransaction n(conn);
  pqxx::row r = sharded_
                    ? n.exec_params1(fence_sql_, text_array(holders), floor_, to, int_array(shards))
                    : n.exec_params1(fence_sql_, text_array(holders), floor_, to);
  auto log = logging::get("pg");
  if (!r["premises"].as<bool>()) {  // changed since the connection opened
    forget();
    enabled_ = false;
    log->warn("the read floor is off: {}", kWhyNot);
    return;
  }
  // The rise first: it rests on passes seen by earlier statements only. To the first row
  // still pending below m, or to m: the relay's own bookkeeping only bounds the rise.
  const std::int64_t rise =
      r["first_pending"].is_null() ? to : r["first_pending"].as<std::int64_t>();
  if (rise > floor_) {
    if (floor_ == 0) expires_ = now + kFloorLifetime;
    floor_ = rise;
  }
  const auto x = r["x"].as<std::int64_t>();
  if (x < passed_) {  // the highest id went down: ids set back (or the newest rows deleted)
    forget();
    return;
  }
  if (open_ && r["alive"].is_null()) {
    passed_ = std::max(passed_, open_->x);
    open_.reset();
  }
  if (open_ && !open_->warned && now - open_->since >= kFloorLifetime) {
    open_->warned = true;
    log->warn(
        "a transaction that wrote to outbox.events has been open for over {} s (pid {}): the "
        "read floor stays below its rows until it ends, and reads walk the pending index from "
        "id {} meanwhile (nothing is skipped)",
        kFloorLifetime.count(), r["alive"].as<std::string>(), floor_);
  }
  if (!open_) {
    Fence f{x, text_values(r["holders"]), now};
    if (f.holders.empty()) {
      passed_ = std::max(passed_, f.x);  // seen passed by this statement, used by the next
    } else {
      open_ = std::move(f);
    }
  }
  if (log->should_log(spdlog::level::trace)) {
    log->trace("read floor {}: passed up to id {}; {}", floor_, passed_,
               open_ ? "fence at id " + std::to_string(open_->x) + " waits for " +
                           std::to_string(open_->holders.size()) + " transaction(s)"
                     : std::string("no fence open"));
  }
}

}  // namespace outbox::pg
