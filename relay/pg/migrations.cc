#include "pg/migrations.h"

#include <pqxx/pqxx>

#include <algorithm>
#include <cctype>
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

// Schema 0002 used to make the two roles itself, and CREATE ROLE checks CREATEROLE before it
// looks whether the role exists: a role without it could not migrate a new database in a
// cluster whose roles were made already. The runner makes them now (ensure_roles); for the
// databases that applied the earlier text it was the same migration, not drift.
struct EarlierText {
  int version;
  const char* checksum;
};
constexpr EarlierText kEarlierTexts[] = {{2, "ba577f4eab1448f5"}};

bool is_earlier_text(int version, const std::string& sum) {
  return std::any_of(std::begin(kEarlierTexts), std::end(kEarlierTexts), [&](const EarlierText& e) {
    return e.version == version && sum == e.checksum;
  });
}

constexpr const char* kDuplicateObject = "42710";
constexpr const char* kUniqueViolation = "23505";

// Whether this runner looks after the roles: it owns schema outbox (or will create it). The
// relay's own role, finding the schema up to date, does not (invariant: no DDL then).
bool manages_roles(pqxx::connection& conn) {
  pqxx::nontransaction n(conn);
  return n
      .exec1(
          "SELECT COALESCE((SELECT pg_has_role(current_user, nspowner, 'USAGE') "
          "FROM pg_namespace WHERE nspname = 'outbox'), true)")[0]
      .as<bool>();
}

// Creates the roles that do not exist; a role that exists is used as it is, so CREATEROLE
// is needed only for a missing one.
void ensure_roles(pqxx::connection& conn, const RoleNames& roles, MigrationReport& report) {
  for (const std::string& name : {roles.relay, roles.writer}) {
    pqxx::nontransaction n(conn);
    if (n.exec_params1("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", name)[0]
            .as<bool>()) {
      report.roles.push_back(name + ": present");
      continue;
    }
    try {
      n.exec0("CREATE ROLE " + n.quote_name(name) + " NOLOGIN");
      report.roles.push_back(name + ": created");
    } catch (const pqxx::sql_error& e) {
      // Roles belong to the whole cluster: another database's migrate may make it first.
      // By type and message too: libpqxx 6 may leave sqlstate() empty.
      if (e.sqlstate() == kDuplicateObject || e.sqlstate() == kUniqueViolation ||
          dynamic_cast<const pqxx::unique_violation*>(&e) ||
          std::string_view(e.what()).find("already exists") != std::string_view::npos) {
        report.roles.push_back(name + ": present");
        continue;
      }
      if (e.sqlstate() != kInsufficientPrivilege &&
          !dynamic_cast<const pqxx::insufficient_privilege*>(&e)) {
        throw;
      }
      throw std::runtime_error(
          "role " + name +
          " does not exist and the role migrating may not create roles (no "
          "CREATEROLE): create it once as a role that may (CREATE ROLE " +
          name + " NOLOGIN), or give postgres.admin_dsn such a role, then run migrate again");
    }
  }
}

void grant_roles(pqxx::connection& conn, const RoleNames& roles, MigrationReport& report) {
  pqxx::work w(conn);
  for (const std::string& grant : role_grants(roles)) w.exec0(grant);
  w.commit();
  report.roles.push_back(roles.relay + ": granted");
  report.roles.push_back(roles.writer + ": granted");
}

bool is_identifier_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$';
}

void apply(pqxx::connection& conn, const Migration& m, const std::string& sum, core::Clock& clock) {
  if (!runs_outside_transaction(m)) {
    run_under_lock_timeout(conn, m.name, "an open transaction on outbox.events?", clock,
                           [&](pqxx::transaction_base& w) {
                             w.exec(m.sql);
                             w.exec_params0(kRecordSql, m.version, m.name, sum);
                           });
    return;
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

void run_under_lock_timeout(pqxx::connection& conn, const std::string& what,
                            const std::string& holders, core::Clock& clock,
                            const std::function<void(pqxx::transaction_base&)>& body) {
  for (auto pause = kLockRetryPause;; pause = std::min(pause * 2, kLockRetryPauseMax)) {
    try {
      pqxx::work w(conn);
      w.exec0(kMigrationLockTimeoutSql);
      body(w);
      w.commit();
      return;
    } catch (const pqxx::sql_error& e) {
      // By message too: libpqxx 6 leaves sqlstate() empty after a multi-statement query.
      bool lock_timeout =
          e.sqlstate() == kLockNotAvailable ||
          std::string_view(e.what()).find("due to lock timeout") != std::string_view::npos;
      if (!lock_timeout) throw;
      std::fprintf(stderr,
                   "%s: waiting for a lock other sessions hold (%s); services are not held up "
                   "meanwhile; retrying in %lld ms\n",
                   what.c_str(), holders.c_str(), static_cast<long long>(pause.count()));
      clock.sleep_for(pause, [] { return false; });
    }
  }
}

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

std::string with_role_names(const std::string& sql, const RoleNames& roles) {
  const std::pair<std::string_view, const std::string*> names[] = {
      {"outbox_relay", &roles.relay}, {"outbox_writer", &roles.writer}};
  std::string out;
  out.reserve(sql.size());
  for (std::size_t i = 0; i < sql.size();) {
    bool replaced = false;
    if (i == 0 || !is_identifier_char(sql[i - 1])) {
      for (const auto& [from, to] : names) {
        std::size_t end = i + from.size();
        if (sql.compare(i, from.size(), from) == 0 &&
            (end == sql.size() || !is_identifier_char(sql[end]))) {
          out += *to;
          i = end;
          replaced = true;
          break;
        }
      }
    }
    if (!replaced) out += sql[i++];
  }
  return out;
}

std::vector<std::string> role_grants(const RoleNames& roles) {
  std::vector<std::string> grants;
  for (const Migration& m : embedded_migrations()) {
    std::string statement;
    std::size_t start = 0;
    while (start < m.sql.size()) {
      std::size_t end = m.sql.find('\n', start);
      if (end == std::string::npos) end = m.sql.size();
      std::string line = m.sql.substr(start, end - start);
      start = end + 1;
      if (statement.empty() && line.rfind("GRANT ", 0) != 0) continue;
      statement += (statement.empty() ? "" : "\n") + line;
      if (!line.empty() && line.back() == ';') {
        grants.push_back(with_role_names(statement, roles));
        statement.clear();
      }
    }
  }
  return grants;
}

MigrationReport migrate(const std::string& conninfo, core::Clock& clock, const RoleNames& roles,
                        const std::vector<SourceTable>& source_tables) {
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
    bool roles_managed = manages_roles(conn);
    if (roles_managed) ensure_roles(conn, roles, report);
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
        if (it->second != sum && !is_earlier_text(m.version, it->second)) {
          report.warnings.push_back(m.name + " differs from the version applied before (checksum " +
                                    it->second + ", now " + sum + "); not re-applied");
        }
        continue;
      }
      try {
        Migration named = m;  // its checksum stays that of the file
        named.sql = with_role_names(m.sql, roles);
        apply(conn, named, sum, clock);
      } catch (const std::exception& e) {
        throw std::runtime_error("migration " + m.name + " failed: " + explained(e));
      }
      report.applied.push_back(m.name);
    }
    if (roles_managed) {
      try {
        grant_roles(conn, roles, report);
      } catch (const std::exception& e) {
        throw std::runtime_error("granting the schema's privileges to " + roles.relay + " and " +
                                 roles.writer + " failed: " + explained(e));
      }
    }
    if (!source_tables.empty()) {
      report.source_tables = install_source_tables(conn, source_tables, clock);
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
