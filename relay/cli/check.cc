// `outbox-relay check`: what the relay needs of PostgreSQL and Kafka, line by line.
#include <pqxx/pqxx>

#include <algorithm>
#include <cstdio>

#include "cli/commands.h"
#include "kafka/kafka_publisher.h"
#include "pg/conninfo.h"
#include "pg/migrations.h"

namespace outbox::cli {

namespace {

// What replication mode needs of the server, in plain words, with the fix for each.
template <typename Line>
void check_replication(pqxx::nontransaction& n, const config::ReplicationConfig& rc, Line& line) {
  std::string wal_level = n.exec1("SHOW wal_level")[0].as<std::string>();
  line(wal_level == "logical", "wal_level",
       wal_level == "logical"
           ? "logical"
           : wal_level +
                 "; replication mode needs wal_level = logical (ALTER SYSTEM SET "
                 "wal_level = logical, then restart PostgreSQL)");
  auto role = n.exec1(
      "SELECT current_user, rolreplication OR rolsuper FROM pg_roles "
      "WHERE rolname = current_user");
  bool can_replicate = role[1].as<bool>();
  line(can_replicate, "replication privilege",
       can_replicate ? "role " + role[0].as<std::string>() + " may replicate"
                     : "role " + role[0].as<std::string>() + " lacks REPLICATION: ALTER ROLE " +
                           role[0].as<std::string>() + " REPLICATION");
  auto pub = n.exec_params(
      "SELECT p.pubinsert, EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = "
      "p.pubname AND t.schemaname = 'outbox' AND t.tablename = 'events') "
      "FROM pg_publication p WHERE p.pubname = $1",
      rc.publication_name);
  std::string create_pub = "CREATE PUBLICATION " + rc.publication_name +
                           " FOR TABLE outbox.events WITH (publish = 'insert')";
  if (pub.empty()) {
    line(
        rc.create_publication, "publication",
        rc.publication_name + " missing; " +
            (rc.create_publication ? "the relay creates it at start" : "create it: " + create_pub));
  } else {
    bool ok = pub[0][0].as<bool>() && pub[0][1].as<bool>();
    line(ok, "publication",
         rc.publication_name +
             (ok ? " publishes inserts into outbox.events"
                 : " does not publish inserts into outbox.events; recreate it: " + create_pub));
  }
  auto slot = n.exec_params(
      "SELECT plugin, active, active_pid, wal_status, confirmed_flush_lsn::text, "
      "pg_size_pretty(pg_current_wal_lsn() - restart_lsn), database = current_database() "
      "FROM pg_replication_slots WHERE slot_name = $1",
      rc.slot_name);
  if (slot.empty()) {
    line(rc.create_slot, "slot",
         rc.slot_name + " missing; " +
             (rc.create_slot ? std::string("the relay creates it at start")
                             : "create it: SELECT pg_create_logical_replication_slot('" +
                                   rc.slot_name + "', 'pgoutput')"));
    return;
  }
  const auto& r = slot[0];
  std::string wal_status = r[3].is_null() ? "unknown" : r[3].as<std::string>();
  bool ok = !r[0].is_null() && r[0].as<std::string>() == "pgoutput" && r[6].as<bool>() &&
            wal_status != "lost";
  std::string detail =
      rc.slot_name + ": wal_status " + wal_status + ", confirmed " +
      (r[4].is_null() ? "-" : r[4].as<std::string>()) + ", retained WAL " +
      (r[5].is_null() ? "-" : r[5].as<std::string>()) +
      (r[1].as<bool>() ? ", active (PID " + r[2].as<std::string>() + ")" : ", inactive");
  if (wal_status == "lost") {
    detail += "; invalidated: drop it (SELECT pg_drop_replication_slot('" + rc.slot_name +
              "')) and restart the relay, which re-creates it and publishes every pending row";
  } else if (!ok) {
    detail += "; not a pgoutput slot of this database";
  }
  line(ok, "slot", detail);
}

}  // namespace

int run_check(const config::Config& config) {
  int failures = 0;
  auto line = [&](bool ok, const std::string& what, const std::string& detail) {
    std::printf("%-5s %s%s%s\n", ok ? "ok" : "FAIL", what.c_str(), detail.empty() ? "" : ": ",
                detail.c_str());
    if (!ok) ++failures;
  };
  line(true, "config", "valid");
  std::string conninfo = conninfo_or_exit(config);
  std::string redacted = pg::redact_dsn(config.postgres.dsn);
  try {
    pqxx::connection conn(conninfo);
    pqxx::nontransaction n(conn);
    line(true, "postgres reachable",
         redacted + " (server " + n.exec1("SHOW server_version")[0].as<std::string>() + ")");
    std::vector<int> applied = pg::applied_versions(conninfo);
    std::vector<int> missing;
    for (const auto& m : pg::embedded_migrations()) {
      if (std::find(applied.begin(), applied.end(), m.version) == applied.end()) {
        missing.push_back(m.version);
      }
    }
    if (missing.empty()) {
      line(true, "schema", std::to_string(applied.size()) + " migrations applied");
    } else {
      line(false, "schema",
           std::to_string(missing.size()) + " migrations missing; run `outbox-relay migrate`");
    }
    if (n.exec1("SELECT to_regclass('outbox.events') IS NOT NULL")[0].as<bool>()) {
      auto row = n.exec1(
          "SELECT current_user, "
          "has_table_privilege('outbox.events', 'SELECT'), "
          "has_column_privilege('outbox.events', 'published_at', 'UPDATE') "
          "AND has_column_privilege('outbox.events', 'attempts', 'UPDATE') "
          "AND has_column_privilege('outbox.events', 'last_error', 'UPDATE') "
          "AND has_column_privilege('outbox.events', 'dead_lettered_at', 'UPDATE'), "
          "has_sequence_privilege('outbox.relay_wakeup_seq', 'UPDATE'), "
          "(SELECT count(*) FROM outbox.events "
          " WHERE published_at IS NULL AND dead_lettered_at IS NULL), "
          "(SELECT count(*) FROM outbox.events WHERE dead_lettered_at IS NOT NULL)");
      bool ok = row[1].as<bool>() && row[2].as<bool>() && row[3].as<bool>();
      line(ok, "privileges",
           "role " + row[0].as<std::string>() +
               (ok ? " can read and mark outbox.events"
                   : " lacks SELECT/UPDATE on outbox.events or UPDATE on outbox.relay_wakeup_seq; "
                     "GRANT outbox_relay TO " +
                         row[0].as<std::string>()));
      line(true, "outbox",
           row[4].as<std::string>() + " pending, " + row[5].as<std::string>() + " dead-lettered");
    }
    if (config.source.mode == config::SourceMode::replication) {
      check_replication(n, config.source.replication, line);
    }
  } catch (const std::exception& e) {
    line(false, "postgres reachable", redacted + ": " + e.what());
  }
  try {
    kafka::KafkaPublisher publisher(config.kafka);
    auto [brokers, error] = publisher.probe_cluster(10'000);
    line(error.empty(), "kafka reachable",
         error.empty()
             ? config.kafka.bootstrap_servers + " (" + std::to_string(brokers) + " brokers)"
             : config.kafka.bootstrap_servers + ": " + error);
  } catch (const std::exception& e) {
    line(false, "kafka reachable", e.what());
  }
  std::printf("%s\n", failures == 0 ? "all checks passed" : "some checks failed");
  return failures == 0 ? kOk : kFailure;
}

}  // namespace outbox::cli
