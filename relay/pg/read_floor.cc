#include "pg/read_floor.h"

#include <algorithm>
#include <limits>

#include "common/logging.h"
#include "pg/pg_array.h"
#include "pg/shards.h"

namespace outbox::pg {

namespace {

// Whether ids come from a sequence in increasing order in time, and only from it (see the
// header). pg_attribute and pg_sequence are readable by every role.
constexpr const char* kSequenceSql = R"sql(
SELECT coalesce((SELECT a.attidentity = 'a' AND s.seqincrement > 0 AND s.seqcache = 1
                        AND NOT s.seqcycle
                 FROM pg_attribute a
                 JOIN pg_sequence s
                   ON s.seqrelid = pg_get_serial_sequence('outbox.events', 'id')::regclass
                 WHERE a.attrelid = 'outbox.events'::regclass AND a.attname = 'id'), false))sql";

// One statement: X (the snapshot's highest id), H (read after the snapshot), whether the
// open fence's holders ($1) still hold any lock, and whether no pending row of the scope has
// an id in [$2, $3) (in this snapshot, taken after any pass seen by an earlier statement).
// The modes: every lock mode an INSERT takes or implies (a transaction that locked the table
// harder still inserts under RowExclusiveLock, held beside its stronger one).
constexpr const char* kFenceSql = R"sql(
SELECT (SELECT coalesce(max(id), 0) FROM outbox.events) AS x,
       (SELECT coalesce(array_agg(DISTINCT l.virtualtransaction), '{}'::text[])
        FROM pg_locks l
        WHERE l.locktype = 'relation' AND l.relation = 'outbox.events'::regclass
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                         'AccessExclusiveLock')
          AND l.pid IS DISTINCT FROM pg_backend_pid()) AS holders,
       (SELECT count(*) FROM pg_locks l WHERE l.virtualtransaction = ANY($1::text[])) AS alive,
       NOT EXISTS (SELECT FROM outbox.events
                   WHERE published_at IS NULL AND dead_lettered_at IS NULL
                     AND id >= $2::bigint AND id < $3::bigint) AS clear)sql";

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

ReadFloor::ReadFloor(int shards) : fence_sql_(kFenceSql), sharded_(shards > 1) {
  if (sharded_) {
    const std::string from = "AND id >= $2::bigint";
    auto at = fence_sql_.find(from);
    fence_sql_.replace(at, from.size(), from + " AND " + shard_sql(shards) + " = ANY($4::int[])");
  }
}

void ReadFloor::open(pqxx::connection& conn) {
  // A new connection may follow a restore that set the sequence back: nothing of before holds.
  floor_ = 0;
  passed_ = 0;
  open_.reset();
  next_.reset();
  unrecorded_.clear();
  pqxx::nontransaction n(conn);
  enabled_ = n.exec1(kSequenceSql)[0].as<bool>();
  if (!enabled_ && !told_) {
    told_ = true;
    logging::get("pg")->info(
        "outbox.events.id is not an identity column GENERATED ALWAYS with cache 1: reads start "
        "at the pending index's first entry (slower after a large backlog, nothing skipped; "
        "docs/design/how-it-works.md, \"The read floor\")");
  }
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
  if (floor_ > 0 && now >= expires_) floor_ = 0;  // proven again from the start (see the header)
  std::int64_t to = floor_;
  const std::int64_t unrecorded_min =
      unrecorded_.empty() ? std::numeric_limits<std::int64_t>::max() : *unrecorded_.begin();
  if (passed_ > 0) to = std::max(floor_, std::min(passed_ + 1, unrecorded_min));
  std::vector<std::string> holders = open_ ? open_->holders : std::vector<std::string>{};
  pqxx::nontransaction n(conn);
  pqxx::row r = sharded_
                    ? n.exec_params1(fence_sql_, text_array(holders), floor_, to, int_array(shards))
                    : n.exec_params1(fence_sql_, text_array(holders), floor_, to);
  // The rise first: it rests on passes seen by earlier statements only.
  if (to > floor_ && r["clear"].as<bool>()) {
    if (floor_ == 0) expires_ = now + kFloorLifetime;
    floor_ = to;
  }
  if (open_ && r["alive"].as<long>() == 0) {
    passed_ = std::max(passed_, open_->x);
    open_.reset();
  }
  if (!open_) {
    Fence f{r["x"].as<std::int64_t>(), text_values(r["holders"])};
    if (f.holders.empty()) {
      passed_ = std::max(passed_, f.x);  // seen passed by this statement, used by the next
    } else {
      open_ = std::move(f);
    }
  }
  auto log = logging::get("pg");
  if (log->should_log(spdlog::level::trace)) {
    log->trace("read floor {}: passed up to id {}; {}", floor_, passed_,
               open_ ? "fence at id " + std::to_string(open_->x) + " waits for " +
                           std::to_string(open_->holders.size()) + " transaction(s)"
                     : std::string("no fence open"));
  }
}

}  // namespace outbox::pg
