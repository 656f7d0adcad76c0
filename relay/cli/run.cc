// `outbox-relay run`: wires the store, the publisher and the relay loop; signals.
#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <functional>
#include <memory>
#include <thread>

#include "cli/commands.h"
#include "common/logging.h"
#include "core/batch_relay.h"
#include "core/steady_clock.h"
#include "http/server.h"
#include "kafka/kafka_publisher.h"
#include "kafka/transactional_publisher.h"
#include "metrics/monitor.h"
#include "metrics/relay_metrics.h"
#include "pg/conninfo.h"
#include "pg/eos_support.h"
#include "pg/pg_store.h"
#include "pg/retention.h"
#include "replication/replication_mode.h"

namespace outbox::cli {

namespace {

std::atomic<bool> g_stop{false};
// Where the replication stream's long server waits report that the loop is alive (health).
std::atomic<core::RelayObserver*> g_tick_target{nullptr};

extern "C" void on_stop_signal(int) { g_stop.store(true); }

void install_signal_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
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

}  // namespace

int run_relay(const config::Config& config) {
  auto log = logging::get("cli");
  install_signal_handlers();
  pg::Conninfo conninfo = pg_conninfo_or_exit(config);
  std::string redacted = pg::redact_dsn(config.postgres.dsn);

  bool eos = config.delivery.guarantee == config::DeliveryGuarantee::exactly_once;
  // at_least_once: the idempotent producer, created now so that a refused kafka.properties
  // stops the relay at once (exactly_once: the transactional producer, below).
  core::SteadyClock clock;
  std::unique_ptr<kafka::KafkaPublisher> publisher;
  if (!eos) {
    try {
      publisher = std::make_unique<kafka::KafkaPublisher>(config.kafka, &clock);
    } catch (const std::exception& e) {
      log->error("{}", e.what());
      return kUsage;
    }
  }
  // The store, seen by the loop as core::OutboxStore and by metrics and retention as
  // core::Leadership (sharded polling: its shards too).
  std::unique_ptr<pg::PgOutboxStore> polling_store;
  std::unique_ptr<replication::ReplicationMode> replication_mode;
  core::OutboxStore* store = nullptr;
  const core::Leadership* leadership = nullptr;
  bool replication = config.source.mode == config::SourceMode::replication;
  if (replication) {
    const config::ReplicationConfig& rc = config.source.replication;
    replication::ReplicationSettings settings;
    settings.slot_name = rc.slot_name;
    settings.publication_name = rc.publication_name;
    settings.create_slot = rc.create_slot;
    settings.create_publication = rc.create_publication;
    settings.status_interval = rc.status_interval;
    settings.heartbeat_interval = rc.heartbeat_interval;
    settings.waiting = [] {
      if (core::RelayObserver* o = g_tick_target.load()) o->on_tick();
    };
    settings.visibility_waiting = [](std::chrono::nanoseconds waited) {
      if (core::RelayObserver* o = g_tick_target.load()) o->on_visibility_wait(waited);
    };
    replication_mode = std::make_unique<replication::ReplicationMode>(
        conninfo, redacted, settings, clock, [] { return g_stop.load(); });
    store = &replication_mode->store();
    leadership = &replication_mode->leadership();
  } else {
    pg::ShardSettings shards;
    shards.shards = config.source.polling.shards;
    shards.rebalance_interval = config.source.polling.shards_rebalance_interval;
    polling_store = std::make_unique<pg::PgOutboxStore>(conninfo, redacted, clock, shards);
    store = polling_store.get();
    leadership = polling_store.get();
  }
  core::BatchRelayOptions options;
  options.batch_size = static_cast<std::size_t>(config.source.polling.batch_size);
  options.batch_max_bytes = static_cast<std::size_t>(config.source.polling.batch_max_bytes);
  options.interval = config.source.polling.interval;
  options.backoff_initial = config.relay.backoff_initial;
  options.backoff_max = config.relay.backoff_max;
  options.shutdown_timeout = config.relay.shutdown_timeout;
  options.topic_map = config.kafka.topic_map;
  options.format.topic_template = config.message.topic_template;
  options.format.id_header = config.message.id_header;
  options.format.json_string_key = config.message.json_string_key;
  options.format.json_string_value = config.message.json_string_value;
  if (config.message.cloudevents.enabled) {
    options.format.cloudevents = core::CloudEventsFormat{config.message.cloudevents.source,
                                                         config.message.cloudevents.type_header,
                                                         config.message.cloudevents.content_type};
  }
  options.max_in_flight_rows = static_cast<std::size_t>(config.source.pipeline.max_in_flight_rows);
  options.max_in_flight_bytes =
      static_cast<std::size_t>(config.source.pipeline.max_in_flight_bytes);
  // One loop; delivery.guarantee: exactly_once gives it the transactional producer and the
  // recovery's marker.
  std::unique_ptr<kafka::TransactionalKafkaPublisher> txn_publisher;
  std::unique_ptr<pg::PgRecoveryMarker> marker;
  std::unique_ptr<core::BatchRelay> relay;
  if (eos) {
    kafka::TransactionalSettings ts;
    ts.transactional_id = config.delivery.transactional_id;
    ts.checkpoint_topic = config.delivery.checkpoint_topic;
    ts.transaction_timeout = config.delivery.transaction_timeout;
    core::Backoff id_backoff(config.relay.backoff_initial, config.relay.backoff_max);
    while (ts.transactional_id.empty() && !g_stop.load()) {
      try {
        ts.transactional_id = pg::default_transactional_id(
            conninfo.current(),
            replication ? "replication:" + config.source.replication.slot_name : "polling");
      } catch (const core::UnavailableError& e) {
        auto pause = id_backoff.next();
        log->warn("exactly_once: cannot derive the transactional.id yet ({}); retrying in {} ms",
                  e.what(), pause.count());
        clock.sleep_for(pause, [] { return g_stop.load(); });
      } catch (const core::FatalError& e) {
        log->error("{}", e.what());
        return kFailure;
      }
    }
    if (g_stop.load()) return kOk;
    log->info("delivery: exactly_once, transactional.id {}, checkpoint topic {}",
              ts.transactional_id, ts.checkpoint_topic);
    txn_publisher = std::make_unique<kafka::TransactionalKafkaPublisher>(config.kafka, ts, &clock);
    marker = std::make_unique<pg::PgRecoveryMarker>(conninfo, redacted);
    relay = std::make_unique<core::BatchRelay>(*store, *txn_publisher, *marker, clock, options);
  } else {
    relay = std::make_unique<core::BatchRelay>(*store, *publisher, clock, options);
  }
  const core::RelayCounters& counters = relay->counters();

  // Metrics and health: the observer, the monitor's threads, the HTTP endpoint.
  metrics::Registry registry;
  metrics::RelayMetricsOptions metrics_options;
  metrics_options.version = OUTBOX_RELAY_VERSION;
  metrics_options.librdkafka_version = rd_kafka_version_str();
  metrics_options.mode = replication ? "replication" : "polling";
  metrics::RelayMetrics relay_metrics(registry, metrics_options);
  relay_metrics.set_role_source(
      [leadership] { return static_cast<metrics::Role>(static_cast<int>(leadership->role())); });
  relay->set_observer(&relay_metrics);
  g_tick_target = &relay_metrics;
  struct TickTargetReset {  // before relay_metrics goes
    ~TickTargetReset() { g_tick_target = nullptr; }
  } tick_target_reset;
  std::unique_ptr<metrics::Monitor> monitor;
  std::unique_ptr<http::Server> http_server;
  try {
    metrics::MonitorOptions monitor_options;
    monitor_options.conninfo = conninfo;
    monitor_options.redacted = redacted;
    monitor_options.kafka = config.kafka;
    monitor_options.replication = replication;
    monitor_options.slot_name = config.source.replication.slot_name;
    monitor_options.interval = config.http.stats_interval;
    monitor = std::make_unique<metrics::Monitor>(monitor_options, relay_metrics);
    if (config.http.enabled) {
      http::Handlers handlers;
      handlers.metrics = [&relay_metrics] { return relay_metrics.expose(); };
      if (config.source.polling.shards > 1 && !replication) {  // scale-out: the shards held
        pg::PgOutboxStore* sharded = polling_store.get();
        auto& held =
            registry.gauge("outbox_relay_shards_held",
                           "Shards this relay holds and publishes (source.polling.shards)");
        auto& members = registry.gauge("outbox_relay_shard_members",
                                       "Relays sharing the shards, this one included");
        handlers.metrics = [&relay_metrics, sharded, &held, &members] {
          held.set(sharded->shards_held());
          members.set(sharded->shard_members());
          return relay_metrics.expose();
        };
      }
      handlers.healthy = [&relay_metrics] { return relay_metrics.healthy(); };
      handlers.not_ready = [&relay_metrics] { return relay_metrics.not_ready_reason(); };
      http_server = std::make_unique<http::Server>(config.http.address, config.http.port, handlers);
    }
  } catch (const std::exception& e) {
    log->error("{}", e.what());
    return kFailure;
  }
  // Retention: its own thread and connection, deleting only while this process leads.
  std::unique_ptr<pg::Retention> retention;
  if (config.retention.enabled) {
    // Only while this process leads (sharded: holds shard 0).
    std::function<bool()> leads = [leadership] { return leadership->runs_chores(); };
    pg::RetentionSettings rs;
    rs.published_after = config.retention.published_after;
    rs.dead_lettered_after = config.retention.dead_lettered_after;
    rs.interval = config.retention.interval;
    rs.batch_size = config.retention.batch_size;
    retention = std::make_unique<pg::Retention>(
        conninfo, redacted, rs, std::move(leads), [] { return g_stop.load(); }, clock);
    retention->start();
  }

  log->info("outbox-relay starting: mode {}, PostgreSQL {}, Kafka {}",
            replication ? "replication (slot " + config.source.replication.slot_name + ")"
            : config.source.polling.shards > 1
                ? "polling (" + std::to_string(config.source.polling.shards) + " shards)"
                : std::string("polling"),
            redacted, config.kafka.bootstrap_servers);
  std::size_t abandoned = 0;
  try {
    ProgressReporter progress(counters);
    abandoned = relay->run(g_stop);
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
            counters.published.load(), counters.dead_lettered.load());
  return kOk;
}

}  // namespace outbox::cli
