#include "pg/outbox_rows.h"

#include <set>
#include <stdexcept>
#include <string_view>

#include "common/crash_point.h"
#include "common/logging.h"
#include "pg/pg_array.h"
#include "pg/shards.h"

namespace outbox::pg {

namespace {

// Rows above id $4 while the bytes before them stay below $2, and (read-ahead, $5 >= 0) only
// when exactly $5 pending rows have ids from $6 up to $4: the relay's own in flight ($6: the
// read floor, below which no row is pending, pg/read_floor.h; 0 where none is kept). One more is a
// transaction that committed late below $4; it may have rows above $4 too, which must not
// go before its rows below (per-key order), so then nothing comes and the relay reads by
// state. The count runs once per statement (an InitPlan), over the pending index in id order
// from $6 up to $4, and stops at $5 + 1 rows (all it must tell is $5 from more). In id order with a
// LIMIT it is a plain index scan, which flags the entries of rows marked since (dead to every
// snapshot) as it passes them, so later reads step over them without visiting the table; a
// bare count(*) was planned as a bitmap scan on a table not yet analyzed (after a burst),
// which never flags entries and read every table page of every row marked so far on each
// read-ahead: quadratic in a drain (integration/bench/RESULTS.md, "The read-ahead guard").
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
        AND ($5::bigint < 0 OR (SELECT count(*) FROM (SELECT FROM outbox.events
                        WHERE published_at IS NULL AND dead_lettered_at IS NULL
                          AND topic <> ALL($3::text[]) AND id >= $6::bigint AND id <= $4
                        ORDER BY id LIMIT $5::bigint + 1) AS guard) = $5::bigint)
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
WHERE e.id = g.id
  AND (g.event_id = '' OR e.event_id::text = g.event_id) AND e.dead_lettered_at IS NULL
RETURNING e.id)sql";

constexpr const char* kRecordRetrySql = R"sql(
UPDATE outbox.events e SET attempts = e.attempts + 1, last_error = f.err
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS f(id, err, event_id)
WHERE e.id = f.id
  AND (f.event_id = '' OR e.event_id::text = f.event_id)
RETURNING e.id)sql";

constexpr const char* kDeadLetterSql = R"sql(
UPDATE outbox.events e SET attempts = e.attempts + 1, last_error = f.err, dead_lettered_at = now()
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS f(id, err, event_id)
WHERE e.id = f.id
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

// Every statement of the hot path is prepared once per session (OutboxRows::prepare).
constexpr const char* kMarkPublished = "outbox_mark_published";
constexpr const char* kRecordRetry = "outbox_record_retry";
constexpr const char* kDeadLetter = "outbox_dead_letter";

// The highest pending id: one probe of events_pending_idx from its end.
constexpr const char* kPendingBoundSql =
    "SELECT coalesce(max(id), 0) FROM outbox.events "
    "WHERE published_at IS NULL AND dead_lettered_at IS NULL";

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

// Sharded: kFetchSql restricted to the shards in $7 (both the rows and the order guard's
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
  replace("AND id > $4", "AND id > $4 AND " + shard + " = ANY($7::int[])");
  replace("AND id <= $4\n", "AND id <= $4 AND " + shard + " = ANY($7::int[])\n");
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
         "dead_lettered_at IS NULL AND id >= $1::bigint AND " +
         shard_sql(shards) + " = ANY($2::int[]))";
}

}  // namespace

std::string fetch_sql(FetchScope scope) {
  std::string sql = kFetchSql;
  switch (scope) {
    case FetchScope::upto:
      replace_in(sql, "AND id > $4\n", "AND id > $4 AND id <= $7\n");
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

std::string polling_fetch_sql(int shards) {
  return shards > 1 ? sharded_fetch_sql(shards) : std::string(kFetchSql);
}

std::string pending_exists_sql(int shards) {
  return shards > 1 ? sharded_pending_sql(shards)
                    : "SELECT EXISTS (SELECT 1 FROM outbox.events "
                      "WHERE published_at IS NULL AND dead_lettered_at IS NULL "
                      "AND id >= $1::bigint)";
}

const char* pending_bound_sql() { return kPendingBoundSql; }

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

void OutboxRows::open(pqxx::connection& conn) {
  prepared_ = false;
  {
    pqxx::nontransaction n(conn);
    vanished_table_ = n.exec1(kVanishedTableSql)[0].as<bool>();
  }
  if (!vanished_table_ && !vanished_table_warned_) {
    vanished_table_warned_ = true;
    logging::get("pg")->warn(
        "outbox.vanished is missing or not writable by this role: rows found gone when marked "
        "are logged and counted, not listed for `audit` (run outbox-relay migrate)");
  }
}

void OutboxRows::prepare(pqxx::connection& conn) {
  if (prepared_) return;
  if (!fetch_sql_.empty()) conn.prepare(kFetchName, fetch_sql_);
  conn.prepare(kMarkPublished, kMarkPublishedSql);
  conn.prepare(kRecordRetry, kRecordRetrySql);
  conn.prepare(kDeadLetter, kDeadLetterSql);
  prepared_ = true;
}

void OutboxRows::record(pqxx::connection& conn, const core::BatchOutcome& outcome,
                        std::vector<core::VanishedRow>& gone) {
  prepare(conn);
  std::vector<core::VanishedRow> found;
  pqxx::work txn(conn);
  write_outcome(txn, outcome, found);
  common::crash_point("inside_mark");
  txn.commit();
  for (auto& v : found) gone.push_back(std::move(v));
}

void OutboxRows::write_outcome(pqxx::work& txn, const core::BatchOutcome& outcome,
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

}  // namespace outbox::pg
