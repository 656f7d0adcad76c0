// The relay's own rules on librdkafka properties (kafka.properties, kafka.secret_files):
// properties the relay's promises depend on, where refusing beats a silent downgrade. The
// injected librdkafka check (ParseOptions::kafka_check) runs after them.
#include "config/kafka_rules.h"

#include "config/key.h"
#include "config/parse_context.h"

namespace outbox::config {

namespace {

std::vector<PropertyRule> declare_property_rules() {
  return {
      {{"enable.idempotence"},
       "true",
       [](const std::string& v, const Config&) { return v != "true"; },
       "must stay true: without the idempotent producer a retried send can duplicate or "
       "reorder events of one key"},
      {{"acks", "request.required.acks"},
       "all or -1",
       [](const std::string& v, const Config&) { return v != "all" && v != "-1"; },
       "must stay all: a row is marked published only once every in-sync replica has it"},
      {{"bootstrap.servers", "metadata.broker.list"},
       "nothing",
       [](const std::string&, const Config&) { return true; },
       "set kafka.bootstrap_servers instead"},
      {{"message.timeout.ms", "delivery.timeout.ms"},
       "0",
       [](const std::string& v, const Config&) { return v != "0"; },
       "must stay 0 (no timeout): a message that timed out while later ones of its partition "
       "succeeded would be sent again after them, out of key order. The relay waits for "
       "Kafka, and gives up only at shutdown (relay.shutdown_timeout_ms)"},
      {{"enable.gapless.guarantee"},
       "true",
       [](const std::string& v, const Config&) { return v != "true"; },
       "must stay true: a gap in a partition would be filled by a re-send out of key order"},
      // (found by trying it as a user would) every other partitioner hashes the key when
      // there is one.
      {{"partitioner"},
       "anything but random",
       [](const std::string& v, const Config&) { return v == "random"; },
       "random ignores the message key: one key's events would land on different partitions, "
       "so per-key order would not hold. Use the default (consistent_random) or "
       "murmur2_random (the Java client's)"},
      {{"transactional.id"},
       "nothing",
       [](const std::string&, const Config&) { return true; },
       "is set by the relay: use delivery.guarantee: exactly_once (and "
       "delivery.transactional_id to choose it)"},
      {{"ssl.endpoint.identification.algorithm"},
       "none only with kafka.allow_no_hostname_verification: true",
       [](const std::string& v, const Config& c) {
         return v == "none" && !c.kafka.allow_no_hostname_verification;
       },
       "none turns off the check that the broker's certificate names the host connected to: "
       "any server with a certificate from a trusted CA could pose as the broker. Set "
       "kafka.allow_no_hostname_verification: true to accept this"},
      {{"enable.ssl.certificate.verification"},
       "false only with kafka.allow_unverified_certificates: true",
       [](const std::string& v, const Config& c) {
         return v == "false" && !c.kafka.allow_unverified_certificates;
       },
       "false accepts any certificate, so anyone on the network path can pose as the broker. "
       "Set kafka.allow_unverified_certificates: true to accept this"},
  };
}

}  // namespace

const std::vector<PropertyRule>& property_rules() {
  static const std::vector<PropertyRule> table = declare_property_rules();
  return table;
}

void check_kafka_property(ParseContext& ctx, const std::string& key, const std::string& name,
                          const std::string& value, int line) {
  for (const PropertyRule& rule : property_rules()) {
    for (const std::string& n : rule.names) {
      if (n == name && rule.refused(value, ctx.config)) {
        ctx.error(key, line, rule.message);
        return;  // one error per property: librdkafka's check is not asked as well
      }
    }
  }
  if (!ctx.options().kafka_check) return;
  if (auto problem = ctx.options().kafka_check(name, value)) {
    // librdkafka quotes a refused value: never show one that may be a secret.
    bool secret =
        key.rfind("kafka.secret_files.", 0) == 0 || name.find("password") != std::string::npos ||
        name.find("secret") != std::string::npos || name.find(".pem") != std::string::npos;
    for (std::size_t at;
         secret && !value.empty() && (at = problem->find(value)) != std::string::npos;) {
      problem->replace(at, value.size(), "(hidden)");
    }
    ctx.error(key, line, *problem);
  }
}

}  // namespace outbox::config
