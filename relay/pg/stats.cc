#include "pg/stats.h"

#include <algorithm>

#include "pg/shards.h"

namespace outbox::pg {

namespace {

// Every part is bounded (pg/stats.h): the counts stop at $1 + 1 rows of the partial
// indexes (ORDER BY id, and no bitmap scans: read_outbox_stats), the oldest
// pending row is the pending index's first entry (rows are read in id order), the newest id
// the primary key's last. Counting $1 + 1 tells "exactly $1" from "more".
constexpr const char* kOutboxStatsSql = R"sql(
WITH oldest AS (SELECT id, created_at FROM outbox.events
                WHERE published_at IS NULL AND dead_lettered_at IS NULL ORDER BY id LIMIT 1)
SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox.events
                              WHERE published_at IS NULL AND dead_lettered_at IS NULL
                              ORDER BY id LIMIT $1 + 1) p),
       coalesce((SELECT extract(epoch FROM now() - created_at)::float8 FROM oldest), 0),
       coalesce((SELECT max(id) FROM outbox.events) - (SELECT id FROM oldest) + 1, 0),
       (SELECT count(*) FROM (SELECT 1 FROM outbox.events WHERE dead_lettered_at IS NOT NULL
                              ORDER BY id LIMIT $1 + 1) d))sql";

constexpr const char* kSlotStatsSql = R"sql(
SELECT wal_status, active, active_pid, confirmed_flush_lsn::text,
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
             ELSE pg_current_wal_lsn() END - restart_lsn)::bigint,
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
             ELSE pg_current_wal_lsn() END - confirmed_flush_lsn)::bigint
FROM pg_replication_slots WHERE slot_name = $1)sql";

// The key of pg_try_advisory_lock(hashtext('outbox-relay')) as pg_locks shows it: a bigint
// key is split into classid (high 32 bits) and objid (low 32 bits), objsubid 1. Another
// role's client address shows only to members of pg_read_all_stats: "hidden" then.
constexpr const char* kLeaderSql = R"sql(
SELECT a.pid, coalesce(a.application_name, ''),
       coalesce(host(a.client_addr),
                CASE WHEN a.client_port = -1 THEN 'local' ELSE 'hidden' END),
       coalesce(a.backend_start::text, '')
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
        SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.objsubid = 1
  AND l.classid::bigint = ((hashtext('outbox-relay')::bigint >> 32) & 4294967295)
  AND l.objid::bigint = (hashtext('outbox-relay')::bigint & 4294967295)
LIMIT 1)sql";

// The shard locks (pg/shards.h: kShardClass, two-int form) and who holds them.
constexpr const char* kShardHoldersSql = R"sql(
SELECT l.pid, coalesce(host(a.client_addr),
                       CASE WHEN a.client_port = -1 THEN 'local' ELSE 'hidden' END),
       string_agg(l.objid::text, ',' ORDER BY l.objid::bigint)
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = $1::bigint::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
GROUP BY l.pid, a.client_addr, a.client_port ORDER BY min(l.objid::bigint))sql";

}  // namespace

std::vector<ShardHolder> read_shard_holders(pqxx::transaction_base& tx) {
  std::vector<ShardHolder> out;
  for (const auto& row : tx.exec_params(kShardHoldersSql, kShardClass)) {
    ShardHolder h;
    h.pid = row[0].as<int>();
    h.client_addr = row[1].as<std::string>();
    std::string list = row[2].as<std::string>();
    std::size_t at = 0;
    while (at < list.size()) {
      std::size_t comma = list.find(',', at);
      if (comma == std::string::npos) comma = list.size();
      h.shards.push_back(std::stoi(list.substr(at, comma - at)));
      at = comma + 1;
    }
    out.push_back(std::move(h));
  }
  return out;
}

OutboxStats read_outbox_stats(pqxx::transaction_base& tx) {
  // Without bitmap scans: on a table never analyzed (after a burst) the planner estimates a
  // few pending rows and counts them with a bitmap scan of every pending row and a sort,
  // reading each row's table page (250-600 ms with 1,000,000 pending); the ordered index scan
  // stops at the limit. One simple query of two statements is one transaction, so SET LOCAL
  // holds for the count whether or not the caller opened a transaction block (the monitor
  // does not), and never outlives it (a pooled server connection keeps nothing).
  std::string sql = kOutboxStatsSql;
  for (auto at = sql.find("$1"); at != std::string::npos; at = sql.find("$1", at)) {
    sql.replace(at, 2, std::to_string(kCountLimit));
  }
  auto row = tx.exec1("SET LOCAL enable_bitmapscan = off; " + sql);
  OutboxStats s;
  s.pending = row[0].as<std::int64_t>();
  s.oldest_pending_age_s = std::max(0.0, row[1].as<double>());
  if (s.pending > kCountLimit) {
    s.pending_exact = false;
    s.pending = std::max(kCountLimit + 1, row[2].as<std::int64_t>());
  }
  s.dead_lettered = row[3].as<std::int64_t>();
  if (s.dead_lettered > kCountLimit) {
    s.dead_lettered_exact = false;
    s.dead_lettered = kCountLimit;
  }
  return s;
}

std::optional<SlotStats> read_slot_stats(pqxx::transaction_base& tx, const std::string& slot) {
  auto rows = tx.exec_params(kSlotStatsSql, slot);
  if (rows.empty()) return std::nullopt;
  const auto& r = rows[0];
  SlotStats s;
  if (!r[0].is_null()) s.wal_status = r[0].as<std::string>();
  s.active = r[1].as<bool>();
  if (!r[2].is_null()) s.active_pid = r[2].as<int>();
  if (!r[3].is_null()) s.confirmed_lsn = r[3].as<std::string>();
  if (!r[4].is_null()) s.retained_wal_bytes = r[4].as<std::int64_t>();
  if (!r[5].is_null()) s.confirmed_lag_bytes = r[5].as<std::int64_t>();
  return s;
}

std::optional<LeaderInfo> read_leader(pqxx::transaction_base& tx) {
  auto rows = tx.exec(kLeaderSql);
  if (rows.empty()) return std::nullopt;
  LeaderInfo l;
  l.pid = rows[0][0].as<int>();
  l.application_name = rows[0][1].as<std::string>();
  l.client_addr = rows[0][2].as<std::string>();
  l.backend_start = rows[0][3].as<std::string>();
  return l;
}

}  // namespace outbox::pg
