// The one place that turns the relay's settings and the user's kafka.properties into a
// librdkafka configuration, for every client the relay makes: the producer (at_least_once
// and exactly_once), the health probe, the checkpoint consumer and the audit's consumer.
//
// The rule (one, for every client):
//  1. `defaults`: what the relay sets and kafka.properties may override (bootstrap.servers,
//     client.id, the producer's idempotence and ordering settings);
//  2. kafka.properties, in order: all of them for a producer; for a consumer, every one that
//     librdkafka does not mark producer-only in its own table (acks, linger.ms,
//     enable.idempotence... make no sense to a consumer; security, addresses, fetch and
//     socket settings do: a consumer reaches the cluster the way the producer does);
//  3. `fixed`: what this client needs to work as the relay uses it (a consumer's
//     isolation.level, no auto commit; exactly_once's transactional settings); it wins.
// A property librdkafka refuses is an error naming it (kafka.properties.NAME when it came
// from there).
#pragma once

#include <librdkafka/rdkafka.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"

namespace outbox::kafka {

enum class ClientKind { producer, consumer };

using Properties = std::vector<std::pair<std::string, std::string>>;

struct ConfDeleter {
  void operator()(rd_kafka_conf_t* c) const { rd_kafka_conf_destroy(c); }
};
using Conf = std::unique_ptr<rd_kafka_conf_t, ConfDeleter>;

//! Whether librdkafka's table of properties marks `name` producer-only ("P", not "C" nor
//! "*"): a consumer does not take it from kafka.properties.
bool is_producer_only_property(const std::string& name);

//! The configuration by the rule above. Throws std::runtime_error naming a refused property.
Conf client_conf(ClientKind kind, const config::KafkaConfig& kafka, const Properties& defaults,
                 const Properties& fixed);

}  // namespace outbox::kafka
