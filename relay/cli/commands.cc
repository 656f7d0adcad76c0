#include "cli/commands.h"

#include <cstdio>
#include <cstdlib>

#include "core/steady_clock.h"
#include "pg/conninfo.h"
#include "pg/migrations.h"

namespace outbox::cli {

pg::Conninfo pg_conninfo_or_exit(const config::Config& config) {
  std::string error;
  pg::ConninfoParts parts{config.postgres.dsn, config.postgres.password,
                          config.postgres.password_file, config.postgres.connect_timeout_s,
                          config.postgres.allow_weak_tls};
  auto conninfo = pg::Conninfo::make(parts, &error);
  if (!conninfo) {
    std::fprintf(stderr, "postgres.dsn: %s\n", error.c_str());
    std::exit(kUsage);
  }
  return *conninfo;
}

std::string conninfo_or_exit(const config::Config& config) {
  return pg_conninfo_or_exit(config).current();
}

std::vector<pg::SourceTable> source_tables_of(const config::Config& config) {
  std::vector<pg::SourceTable> out;
  for (std::size_t i = 0; i < config.source.tables.size(); ++i) {
    const config::SourceTableConfig& c = config.source.tables[i];
    auto dot = c.table.find('.');
    pg::SourceTable t;
    t.schema = c.table.substr(0, dot);
    t.table = dot == std::string::npos ? std::string() : c.table.substr(dot + 1);
    t.event_id_column = c.event_id;
    t.topic_column = c.topic;
    t.key_column = c.key;
    t.payload_column = c.payload;
    t.created_at_column = c.created_at;
    t.headers = c.headers;
    t.config_key = "source.tables[" + std::to_string(i) + "]";
    out.push_back(std::move(t));
  }
  return out;
}

std::string admin_conninfo_or_exit(const config::Config& config) {
  if (config.postgres.admin_dsn.empty()) return conninfo_or_exit(config);
  std::string error;
  auto built = pg::build_conninfo(config.postgres.admin_dsn, "", config.postgres.connect_timeout_s,
                                  &error, config.postgres.allow_weak_tls);
  if (!built) {
    std::fprintf(stderr, "postgres.admin_dsn: %s\n", error.c_str());
    std::exit(kUsage);
  }
  return *built;
}

int run_migrate(const config::Config& config) {
  // A privileged role when given (postgres.admin_dsn, or --dsn): the relay's own role may
  // only find the schema up to date.
  std::string conninfo = admin_conninfo_or_exit(config);
  if (!config.postgres.admin_dsn.empty()) {
    std::printf("migrating with postgres.admin_dsn (%s)\n",
                pg::redact_dsn(config.postgres.admin_dsn).c_str());
  }
  try {
    core::SteadyClock clock;
    pg::RoleNames roles{config.postgres.relay_role, config.postgres.writer_role};
    pg::MigrationReport report = pg::migrate(conninfo, clock, roles, source_tables_of(config));
    for (const auto& role : report.roles) std::printf("role     %s\n", role.c_str());
    for (const auto& name : report.applied) std::printf("applied  %s\n", name.c_str());
    for (const auto& name : report.skipped) std::printf("present  %s\n", name.c_str());
    for (const auto& t : report.source_tables) std::printf("source   %s\n", t.c_str());
    for (const auto& w : report.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    std::printf("schema up to date (%zu applied now, %zu already present)\n", report.applied.size(),
                report.skipped.size());
    return kOk;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "migrate failed: %s\n", e.what());
    return kFailure;
  }
}

int run_replay(const config::Config& config, const pg::ReplaySelection& selection) {
  std::string conninfo = conninfo_or_exit(config);
  try {
    pg::ReplayResult result = pg::replay_dead_lettered(conninfo, selection);
    for (const auto& [old_id, new_id] : result.replayed) {
      std::printf("replayed %lld as %lld\n", static_cast<long long>(old_id),
                  static_cast<long long>(new_id));
    }
    for (auto id : result.not_replayed) {
      std::fprintf(stderr, "not replayed %lld: no dead-lettered row has this id\n",
                   static_cast<long long>(id));
    }
    std::printf("%zu rows replayed; the relay publishes them as new rows\n",
                result.replayed.size());
    return result.not_replayed.empty() ? kOk : kFailure;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "replay failed: %s\n", e.what());
    return kFailure;
  }
}

}  // namespace outbox::cli
