// The health monitor of `run`: two threads of its own, so the worker thread never waits on
// them and they never touch its connections.
// - PostgreSQL: every `interval`, on a session of its own (no leader lock), the outbox
//   counts and the oldest pending age (pg/stats.h), the slot in replication mode.
// - Kafka: every `interval`, a metadata request on a librdkafka handle of its own
//   (kafka/kafka_probe.h). Kafka becoming unreachable is logged at warn with the reason
//   (a relay pointed at a wrong broker says so even while idle), reachable again at info.
// Both feed RelayMetrics (gauges, readiness). Stops (joins) in the destructor.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "config/config.h"
#include "metrics/relay_metrics.h"
#include "pg/conninfo.h"

namespace outbox::metrics {

struct MonitorOptions {
  pg::Conninfo conninfo{""};  //!< as the store's (built again at each connection)
  std::string redacted;       //!< for logs
  config::KafkaConfig kafka;
  bool replication = false;
  std::string slot_name;
  std::chrono::milliseconds interval{10'000};
};

class Monitor {
 public:
  //! Starts both threads; throws std::runtime_error when librdkafka refuses the config.
  Monitor(MonitorOptions options, RelayMetrics& metrics);
  ~Monitor();
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

 private:
  void postgres_loop();
  void kafka_loop();
  //! Waits `interval` or until stopped; false when stopped.
  bool pause();

  MonitorOptions options_;
  RelayMetrics& metrics_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  struct Kafka;
  std::unique_ptr<Kafka> kafka_;
  std::thread postgres_thread_;
  std::thread kafka_thread_;
};

}  // namespace outbox::metrics
