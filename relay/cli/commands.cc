#include "cli/commands.h"

#include <pqxx/pqxx>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <thread>

#include "common/logging.h"
#include "core/batch_relay.h"
#include "core/steady_clock.h"
#include "kafka/kafka_publisher.h"
#include "pg/conninfo.h"
#include "pg/migrations.h"
#include "pg/pg_store.h"
#include "pg/replication_store.h"

namespace outbox::cli {

namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_stop_signal(int) { g_stop.store(true); }

void install_signal_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
}

std::string conninfo_or_exit(const config::Config& config) {
  std::string error;
  auto conninfo = pg::build_conninfo(config.postgres.dsn, config.postgres.password,
                                     config.postgres.connect_timeout_s, &error);
  if (!conninfo) {
    std::fprintf(stderr, "postgres.dsn: %s\n", error.c_str());
    std::exit(kUsage);
  }
  return *conninfo;
}

// Logs what was done every few seconds, so an operator sees the relay move.
class ProgressReporter {
 public:
  explicit ProgressReporter(const core::RelayCounters& counters)
      : counters_(counters), thread_([this] { loop(); }) {}
  ~ProgressReporter() {
    done_ = true;
    thread_.join();
  }

 private:
  void loop() {
    auto log = logging::get("core");
    std::uint64_t last = 0;
    auto last_time = std::chrono::steady_clock::now();
    int ticks = 0;
    while (!done_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (++ticks < 50) continue;  // every 5 s
      ticks = 0;
      std::uint64_t now_count = counters_.published.load();
      auto now = std::chrono::steady_clock::now();
      if (now_count != last) {
        double secs = std::chrono::duration<double>(now - last_time).count();
        log->info(
            "published {} events in the last {:.1f} s ({:.0f}/s), {} in total, {} dead-lettered",
            now_count - last, secs, (now_count - last) / secs, now_count,
            counters_.dead_lettered.load());
      }
      last = now_count;
      last_time = now;
    }
  }
  const core::RelayCounters& counters_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

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

int run_relay(const config::Config& config) {
  auto log = logging::get("cli");
  install_signal_handlers();
  std::string conninfo = conninfo_or_exit(config);
  std::string redacted = pg::redact_dsn(config.postgres.dsn);

  std::unique_ptr<kafka::KafkaPublisher> publisher;
  try {
    publisher = std::make_unique<kafka::KafkaPublisher>(config.kafka);
  } catch (const std::exception& e) {
    log->error("{}", e.what());
    return kUsage;
  }
  core::SteadyClock clock;
  std::unique_ptr<core::OutboxStore> store;
  bool replication = config.source.mode == config::SourceMode::replication;
  if (replication) {
    const config::ReplicationConfig& rc = config.source.replication;
    pg::ReplicationSettings settings;
    settings.slot_name = rc.slot_name;
    settings.publication_name = rc.publication_name;
    settings.create_slot = rc.create_slot;
    settings.create_publication = rc.create_publication;
    settings.status_interval = rc.status_interval;
    settings.heartbeat_interval = rc.heartbeat_interval;
    store = std::make_unique<pg::PgReplicationStore>(conninfo, redacted, settings, clock,
                                                     [] { return g_stop.load(); });
  } else {
    store = std::make_unique<pg::PgOutboxStore>(conninfo, redacted);
  }
  core::BatchRelayOptions options;
  options.batch_size = static_cast<std::size_t>(config.source.polling.batch_size);
  options.batch_max_bytes = static_cast<std::size_t>(config.source.polling.batch_max_bytes);
  options.interval = config.source.polling.interval;
  options.backoff_initial = config.relay.backoff_initial;
  options.backoff_max = config.relay.backoff_max;
  options.shutdown_timeout = config.relay.shutdown_timeout;
  options.topic_map = config.kafka.topic_map;
  core::BatchRelay relay(*store, *publisher, clock, options);

  log->info("outbox-relay starting: mode {}, PostgreSQL {}, Kafka {}",
            replication ? "replication (slot " + config.source.replication.slot_name + ")"
                        : std::string("polling"),
            redacted, config.kafka.bootstrap_servers);
  std::size_t abandoned = 0;
  try {
    ProgressReporter progress(relay.counters());
    abandoned = relay.run(g_stop);
  } catch (const core::FatalError& e) {
    log->error("stopping: {}", e.what());
    return kFailure;
  }
  if (abandoned > 0) {
    log->warn(
        "stopped with {} messages unacknowledged after {} ms; their rows stay pending and "
        "will be sent again (consumers deduplicate by outbox-event-id)",
        abandoned, config.relay.shutdown_timeout.count());
  }
  log->info("outbox-relay stopped: {} events published, {} dead-lettered",
            relay.counters().published.load(), relay.counters().dead_lettered.load());
  return kOk;
}

int run_migrate(const config::Config& config) {
  std::string conninfo = conninfo_or_exit(config);
  try {
    pg::MigrationReport report = pg::migrate(conninfo);
    for (const auto& name : report.applied) std::printf("applied  %s\n", name.c_str());
    for (const auto& name : report.skipped) std::printf("present  %s\n", name.c_str());
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
