#include "pg/migrations.h"

#include <pqxx/pqxx>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <stdexcept>
#include <string_view>

namespace outbox::pg {

namespace {
// Polled, never waited for inside the server: a session blocked in pg_advisory_lock keeps a
// snapshot, and the runner holding the lock would wait for that snapshot in CREATE INDEX
// CONCURRENTLY (schema 0005) while it waits for the lock: a deadlock.
constexpr const char* kTryLockSql = "SELECT pg_try_advisory_lock(hashtext('outbox-relay migrate'))";
constexpr std::chrono::milliseconds kLockPoll{100};
constexpr const char* kUnlockSql = "SELECT pg_advisory_unlock(hashtext('outbox-relay migrate'))";
constexpr const char* kBootstrapSql = R"sql(
CREATE SCHEMA IF NOT EXISTS outbox;
CREATE TABLE IF NOT EXISTS outbox.schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
))sql";
// A migration whose first line is this runs outside a transaction, as one statement
// (CREATE INDEX CONCURRENTLY cannot run in one); the others run in a transaction each.
constexpr std::string_view kNoTransactionMarker = "-- outbox-relay: no transaction";
// Leftovers of an interrupted CREATE INDEX CONCURRENTLY: invalid indexes of schema outbox
// (migrate runs one at a time, so none of them is a build still under way).
constexpr const char* kInvalidIndexesSql = R"sql(
SELECT c.relname FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'outbox' AND NOT i.indisvalid)sql";
constexpr const char* kRecordSql =
    "INSERT INTO outbox.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)";
constexpr const char* kInsufficientPrivilege = "42501";
// A transactional migration waits at most this long for each lock (ALTER TABLE on
// outbox.events needs ACCESS EXCLUSIVE): while it waits, every service's enqueue queues
// behind it, so it never waits long; it gives the lock up and tries again after a pause.
constexpr const char* kMigrationLockTimeoutSql = "SET LOCAL lock_timeout = '1s'";
constexpr const char* kLockNotAvailable = "55P03";
constexpr std::chrono::milliseconds kLockRetryPause{500};
constexpr std::chrono::milliseconds kLockRetryPauseMax{5000};

bool runs_outside_transaction(const Migration& m) {
  return std::string_view(m.sql).substr(0, kNoTransactionMarker.size()) == kNoTransactionMarker;
}

// What the relay's own role sees: the recorded versions, or nullopt when it may not read
// them (or the table does not exist yet).
std::optional<std::map<int, std::string>> recorded_versions(pqxx::connection& conn) {
  try {
    pqxx::nontransaction n(conn);
    if (!n.exec1("SELECT to_regclass('outbox.schema_migrations') IS NOT NULL")[0].as<bool>()) {
      return std::nullopt;
    }
    std::map<int, std::string> recorded;
    for (const auto& row : n.exec("SELECT version, checksum FROM outbox.schema_migrations")) {
      recorded[row[0].as<int>()] = row[1].as<std::string>();
    }
    return recorded;
  } catch (const pqxx::sql_error&) {
    return std::nullopt;  // no USAGE on schema outbox, no SELECT: the bootstrap will say
  }
}

// The server's message, and when it is a missing privilege, what to do about it.
std::string explained(const std::exception& e) {
  std::string what = e.what();
  while (!what.empty() && (what.back() == '\n' || what.back() == ' ')) what.pop_back();
  // By type: libpqxx 6 leaves sqlstate() empty after a multi-statement query.
  const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e);
  if (dynamic_cast<const pqxx::insufficient_privilege*>(&e) ||
      (sql && sql->sqlstate() == kInsufficientPrivilege)) {
    what +=
        " -- migrate needs a privileged role (the owner of schema outbox and its objects, or "
        "one with CREATE on the database to make them), not the relay's least-privilege "
        "role: give it with postgres.admin_dsn (or migrate --dsn)";
  }
  return what;
}

void apply(pqxx::connection& conn, const Migration& m, const std::string& sum, core::Clock& clock) {
  if (!runs_outside_transaction(m)) {
    for (auto pause = kLockRetryPause;; pause = std::min(pause * 2, kLockRetryPauseMax)) {
      try {
        pqxx::work w(conn);
        w.exec0(kMigrationLockTimeoutSql);
        w.exec(m.sql);
        w.exec_params0(kRecordSql, m.version, m.name, sum);
        w.commit();
        return;
      } catch (const pqxx::sql_error& e) {
        // By message too: libpqxx 6 leaves sqlstate() empty after a multi-statement query.
        bool lock_timeout =
            e.sqlstate() == kLockNotAvailable ||
            std::string_view(e.what()).find("due to lock timeout") != std::string_view::npos;
        if (!lock_timeout) throw;
        std::fprintf(stderr,
                     "%s: waiting for a lock other sessions hold (an open transaction on "
                     "outbox.events?); services are not held up meanwhile; retrying in %lld ms\n",
                     m.name.c_str(), static_cast<long long>(pause.count()));
        clock.sleep_for(pause, [] { return false; });
      }
    }
  }
  pqxx::nontransaction n(conn);
  std::vector<std::string> invalid;
  for (const auto& row : n.exec(kInvalidIndexesSql)) invalid.push_back(row[0].as<std::string>());
  for (const auto& name : invalid) {
    n.exec("DROP INDEX CONCURRENTLY IF EXISTS outbox." + n.quote_name(name));
  }
  n.exec(m.sql);  // one statement, idempotent (IF NOT EXISTS): a crash before the record
                  // below only makes the next run do it again
  n.exec_params0(kRecordSql + std::string(" ON CONFLICT (version) DO NOTHING"), m.version, m.name,
                 sum);
}

}  // namespace

std::string checksum(const std::string& sql) {
  std::uint64_t hash = 1469598103934665603ULL;
  for (unsigned char c : sql) {
    hash ^= c;
    hash *= 1099511628211ULL;
  }
  char out[17];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(hash));
  return out;
}

MigrationReport migrate(const std::string& conninfo, core::Clock& clock) {
  MigrationReport report;
  pqxx::connection conn(conninfo);
  {
    pqxx::nontransaction n(conn);
    n.exec("SET client_min_messages = warning");
    while (!n.exec1(kTryLockSql)[0].as<bool>()) clock.sleep_for(kLockPoll, [] { return false; });
  }
  try {
    // Nothing to do: no DDL at all, so that the relay's own role (which may read
    // schema_migrations but create nothing) can run migrate on a migrated database.
    std::optional<std::map<int, std::string>> recorded = recorded_versions(conn);
    bool all_present =
        recorded && std::all_of(embedded_migrations().begin(), embedded_migrations().end(),
                                [&](const Migration& m) { return recorded->count(m.version); });
    if (!all_present) {
      try {
        pqxx::work w(conn);
        w.exec(kBootstrapSql);
        w.commit();
      } catch (const std::exception& e) {
        throw std::runtime_error("cannot create schema outbox: " + explained(e));
      }
      recorded = recorded_versions(conn);
      if (!recorded) throw std::runtime_error("cannot read outbox.schema_migrations");
    }
    for (const Migration& m : embedded_migrations()) {
      std::string sum = checksum(m.sql);
      if (auto it = recorded->find(m.version); it != recorded->end()) {
        report.skipped.push_back(m.name);
        if (it->second != sum) {
          report.warnings.push_back(m.name + " differs from the version applied before (checksum " +
                                    it->second + ", now " + sum + "); not re-applied");
        }
        continue;
      }
      try {
        apply(conn, m, sum, clock);
      } catch (const std::exception& e) {
        throw std::runtime_error("migration " + m.name + " failed: " + explained(e));
      }
      report.applied.push_back(m.name);
    }
  } catch (...) {
    try {
      pqxx::nontransaction n(conn);
      n.exec(kUnlockSql);
    } catch (...) {
      // The lock goes with the session anyway.
    }
    throw;
  }
  pqxx::nontransaction n(conn);
  n.exec(kUnlockSql);
  return report;
}

std::vector<int> applied_versions(const std::string& conninfo) {
  pqxx::connection conn(conninfo);
  pqxx::nontransaction n(conn);
  std::vector<int> versions;
  if (n.exec1("SELECT to_regclass('outbox.schema_migrations') IS NOT NULL")[0].as<bool>()) {
    for (const auto& row : n.exec("SELECT version FROM outbox.schema_migrations ORDER BY 1")) {
      versions.push_back(row[0].as<int>());
    }
  }
  return versions;
}

}  // namespace outbox::pg
