// Is Kafka answering? A lightweight librdkafka handle of its own (the relay's producer
// configuration, never producing), asked for cluster metadata, for readiness and metrics.
// It never touches the publisher's producer, so it cannot race the worker thread.
//
// Thread: one caller at a time (the health monitor's thread).
#pragma once

#include <librdkafka/rdkafka.h>

#include <string>

#include "config/config.h"

namespace outbox::kafka {

class KafkaProbe {
 public:
  //! Throws std::runtime_error when librdkafka refuses the configuration.
  explicit KafkaProbe(const config::KafkaConfig& config);
  ~KafkaProbe();
  KafkaProbe(const KafkaProbe&) = delete;
  KafkaProbe& operator=(const KafkaProbe&) = delete;

  struct Result {
    bool ok = false;
    int brokers = 0;
    std::string error;  //!< librdkafka's reason, when not ok
  };
  //! One metadata request, waiting at most `timeout_ms`.
  Result probe(int timeout_ms);

 private:
  rd_kafka_t* rk_ = nullptr;
};

}  // namespace outbox::kafka
