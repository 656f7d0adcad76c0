#include "metrics/relay_metrics.h"

#include <ctime>

#include "common/one_line.h"

namespace outbox::metrics {

namespace {

double seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

// 1 ms .. about 33 s, doubling: Kafka's acknowledgements and PostgreSQL's marks.
std::vector<double> latency_buckets() { return exponential_buckets(0.001, 2, 16); }

Labels role_label(const char* role) { return {{"role", role}}; }
Labels kind_label(const char* kind) { return {{"reason", kind}}; }

constexpr const char* kFailedHelp =
    "Messages Kafka did not acknowledge, by reason: transient (broker or network, retried), "
    "topic_blocked (the topic cannot take messages now; the rows wait), suspect (refused in a "
    "batch, sent again alone), permanent (proven the row's own; dead-lettered).";
constexpr const char* kDeadLetteredHelp =
    "Rows dead-lettered, by row topic (the first topics seen, 50 at most; the rest under "
    "\"other\").";
constexpr const char* kRoleHelp =
    "1 for the relay's current PostgreSQL session role: leader (holds the leader lock and "
    "publishes), standby (another relay leads), disconnected.";

}  // namespace

RelayMetrics::RelayMetrics(Registry& registry, RelayMetricsOptions options)
    : registry_(registry),
      options_(std::move(options)),
      now_(options_.now ? options_.now : [] { return std::chrono::steady_clock::now(); }),
      started_(now_()),
      last_tick_(started_.time_since_epoch().count()),
      published_(registry.counter("outbox_relay_events_published_total",
                                  "Events Kafka acknowledged and the relay marked published.")),
      retried_(registry.counter(
          "outbox_relay_events_retried_total",
          "Failed deliveries recorded on their row (attempts and last_error) to be retried.")),
      vanished_(registry.counter(
          "outbox_relay_rows_vanished_total",
          "Rows gone when their outcome was recorded (deleted, or the database went back in "
          "time): logged with event id and topic, listed in outbox.vanished and by `audit`.")),
      failed_transient_(registry.counter("outbox_relay_events_failed_total", kFailedHelp,
                                         kind_label("transient"))),
      failed_topic_(registry.counter("outbox_relay_events_failed_total", kFailedHelp,
                                     kind_label("topic_blocked"))),
      failed_suspect_(
          registry.counter("outbox_relay_events_failed_total", kFailedHelp, kind_label("suspect"))),
      failed_row_(registry.counter("outbox_relay_events_failed_total", kFailedHelp,
                                   kind_label("permanent"))),
      batch_rows_(registry.histogram(
          "outbox_relay_batch_size", "Rows per batch read from PostgreSQL (empty reads excluded).",
          {1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000, 100000})),
      batch_bytes_(
          registry.histogram("outbox_relay_batch_bytes",
                             "Payload + key + headers bytes per batch read (empty reads excluded).",
                             exponential_buckets(1024, 4, 12))),
      read_seconds_(registry.histogram("outbox_relay_read_duration_seconds",
                                       "Time to read one batch of pending rows (empty reads "
                                       "excluded).",
                                       latency_buckets())),
      publish_seconds_(registry.histogram(
          "outbox_relay_publish_duration_seconds",
          "Time from handing a message to the Kafka producer to its delivery report.",
          latency_buckets())),
      mark_seconds_(registry.histogram(
          "outbox_relay_mark_duration_seconds",
          "Time to record a batch's outcome in PostgreSQL (mark published, retried, "
          "dead-lettered).",
          latency_buckets())),
      blocked_topics_(registry.gauge("outbox_relay_blocked_topics",
                                     "Row topics waiting because their Kafka topic cannot take "
                                     "messages (unknown topic, no permission, a policy).")),
      pending_(registry.gauge("outbox_relay_pending_events",
                              "Rows of outbox.events neither published nor dead-lettered "
                              "(measured every http.stats_interval_ms).")),
      oldest_age_(
          registry.gauge("outbox_relay_oldest_pending_age_seconds",
                         "Age of the oldest pending row (created_at), 0 when none is pending.")),
      dead_lettered_rows_(registry.gauge("outbox_relay_dead_lettered_events",
                                         "Dead-lettered rows in outbox.events now.")),
      postgres_up_(registry.gauge(
          "outbox_relay_postgres_up",
          "1 when the relay's monitoring session reached PostgreSQL at its last query.")),
      kafka_up_(registry.gauge("outbox_relay_kafka_up",
                               "1 when a Kafka broker answered the last metadata request.")),
      role_leader_(registry.gauge("outbox_relay_role", kRoleHelp, role_label("leader"))),
      role_standby_(registry.gauge("outbox_relay_role", kRoleHelp, role_label("standby"))),
      role_disconnected_(
          registry.gauge("outbox_relay_role", kRoleHelp, role_label("disconnected"))),
      tick_age_(registry.gauge("outbox_relay_loop_tick_age_seconds",
                               "Seconds since the relay loop last ticked (/healthz fails above "
                               "60); it ticks at least every second, whatever it waits on.")) {
  if (options_.mode == "replication") {
    slot_retained_ = &registry.gauge(
        "outbox_relay_replication_slot_retained_wal_bytes",
        "WAL the replication slot keeps on the server (current position - restart_lsn).");
    slot_lag_ =
        &registry.gauge("outbox_relay_replication_slot_confirmed_lag_bytes",
                        "WAL written since the slot's confirmed position (current position - "
                        "confirmed_flush_lsn).");
    visibility_wait_ = &registry.gauge(
        "outbox_relay_replication_visibility_wait_seconds",
        "How long the relay has waited for committed transactions that other sessions do not "
        "see yet (a synchronous standby's wait); 0 when it waits for none.");
  }
  registry
      .gauge("outbox_relay_build_info", "Always 1; the labels tell the build.",
             {{"version", options_.version},
              {"librdkafka_version", options_.librdkafka_version},
              {"mode", options_.mode}})
      .set(1);
  registry
      .gauge("outbox_relay_process_start_time_seconds",
             "When the relay process started, in seconds since the Unix epoch.")
      .set(static_cast<double>(std::time(nullptr)));
  // Always present, so that an alert on the label finds it at 0 before the first one.
  registry.counter("outbox_relay_events_dead_lettered_total", kDeadLetteredHelp,
                   {{"topic", "other"}});
  refresh_role();
}

void RelayMetrics::on_visibility_wait(std::chrono::nanoseconds waited) noexcept {
  if (visibility_wait_ != nullptr)
    visibility_wait_->set(std::chrono::duration<double>(waited).count());
}

void RelayMetrics::on_tick() noexcept {
  last_tick_.store(now_().time_since_epoch().count(), std::memory_order_relaxed);
}

void RelayMetrics::on_read(std::size_t rows, std::size_t bytes,
                           std::chrono::nanoseconds took) noexcept {
  if (rows == 0) {  // an idle read: PostgreSQL answers and nothing waits for Kafka
    std::lock_guard lock(mutex_);
    failing_.reset();
    return;
  }
  batch_rows_.observe(static_cast<double>(rows));
  batch_bytes_.observe(static_cast<double>(bytes));
  read_seconds_.observe(seconds(took));
}

void RelayMetrics::on_delivery(const std::string&, bool ok, core::FailureKind kind,
                               std::chrono::nanoseconds took) noexcept {
  publish_seconds_.observe(seconds(took));
  if (ok) return;
  switch (kind) {
    case core::FailureKind::transient:
      failed_transient_.inc();
      break;
    case core::FailureKind::topic_blocked:
      failed_topic_.inc();
      break;
    case core::FailureKind::suspect:
      failed_suspect_.inc();
      break;
    case core::FailureKind::permanent:
      failed_row_.inc();
      break;
  }
}

void RelayMetrics::on_recorded(std::size_t published, std::size_t retried, std::size_t,
                               std::chrono::nanoseconds took) noexcept {
  published_.inc(published);
  retried_.inc(retried);
  mark_seconds_.observe(seconds(took));
  if (published > 0) {
    std::lock_guard lock(mutex_);
    failing_.reset();
  }
}

std::string RelayMetrics::topic_label(const std::string& topic) {
  std::lock_guard lock(mutex_);
  if (topic_labels_.count(topic) > 0) return topic;
  if (topic_labels_.size() >= options_.max_topic_labels) return "other";
  topic_labels_.insert(topic);
  return topic;
}

void RelayMetrics::on_vanished(std::size_t n) noexcept { vanished_.inc(n); }

void RelayMetrics::on_dead_lettered(const std::string& topic, std::size_t n) noexcept {
  try {
    registry_
        .counter("outbox_relay_events_dead_lettered_total", kDeadLetteredHelp,
                 {{"topic", topic_label(topic)}})
        .inc(n);
  } catch (...) {  // allocation failure: a metric is not worth the loop
  }
}

void RelayMetrics::on_topic_blocked(const std::string& topic, bool blocked) noexcept {
  try {
    std::lock_guard lock(mutex_);
    if (blocked) {
      blocked_.insert(topic);
    } else {
      blocked_.erase(topic);
    }
    blocked_topics_.set(static_cast<double>(blocked_.size()));
  } catch (...) {
  }
}

void RelayMetrics::on_failure(const std::string& what) noexcept {
  try {
    std::lock_guard lock(mutex_);
    failing_ = common::one_line(what);
  } catch (...) {
  }
}

void RelayMetrics::on_kafka_ok() noexcept {}

void RelayMetrics::set_role_source(std::function<Role()> source) {
  {
    std::lock_guard lock(mutex_);
    role_source_ = std::move(source);
  }
  refresh_role();
}

Role RelayMetrics::role() const {
  std::lock_guard lock(mutex_);
  return role_source_ ? role_source_() : Role::disconnected;
}

void RelayMetrics::refresh_role() {
  Role r = role();
  role_leader_.set(r == Role::leader ? 1 : 0);
  role_standby_.set(r == Role::standby ? 1 : 0);
  role_disconnected_.set(r == Role::disconnected ? 1 : 0);
  auto last = std::chrono::steady_clock::time_point(
      std::chrono::steady_clock::duration(last_tick_.load(std::memory_order_relaxed)));
  tick_age_.set(std::chrono::duration<double>(now_() - last).count());
}

void RelayMetrics::set_postgres(bool up, const std::string& error) {
  postgres_up_.set(up ? 1 : 0);
  std::lock_guard lock(mutex_);
  postgres_ok_ = up;
  postgres_error_ = common::one_line(error);
}

void RelayMetrics::set_kafka(bool up, const std::string& error) {
  kafka_up_.set(up ? 1 : 0);
  std::lock_guard lock(mutex_);
  kafka_ok_ = up;
  kafka_error_ = common::one_line(error);
}

void RelayMetrics::set_outbox(double pending, double oldest_pending_age_s, double dead_lettered) {
  pending_.set(pending);
  oldest_age_.set(oldest_pending_age_s);
  dead_lettered_rows_.set(dead_lettered);
}

void RelayMetrics::set_slot(double retained_wal_bytes, double confirmed_lag_bytes) {
  if (slot_retained_) slot_retained_->set(retained_wal_bytes);
  if (slot_lag_) slot_lag_->set(confirmed_lag_bytes);
}

std::string RelayMetrics::expose() {
  refresh_role();
  return registry_.expose();
}

bool RelayMetrics::healthy() const {
  auto last = std::chrono::steady_clock::time_point(
      std::chrono::steady_clock::duration(last_tick_.load(std::memory_order_relaxed)));
  return now_() - last < options_.stuck_after;
}

std::optional<std::string> RelayMetrics::not_ready_reason() const {
  Role r = role();
  std::lock_guard lock(mutex_);
  if (!postgres_ok_) return "PostgreSQL not checked yet";
  if (!*postgres_ok_) return "PostgreSQL unreachable: " + postgres_error_;
  if (!kafka_ok_) return "Kafka not checked yet";
  if (!*kafka_ok_) return "Kafka unreachable: " + kafka_error_;
  switch (r) {
    case Role::standby:
      return std::nullopt;
    case Role::leader:
      if (failing_) return "leader, not publishing: " + *failing_;
      return std::nullopt;
    case Role::disconnected:
      break;
  }
  return failing_ ? "no PostgreSQL session: " + *failing_
                  : std::string("no PostgreSQL session yet");
}

}  // namespace outbox::metrics
