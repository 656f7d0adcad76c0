// Kafka behind core::Publisher: librdkafka's idempotent producer (enable.idempotence=true,
// acks=all), delivery reports mapped back to the messages of the batch.
//
// Lifecycle: create() (no network I/O yet), publish() from the relay's one worker thread,
// destroy. publish() serves delivery reports itself while it waits, so no report can outlive
// the batch it belongs to: before publish() returns, every message of the batch has had its
// report (purged ones included). After a fatal producer error (idempotence state lost) the
// producer is re-created before the next batch, as librdkafka's INTRODUCTION.md advises.
#pragma once

#include <librdkafka/rdkafka.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"
#include "core/ports.h"

namespace outbox::kafka {

//! librdkafka properties the relay sets before the user's kafka.properties.
std::vector<std::pair<std::string, std::string>> default_properties(
    const config::KafkaConfig& config);

//! The oldest librdkafka the relay runs on: older ones cannot authenticate with SCRAM to a
//! Kafka 4 broker (the nonce is repeated in the client-final message; fixed in 2.6.1).
inline constexpr int kMinLibrdkafkaVersion = 0x020601ff;  // 2.6.1, rd_kafka_version() format

//! Why librdkafka `version` (rd_kafka_version() format; default: the one linked at run time)
//! is too old for the relay, or nullopt when it is recent enough.
std::optional<std::string> librdkafka_version_problem(int version = rd_kafka_version());

//! Whether librdkafka accepts `name`=`value` for a producer; the error text if not.
std::optional<std::string> check_property(const std::string& name, const std::string& value);

class KafkaPublisher : public core::Publisher {
 public:
  //! Throws std::runtime_error when librdkafka refuses the configuration.
  explicit KafkaPublisher(config::KafkaConfig config);
  ~KafkaPublisher() override;
  KafkaPublisher(const KafkaPublisher&) = delete;
  KafkaPublisher& operator=(const KafkaPublisher&) = delete;

  std::vector<core::DeliveryResult> publish(const std::vector<core::Message>& messages,
                                            const std::function<bool()>& give_up) override;

  std::optional<std::string> topic_problem(const std::string& topic) override;

  //! Asks a broker for cluster metadata: the broker count, or the error text.
  std::pair<int, std::string> probe_cluster(int timeout_ms);

 private:
  struct Producer;
  void ensure_producer();

  config::KafkaConfig config_;
  std::unique_ptr<Producer> producer_;
};

}  // namespace outbox::kafka
