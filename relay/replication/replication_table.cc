#include "replication/replication_table.h"

#include <pqxx/pqxx>

#include <algorithm>
#include <charconv>
#include <limits>

#include "pg/outbox_rows.h"
#include "pg/pg_array.h"

namespace outbox::replication {

namespace {

// One statement, so one snapshot: pg_current_snapshot() is the snapshot the rows are read
// with, which tells a row not visible yet from a row that is gone.
constexpr const char* kCheckSql = R"sql(
SELECT s.snap, e.id, e.pending
FROM (SELECT pg_current_snapshot()::text AS snap) AS s
LEFT JOIN (SELECT id, published_at IS NULL AND dead_lettered_at IS NULL AS pending
           FROM outbox.events WHERE id = ANY($1::bigint[])) AS e ON true)sql";

// A new snapshot and the transaction id of every backend, in one statement: the snapshot's
// in-progress list stops at its xmax, while a transaction at or above it (none after it has
// ended yet) may be in the proc array too.
constexpr const char* kInProgressSql = R"sql(
SELECT 's', pg_current_snapshot()::text
UNION ALL
SELECT 'b', backend_xid::text FROM pg_stat_activity WHERE backend_xid IS NOT NULL)sql";

// Of those, the ones whose commit is already in clog.
constexpr const char* kCommittedSql = R"sql(
SELECT x::text FROM unnest($1::xid8[]) AS x WHERE pg_xact_status(x) = 'committed')sql";

constexpr const char* kSnapshotSql = "SELECT pg_current_snapshot()::text";

constexpr const char* kNotVisibleCountSql = R"sql(
SELECT count(*) FROM unnest($1::xid8[]) AS x
WHERE NOT pg_visible_in_snapshot(x, pg_current_snapshot()))sql";

bool parse_u64(std::string_view text, std::uint64_t& out) {
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && ptr == text.data() + text.size() && !text.empty();
}

}  // namespace

std::optional<PgSnapshot> PgSnapshot::parse(std::string_view text) {
  PgSnapshot s;
  auto first = text.find(':');
  if (first == std::string_view::npos) return std::nullopt;
  auto second = text.find(':', first + 1);
  if (second == std::string_view::npos) return std::nullopt;
  if (!parse_u64(text.substr(0, first), s.xmin) ||
      !parse_u64(text.substr(first + 1, second - first - 1), s.xmax)) {
    return std::nullopt;
  }
  std::string_view rest = text.substr(second + 1);
  while (!rest.empty()) {
    auto comma = rest.find(',');
    std::uint64_t x = 0;
    if (!parse_u64(rest.substr(0, comma), x)) return std::nullopt;
    s.xip.push_back(x);
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  if (s.xmin > s.xmax) return std::nullopt;
  return s;
}

std::uint64_t PgSnapshot::full_xid(std::uint32_t xid) const {
  // The one nearest to xmax with these low 32 bits.
  auto delta = static_cast<std::int32_t>(xid - static_cast<std::uint32_t>(xmax));
  auto full = static_cast<std::int64_t>(xmax) + delta;
  return full < 0 ? 0 : static_cast<std::uint64_t>(full);
}

bool PgSnapshot::shows_committed(std::uint32_t xid) const {
  std::uint64_t full = full_xid(xid);
  if (full >= xmax) return false;  // had not ended when the snapshot was taken
  return std::find(xip.begin(), xip.end(), full) == xip.end();
}

bool PgSnapshot::counts_ended(std::uint64_t full) const {
  return full < xmax && std::find(xip.begin(), xip.end(), full) == xip.end();
}

PgReplicationTable::PgReplicationTable(pg::Conninfo conninfo, std::string redacted,
                                       const core::Clock& clock)
    : clock_(clock),
      session_(std::move(conninfo), std::move(redacted), clock, {}, [this](pqxx::connection& conn) {
        rows_.open(conn);
        floor_.open(conn);
      }) {}

template <typename F>
auto PgReplicationTable::on_session(F&& body) -> decltype(body(std::declval<pqxx::connection&>())) {
  session_.connect();
  try {
    return body(session_.conn());
  } catch (const core::UnavailableError&) {
    session_.disconnect();
    throw;
  } catch (const std::exception& e) {
    session_.fail(e);
  }
}

void PgReplicationTable::connect() { session_.connect(); }

ReplicationTable::Bound PgReplicationTable::pending_bound_in_snapshot(const std::string& name) {
  return on_session([&](pqxx::connection& conn) {
    Bound bound;
    pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> txn(conn);
    txn.exec0("SET TRANSACTION SNAPSHOT " + txn.quote(name));
    bound.snapshot = txn.exec1(kSnapshotSql)[0].as<std::string>();
    bound.upto = txn.exec1(pg::pending_bound_sql())[0].as<std::int64_t>();
    txn.commit();
    return bound;
  });
}

std::vector<std::uint64_t> PgReplicationTable::in_progress_now(pqxx::connection& conn) {
  pqxx::nontransaction n(conn);
  std::optional<PgSnapshot> now;
  std::vector<std::uint32_t> backends;
  for (const auto& row : n.exec(kInProgressSql)) {
    std::string text = row[1].as<std::string>();
    if (row[0].as<std::string>() == "s") {
      now = PgSnapshot::parse(text);
      if (!now) throw std::runtime_error("unexpected snapshot " + text);
    } else {
      std::uint64_t x = 0;
      if (!parse_u64(text, x) || x > 0xFFFFFFFFULL) {
        throw std::runtime_error("unexpected transaction id " + text);
      }
      backends.push_back(static_cast<std::uint32_t>(x));
    }
  }
  if (!now) throw std::runtime_error("no snapshot");
  std::vector<std::uint64_t> xids = now->xip;
  for (auto x32 : backends) {
    std::uint64_t x = now->full_xid(x32);
    if (x >= now->xmax) xids.push_back(x);
  }
  return xids;
}

std::vector<std::uint64_t> PgReplicationTable::not_yet_visible(const std::string& snapshot) {
  auto exported = PgSnapshot::parse(snapshot);
  if (!exported) throw core::UnavailableError("unexpected snapshot " + snapshot);
  return on_session([&](pqxx::connection& conn) {
    std::vector<std::uint64_t> xids;
    for (auto x : in_progress_now(conn)) {
      if (exported->counts_ended(x)) xids.push_back(x);
    }
    return xids;
  });
}

std::vector<std::uint64_t> PgReplicationTable::committed_not_visible() {
  return on_session([&](pqxx::connection& conn) {
    std::vector<std::uint64_t> committed;
    std::vector<std::string> candidates;
    for (auto x : in_progress_now(conn)) candidates.push_back(std::to_string(x));
    if (candidates.empty()) return committed;
    pqxx::nontransaction n(conn);
    for (const auto& row : n.exec_params(kCommittedSql, pg::text_array(candidates))) {
      std::uint64_t x = 0;
      if (!parse_u64(row[0].as<std::string>(), x)) {
        throw std::runtime_error("unexpected transaction id " + row[0].as<std::string>());
      }
      committed.push_back(x);
    }
    return committed;
  });
}

std::optional<ReplicationTable::FlushPoint> PgReplicationTable::flush_point() {
  return on_session([&](pqxx::connection& conn) -> std::optional<FlushPoint> {
    std::optional<Lsn> flushed;
    {
      // Its own statement, before the snapshot of in_progress_now: a statement's snapshot is
      // taken when it starts, and the position must be read before it (3a). The insert
      // position, not the flush position: with asynchronous commits the flush position lags
      // the commits (hundreds of MB behind a fast backlog), and the stream then sent again,
      // while the drain ran, most of the rows the drain was publishing.
      pqxx::nontransaction n(conn);
      flushed =
          Lsn::parse(n.exec1("SELECT pg_current_wal_insert_lsn()::text")[0].as<std::string>());
    }
    if (!flushed) return std::nullopt;
    return FlushPoint{*flushed, in_progress_now(conn)};
  });
}

bool PgReplicationTable::visible(const std::vector<std::uint64_t>& xids) {
  std::vector<std::string> texts;
  for (auto x : xids) texts.push_back(std::to_string(x));
  return on_session([&](pqxx::connection& conn) {
    pqxx::nontransaction n(conn);
    return n.exec_params1(kNotVisibleCountSql, pg::text_array(texts))[0].as<long>() == 0;
  });
}

std::int64_t PgReplicationTable::pending_bound() {
  return on_session([&](pqxx::connection& conn) {
    pqxx::nontransaction n(conn);
    return n.exec1(pg::pending_bound_sql())[0].as<std::int64_t>();
  });
}

std::vector<core::OutboxEvent> PgReplicationTable::pending_range(
    std::int64_t after_id, std::int64_t upto, std::optional<std::size_t> pending_upto,
    std::size_t limit, std::size_t max_bytes, const std::vector<std::string>& skip_topics) {
  static const std::string sql = pg::fetch_sql(pg::FetchScope::upto);
  return on_session([&](pqxx::connection& conn) {
    floor_.before_read(conn, clock_.now(), !pending_upto);
    const auto floor = static_cast<long long>(floor_.floor());
    if (!pending_upto) after_id = std::max<std::int64_t>(after_id, floor - 1);
    pqxx::nontransaction n(conn);
    long long guard = pending_upto ? static_cast<long long>(*pending_upto) : -1;
    auto events = pg::events_of(
        n.exec_params(sql, static_cast<long>(limit), static_cast<long long>(max_bytes),
                      pg::text_array(skip_topics), static_cast<long long>(after_id), guard, floor,
                      static_cast<long long>(upto)));
    floor_.returned(events);
    return events;
  });
}

std::vector<core::OutboxEvent> PgReplicationTable::pending_of_topics(
    const std::vector<std::string>& topics, std::size_t limit, std::size_t max_bytes) {
  static const std::string sql = pg::fetch_sql(pg::FetchScope::topics);
  return on_session([&](pqxx::connection& conn) {
    pqxx::nontransaction n(conn);
    return pg::events_of(n.exec_params(
        sql, static_cast<long>(limit), static_cast<long long>(max_bytes), pg::text_array(topics),
        static_cast<long long>(std::numeric_limits<std::int64_t>::min()), -1LL, 0LL));
  });
}

std::vector<core::OutboxEvent> PgReplicationTable::pending_rows(
    const std::vector<std::int64_t>& ids, std::size_t limit, std::size_t max_bytes) {
  static const std::string sql = pg::fetch_sql(pg::FetchScope::among);
  return on_session([&](pqxx::connection& conn) {
    pqxx::nontransaction n(conn);
    return pg::events_of(n.exec_params(sql, static_cast<long>(limit),
                                       static_cast<long long>(max_bytes), pg::bigint_array(ids)));
  });
}

RowCheck PgReplicationTable::check(const std::vector<std::int64_t>& ids,
                                   const std::vector<std::uint32_t>& xids) {
  return on_session([&](pqxx::connection& conn) {
    RowCheck result;
    pqxx::nontransaction n(conn);
    pqxx::result rows = n.exec_params(kCheckSql, pg::bigint_array(ids));
    if (rows.empty()) throw std::runtime_error("row check returned no snapshot");
    auto snapshot = PgSnapshot::parse(rows[0][0].as<std::string>());
    if (!snapshot) throw std::runtime_error("unexpected snapshot " + rows[0][0].as<std::string>());
    for (const auto& row : rows) {
      if (!row[1].is_null()) result.pending[row[1].as<std::int64_t>()] = row[2].as<bool>();
    }
    for (auto xid : xids) {
      if (!snapshot->shows_committed(xid)) result.not_visible.insert(xid);
    }
    return result;
  });
}

void PgReplicationTable::record_outcome(const core::BatchOutcome& outcome) {
  on_session([&](pqxx::connection& conn) {
    rows_.record(conn, outcome, vanished_);
    floor_.recorded(outcome, vanished_);
  });
}

std::vector<core::VanishedRow> PgReplicationTable::take_vanished() {
  std::vector<core::VanishedRow> out;
  out.swap(vanished_);
  return out;
}

}  // namespace outbox::replication
