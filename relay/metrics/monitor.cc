#include "metrics/monitor.h"

#include <pqxx/pqxx>

#include <algorithm>

#include "common/logging.h"
#include "kafka/kafka_probe.h"
#include "pg/stats.h"

namespace outbox::metrics {

struct Monitor::Kafka {
  explicit Kafka(const config::KafkaConfig& config) : probe(config) {}
  kafka::KafkaProbe probe;
};

Monitor::Monitor(MonitorOptions options, RelayMetrics& metrics)
    : options_(std::move(options)),
      metrics_(metrics),
      kafka_(std::make_unique<Kafka>(options_.kafka)),
      postgres_thread_([this] { postgres_loop(); }),
      kafka_thread_([this] { kafka_loop(); }) {}

Monitor::~Monitor() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  postgres_thread_.join();
  kafka_thread_.join();
}

bool Monitor::pause() {
  std::unique_lock lock(mutex_);
  return !wake_.wait_for(lock, options_.interval, [this] { return stop_; });
}

namespace {

// 5 s, or the role's or dsn's statement_timeout when it is shorter.
constexpr const char* kMonitorTimeoutSql =
    "SELECT set_config('statement_timeout', CASE WHEN setting::bigint BETWEEN 1 AND 4999 "
    "THEN setting ELSE '5000' END, false) FROM pg_settings WHERE name = 'statement_timeout'";

std::string one_line(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

bool is_statement_timeout(const std::exception& e) {
  const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e);
  return sql != nullptr && sql->sqlstate() == "57014";  // query_canceled
}

}  // namespace

void Monitor::postgres_loop() {
  auto log = logging::get("metrics");
  std::unique_ptr<pqxx::connection> conn;
  bool was_up = true;  // log the first failure too
  bool timed_out = false;
  do {
    try {
      if (!conn) {
        conn = std::make_unique<pqxx::connection>(options_.conninfo.current());
        pqxx::nontransaction n(*conn);
        n.exec(kMonitorTimeoutSql);
        n.exec("SET application_name = 'outbox-relay-monitor'");
      }
      // A gauge's query that runs past statement_timeout (a lock held on outbox.events, a
      // server too busy) is a slow gauge, not an unreachable PostgreSQL: the server answered.
      // The gauge keeps its last value and the timeout is logged; readiness is not touched.
      bool slow = false;
      std::string slow_reason;
      auto gauge = [&](const auto& read) {
        try {
          pqxx::nontransaction n(*conn);
          read(n);
        } catch (const std::exception& e) {
          if (!is_statement_timeout(e) || !conn->is_open()) throw;
          slow = true;
          slow_reason = e.what();
        }
      };
      gauge([&](pqxx::nontransaction& n) {
        pg::OutboxStats stats = pg::read_outbox_stats(n);
        metrics_.set_outbox(static_cast<double>(stats.pending), stats.oldest_pending_age_s,
                            static_cast<double>(stats.dead_lettered));
      });
      if (options_.replication) {
        gauge([&](pqxx::nontransaction& n) {
          if (auto slot = pg::read_slot_stats(n, options_.slot_name)) {
            metrics_.set_slot(static_cast<double>(slot->retained_wal_bytes.value_or(0)),
                              static_cast<double>(slot->confirmed_lag_bytes.value_or(0)));
          }
        });
      }
      metrics_.set_postgres(true, "");
      if (!was_up) log->info("monitor: PostgreSQL answers again ({})", options_.redacted);
      was_up = true;
      if (slow && !timed_out) {
        log->warn(
            "monitor: a gauge query ran past statement_timeout ({}); the gauges keep their last "
            "values until it answers in time (PostgreSQL answers: not a readiness failure)",
            one_line(slow_reason));
      } else if (!slow && timed_out) {
        log->info("monitor: the gauge queries answer in time again");
      }
      timed_out = slow;
    } catch (const std::exception& e) {
      conn.reset();
      metrics_.set_postgres(false, e.what());
      if (was_up) {
        log->warn("monitor: PostgreSQL unreachable ({}): {}", options_.redacted, e.what());
      }
      was_up = false;
    }
  } while (pause());
}

void Monitor::kafka_loop() {
  auto log = logging::get("kafka");
  // Short enough for a prompt stop, long enough for a broker across a slow network.
  int timeout_ms = static_cast<int>(std::clamp<long long>(options_.interval.count(), 1000, 5000));
  std::optional<bool> was_up;
  do {
    kafka::KafkaProbe::Result r = kafka_->probe.probe(timeout_ms);
    metrics_.set_kafka(r.ok, r.error);
    if (r.ok && was_up != true) {
      log->info("Kafka {} ({}, {} brokers)", was_up ? "reachable again" : "reachable",
                options_.kafka.bootstrap_servers, r.brokers);
    } else if (!r.ok && was_up != false) {
      log->warn("Kafka unreachable ({}): {}; the relay is not ready until a broker answers",
                options_.kafka.bootstrap_servers, r.error);
    }
    was_up = r.ok;
  } while (pause());
}

}  // namespace outbox::metrics
