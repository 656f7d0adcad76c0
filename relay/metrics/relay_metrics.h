// The relay's metrics and health: a core::RelayObserver feeding the registry, plus the state
// the health monitor (metrics/monitor.h) measures. Read by the HTTP thread (/metrics,
// /healthz, /readyz) while the worker thread reports: every member is thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "core/observer.h"
#include "metrics/registry.h"

namespace outbox::metrics {

//! The relay's session as pg::SessionRole numbers it (0 disconnected, 1 standby, 2 leader).
enum class Role : int { disconnected = 0, standby = 1, leader = 2 };

struct RelayMetricsOptions {
  //! At most this many topic label values; the others are counted under "other".
  std::size_t max_topic_labels = 50;
  //! /healthz fails when the loop has not ticked for this long.
  std::chrono::seconds stuck_after{60};
  std::string version;             //!< build info
  std::string librdkafka_version;  //!< build info
  std::string mode;                //!< polling or replication
  //! Time source (tests); default std::chrono::steady_clock::now.
  std::function<std::chrono::steady_clock::time_point()> now;
};

class RelayMetrics : public core::RelayObserver {
 public:
  RelayMetrics(Registry& registry, RelayMetricsOptions options);

  // core::RelayObserver, from the worker thread.
  void on_tick() noexcept override;
  void on_read(std::size_t rows, std::size_t bytes,
               std::chrono::nanoseconds took) noexcept override;
  void on_delivery(const std::string& topic, bool ok, core::FailureKind kind,
                   std::chrono::nanoseconds took) noexcept override;
  void on_recorded(std::size_t published, std::size_t retried, std::size_t dead_lettered,
                   std::chrono::nanoseconds took) noexcept override;
  void on_dead_lettered(const std::string& topic, std::size_t n) noexcept override;
  void on_vanished(std::size_t n) noexcept override;
  void on_topic_blocked(const std::string& topic, bool blocked) noexcept override;
  void on_failure(const std::string& what) noexcept override;
  void on_kafka_ok() noexcept override;
  void on_visibility_wait(std::chrono::nanoseconds waited) noexcept override;

  // From the health monitor.
  //! Where the store's session stands, asked at every scrape and readiness check.
  void set_role_source(std::function<Role()> source);
  void set_postgres(bool up, const std::string& error);
  void set_kafka(bool up, const std::string& error);
  void set_outbox(double pending, double oldest_pending_age_s, double dead_lettered);
  //! Replication mode: the slot's retained WAL and confirmed lag, in bytes.
  void set_slot(double retained_wal_bytes, double confirmed_lag_bytes);

  //! The exposition text, role gauges refreshed first.
  std::string expose();
  //! /healthz: the loop ticked within stuck_after (counted from construction until the
  //! first tick, which comes before any I/O).
  bool healthy() const;
  //! /readyz: nullopt when ready, else the one-line reason.
  std::optional<std::string> not_ready_reason() const;

 private:
  std::string topic_label(const std::string& topic);
  Role role() const;
  void refresh_role();

  Registry& registry_;
  RelayMetricsOptions options_;
  std::function<std::chrono::steady_clock::time_point()> now_;
  const std::chrono::steady_clock::time_point started_;
  std::atomic<std::chrono::steady_clock::rep> last_tick_;

  Counter& published_;
  Counter& retried_;
  Counter& vanished_;
  Counter& failed_transient_;
  Counter& failed_topic_;
  Counter& failed_suspect_;
  Counter& failed_row_;
  Histogram& batch_rows_;
  Histogram& batch_bytes_;
  Histogram& read_seconds_;
  Histogram& publish_seconds_;
  Histogram& mark_seconds_;
  Gauge& blocked_topics_;
  Gauge& pending_;
  Gauge& oldest_age_;
  Gauge& dead_lettered_rows_;
  Gauge& postgres_up_;
  Gauge& kafka_up_;
  Gauge& role_leader_;
  Gauge& role_standby_;
  Gauge& role_disconnected_;
  Gauge& tick_age_;
  Gauge* slot_retained_ = nullptr;
  Gauge* slot_lag_ = nullptr;
  Gauge* visibility_wait_ = nullptr;

  mutable std::mutex mutex_;  // guards what follows
  std::set<std::string> topic_labels_;
  std::set<std::string> blocked_;
  std::function<Role()> role_source_;
  std::optional<bool> postgres_ok_;
  std::string postgres_error_;
  std::optional<bool> kafka_ok_;
  std::string kafka_error_;
  std::optional<std::string> failing_;  //!< the loop's last failure, until it succeeds again
};

}  // namespace outbox::metrics
