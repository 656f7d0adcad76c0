#include "pg/migrations.h"

#include <pqxx/pqxx>

#include <cstdint>
#include <cstdio>
#include <map>
#include <stdexcept>

namespace outbox::pg {

namespace {
constexpr const char* kLockSql = "SELECT pg_advisory_lock(hashtext('outbox-relay migrate'))";
constexpr const char* kUnlockSql = "SELECT pg_advisory_unlock(hashtext('outbox-relay migrate'))";
constexpr const char* kBootstrapSql = R"sql(
CREATE SCHEMA IF NOT EXISTS outbox;
CREATE TABLE IF NOT EXISTS outbox.schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
))sql";
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

MigrationReport migrate(const std::string& conninfo) {
  MigrationReport report;
  pqxx::connection conn(conninfo);
  {
    pqxx::nontransaction n(conn);
    n.exec("SET client_min_messages = warning");
    n.exec(kLockSql);
  }
  try {
    {
      pqxx::work w(conn);
      w.exec(kBootstrapSql);
      w.commit();
    }
    std::map<int, std::string> recorded;
    {
      pqxx::nontransaction n(conn);
      for (const auto& row : n.exec("SELECT version, checksum FROM outbox.schema_migrations")) {
        recorded[row[0].as<int>()] = row[1].as<std::string>();
      }
    }
    for (const Migration& m : embedded_migrations()) {
      std::string sum = checksum(m.sql);
      if (auto it = recorded.find(m.version); it != recorded.end()) {
        report.skipped.push_back(m.name);
        if (it->second != sum) {
          report.warnings.push_back(m.name + " differs from the version applied before (checksum " +
                                    it->second + ", now " + sum + "); not re-applied");
        }
        continue;
      }
      try {
        pqxx::work w(conn);
        w.exec(m.sql);
        w.exec_params0(
            "INSERT INTO outbox.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            m.version, m.name, sum);
        w.commit();
      } catch (const std::exception& e) {
        throw std::runtime_error("migration " + m.name + " failed: " + e.what());
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
