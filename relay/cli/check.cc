// `outbox-relay check`: what the relay needs of PostgreSQL and Kafka, line by line.
#include <pqxx/pqxx>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "cli/check_session.h"
#include "cli/commands.h"
#include "cli/managed_pg.h"
#include "cli/server_version.h"
#include "kafka/kafka_publisher.h"
#include "kafka/transactional_publisher.h"
#include "pg/conninfo.h"
#include "pg/migrations.h"
#include "pg/read_floor.h"
#include "pg/source_tables.h"

namespace outbox::cli {

namespace {

// What replication mode needs of the server, in plain words, with the fix for each.
template <typename Line>
void check_replication(pqxx::nontransaction& n, const config::ReplicationConfig& rc, Line& line) {
  // Managed services (cli/managed_pg.h) take other fixes than ALTER SYSTEM and ALTER ROLE.
  ServerFacts facts = read_server_facts(n);
  ManagedService service = detect_managed_service(facts);
  if (service != ManagedService::none) {
    line(true, "managed postgres", describe_managed_service(service, facts));
  }
  std::string wal_level = n.exec1("SHOW wal_level")[0].as<std::string>();
  line(wal_level == "logical", "wal_level",
       wal_level == "logical" ? "logical"
                              : wal_level + "; replication mode needs wal_level = logical",
       wal_level_fix(service, facts));
  auto role = n.exec1(
      "SELECT current_user, rolreplication OR rolsuper FROM pg_roles "
      "WHERE rolname = current_user");
  auto privilege =
      replication_privilege(service, facts, role[0].as<std::string>(), role[1].as<bool>());
  line(privilege.ok, "replication privilege", privilege.detail, privilege.fix);
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

// One line per check (libpq's multi-line messages joined); a failure carries the fix on the
// line below it.
class Report {
 public:
  void operator()(bool ok, const std::string& what, std::string detail,
                  const std::string& fix = "") {
    while (!detail.empty() && std::isspace(static_cast<unsigned char>(detail.back()))) {
      detail.pop_back();
    }
    for (std::size_t at; (at = detail.find_first_of("\n\t")) != std::string::npos;) {
      std::size_t end = detail.find_first_not_of(" \n\t", at);
      detail.replace(at, end == std::string::npos ? std::string::npos : end - at, " ");
    }
    std::printf("%-5s %s%s%s\n", ok ? "ok" : "FAIL", what.c_str(), detail.empty() ? "" : ": ",
                detail.c_str());
    if (!ok && !fix.empty()) std::printf("      fix: %s\n", fix.c_str());
    if (!ok) ++failures;
  }
  int failures = 0;
};

// What the relay's role may do in schema outbox. Read from the catalogs by oid, so that a
// missing privilege is an answer here and not an error ("permission denied for schema").
struct Privileges {
  std::string role;
  bool schema_exists = false, usage = false, events_exist = false, select = false, mark = false,
       wakeup = false, migrations_readable = false, vanished_writable = false;

  explicit Privileges(pqxx::nontransaction& n) {
    auto row = n.exec1(
        "SELECT current_user, n.oid IS NOT NULL, "
        "coalesce(has_schema_privilege(n.oid, 'USAGE'), false), e.oid IS NOT NULL, "
        "coalesce(has_table_privilege(e.oid, 'SELECT'), false), "
        "coalesce(has_column_privilege(e.oid, 'published_at', 'UPDATE') "
        "AND has_column_privilege(e.oid, 'attempts', 'UPDATE') "
        "AND has_column_privilege(e.oid, 'last_error', 'UPDATE') "
        "AND has_column_privilege(e.oid, 'dead_lettered_at', 'UPDATE'), false), "
        "coalesce(has_sequence_privilege(s.oid, 'UPDATE'), false), "
        "coalesce(has_table_privilege(m.oid, 'SELECT'), m.oid IS NULL), "
        "coalesce(has_table_privilege(v.oid, 'INSERT'), v.oid IS NULL) "
        "FROM (SELECT 1) AS one "
        "LEFT JOIN pg_namespace n ON n.nspname = 'outbox' "
        "LEFT JOIN pg_class e ON e.relnamespace = n.oid AND e.relname = 'events' "
        "LEFT JOIN pg_class s ON s.relnamespace = n.oid AND s.relname = 'relay_wakeup_seq' "
        "LEFT JOIN pg_class m ON m.relnamespace = n.oid AND m.relname = 'schema_migrations' "
        "LEFT JOIN pg_class v ON v.relnamespace = n.oid AND v.relname = 'vanished'");
    role = row[0].as<std::string>();
    schema_exists = row[1].as<bool>();
    usage = row[2].as<bool>();
    events_exist = row[3].as<bool>();
    select = row[4].as<bool>();
    mark = row[5].as<bool>();
    wakeup = row[6].as<bool>();
    migrations_readable = row[7].as<bool>();
    vanished_writable = row[8].as<bool>();
  }

  // What is missing, in GRANT's words; empty when nothing is.
  std::string missing() const {
    std::string out;
    auto add = [&](bool ok, const char* what) {
      if (!ok) out += (out.empty() ? "" : ", ") + std::string(what);
    };
    add(usage, "USAGE on schema outbox");
    if (events_exist) {
      add(select, "SELECT on outbox.events");
      add(mark, "UPDATE (published_at, attempts, last_error, dead_lettered_at) on outbox.events");
    }
    add(wakeup, "UPDATE on sequence outbox.relay_wakeup_seq");
    add(migrations_readable, "SELECT on outbox.schema_migrations");
    add(vanished_writable, "INSERT on outbox.vanished");
    return out;
  }
};

void check_postgres(const config::Config& config, Report& line) {
  std::string conninfo = conninfo_or_exit(config);
  std::string redacted = pg::redact_dsn(config.postgres.dsn);
  std::optional<pqxx::connection> conn;
  try {
    conn.emplace(conninfo);
  } catch (const std::exception& e) {
    line(false, "postgres reachable", redacted + ": " + e.what(),
         connect_fix(e.what(),
                     "check postgres.dsn (host, port, dbname, user), the password, and that the "
                     "server accepts this client (listen_addresses, pg_hba.conf)"));
    return;
  }
  line(true, "postgres reachable", redacted);
  CheckLine session = check_own_session(*conn, conninfo);
  line(session.ok, "postgres session", session.detail, session.fix);
  pqxx::nontransaction n(*conn);
  try {
    auto row = n.exec1(
        "SELECT current_setting('server_version_num')::int, "
        "current_setting('server_version')");
    auto report = postgres_version_report(row[0].as<int>(), row[1].as<std::string>(),
                                          config.source.mode == config::SourceMode::replication);
    line(report.ok, "postgres version", report.detail, report.fix);
  } catch (const std::exception& e) {
    line(false, "postgres version", e.what());
  }
  try {
    // A hot standby, or sessions read-only by default: the relay would publish rows it can
    // never mark (and send them again at every restart).
    auto row = n.exec1(
        "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')::bool");
    bool standby = row[0].as<bool>(), read_only = row[1].as<bool>();
    line(!standby && !read_only, "postgres writable",
         standby     ? "the server is a hot standby (in recovery): the relay could publish rows "
                       "but never mark them"
         : read_only ? "sessions are read-only (default_transaction_read_only = on for this "
                       "role, database or dsn): the relay could publish rows but never mark them"
                     : "read-write",
         standby ? "point postgres.dsn at the primary (with several hosts: "
                   "target_session_attrs=read-write)"
                 : "ALTER ROLE <relay's role> SET default_transaction_read_only = off (or RESET it "
                   "on the database, or remove it from the dsn's options)");
  } catch (const std::exception& e) {
    line(false, "postgres writable", e.what());
  }
  std::optional<Privileges> privileges;
  try {
    privileges.emplace(n);
  } catch (const std::exception& e) {
    line(false, "privileges", std::string("cannot be read: ") + e.what());
    return;
  }
  const Privileges& p = *privileges;
  std::string migrate_fix =
      "run `outbox-relay migrate` as a role that may create schemas and roles (the schema "
      "owner), then grant the relay's role " +
      config.postgres.relay_role;
  if (!p.schema_exists) {
    line(false, "schema", "schema outbox missing", migrate_fix);
    return;
  }
  if (p.usage && p.migrations_readable) {
    try {
      std::vector<int> applied = pg::applied_versions(conninfo);
      std::vector<int> missing;
      for (const auto& m : pg::embedded_migrations()) {
        if (std::find(applied.begin(), applied.end(), m.version) == applied.end()) {
          missing.push_back(m.version);
        }
      }
      line(missing.empty(), "schema",
           missing.empty() ? std::to_string(applied.size()) + " migrations applied"
                           : std::to_string(missing.size()) + " migrations missing",
           migrate_fix);
    } catch (const std::exception& e) {
      line(false, "schema", e.what(), migrate_fix);
    }
  }
  std::string lacking = p.missing();
  line(lacking.empty(), "privileges",
       "role " + p.role +
           (lacking.empty() ? " can read and mark outbox.events" : " lacks " + lacking),
       "as the owner of schema outbox: GRANT " + config.postgres.relay_role + " TO " + p.role +
           "; (" + config.postgres.relay_role +
           ", postgres.relay_role, made by `outbox-relay migrate`, holds exactly these)");
  if (p.usage && p.select && p.events_exist) {
    try {
      auto row = n.exec1(
          "SELECT (SELECT count(*) FROM outbox.events "
          " WHERE published_at IS NULL AND dead_lettered_at IS NULL), "
          "(SELECT count(*) FROM outbox.events WHERE dead_lettered_at IS NOT NULL)");
      line(true, "outbox",
           row[0].as<std::string>() + " pending, " + row[1].as<std::string>() + " dead-lettered");
    } catch (const std::exception& e) {
      line(false, "outbox", e.what());
    }
  }
  if (p.usage && p.events_exist) {
    // Informational: the relay runs either way (docs/design/how-it-works.md, "The read floor").
    try {
      std::string why;
      line(
          true, "read floor",
          pg::read_floor_premises(n, why) ? "on (reads start above the rows already marked)" : why);
    } catch (const std::exception& e) {
      line(true, "read floor", std::string("off: its premises cannot be read: ") + e.what());
    }
  }
  if (!config.source.tables.empty()) {
    try {
      for (const auto& t : pg::inspect_source_tables(n, source_tables_of(config))) {
        line(t.current(), "source table", t.describe(),
             "run `outbox-relay migrate` with this config (as a role with the TRIGGER privilege "
             "on the table)");
      }
    } catch (const std::exception& e) {
      line(false, "source table", e.what());
    }
  }
  if (config.source.mode == config::SourceMode::replication) {
    try {
      check_replication(n, config.source.replication, line);
    } catch (const std::exception& e) {
      line(false, "replication", e.what(),
           "see the replication section of README.md (wal_level, REPLICATION, publication, "
           "slot)");
    }
  }
}

}  // namespace

int run_check(const config::Config& config) {
  Report line;
  line(true, "config", "valid");
  check_postgres(config, line);
  try {
    kafka::KafkaPublisher publisher(config.kafka);
    auto [brokers, error] = publisher.probe_cluster(10'000);
    line(error.empty(), "kafka reachable",
         error.empty()
             ? config.kafka.bootstrap_servers + " (" + std::to_string(brokers) + " brokers)"
             : config.kafka.bootstrap_servers + ": " + error,
         "check kafka.bootstrap_servers, that this host reaches those brokers, and the "
         "security settings in kafka.properties (security.protocol, sasl.*, ssl.*)");
  } catch (const std::exception& e) {
    line(false, "kafka reachable", e.what(), "check kafka.properties");
  }
  if (config.delivery.guarantee == config::DeliveryGuarantee::exactly_once) {
    // A probe transactional.id of its own: init_transactions would fence a running relay.
    auto problem = kafka::transactions_problem(config.kafka, "outbox-relay-check", 10'000);
    line(!problem.has_value(), "delivery",
         problem ? "exactly_once: the cluster refuses transactions: " + *problem
                 : "exactly_once (Kafka transactions available; checkpoint topic " +
                       config.delivery.checkpoint_topic + ")",
         "the brokers need transaction.state.log.replication.factor and "
         "transaction.state.log.min.isr they can satisfy, and the relay's principal "
         "WRITE/DESCRIBE on its transactional.id");
  } else {
    line(true, "delivery", "at_least_once");
  }
  std::printf("%s\n", line.failures == 0 ? "all checks passed" : "some checks failed");
  return line.failures == 0 ? kOk : kFailure;
}

}  // namespace outbox::cli
