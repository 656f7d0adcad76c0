// The rules between keys: checked once every key was read (an absent key has its default),
// each reporting at the line of the first key it concerns.
#include <algorithm>

#include "config/kafka_rules.h"
#include "config/key.h"
#include "config/parse_context.h"

namespace outbox::config {

namespace {

void password_file(ParseContext& ctx) {
  const std::string* file = ctx.value("postgres.password_file");
  if (file == nullptr || file->empty()) return;
  int line = ctx.line("postgres.password_file");
  if (ctx.present("postgres.password")) {
    ctx.error("postgres.password_file", line,
              "give either postgres.password or postgres.password_file, not both");
  }
  if (auto secret = ctx.read_secret(*file, "postgres.password_file", line)) {
    ctx.config.postgres.password = *secret;
    ctx.config.postgres.password_file = *file;  // read again at each connection (pg::Conninfo)
  }
}

void roles_differ(ParseContext& ctx) {
  if (ctx.config.postgres.relay_role == ctx.config.postgres.writer_role) {
    ctx.error("postgres.writer_role", ctx.line("postgres.writer_role"),
              "must differ from postgres.relay_role: the relay and the services need different "
              "privileges");
  }
}

void kafka_properties(ParseContext& ctx) {
  for (const MapEntry& e : ctx.entries("kafka.properties")) {
    check_kafka_property(ctx, "kafka.properties." + e.name, e.name, e.value, e.line);
  }
}

void kafka_secret_files(ParseContext& ctx) {
  auto& properties = ctx.config.kafka.properties;
  for (const MapEntry& e : ctx.entries("kafka.secret_files")) {
    std::string key = "kafka.secret_files." + e.name;
    bool twice = std::any_of(properties.begin(), properties.end(),
                             [&](const auto& p) { return p.first == e.name; });
    if (twice) {
      ctx.error(key, e.line, "give kafka.properties." + e.name + " or " + key + ", not both");
    } else if (auto secret = ctx.read_secret(e.value, key, e.line)) {
      check_kafka_property(ctx, key, e.name, *secret, e.line);
      properties.emplace_back(e.name, *secret);
      ctx.config.kafka.secret_files[e.name] = e.value;  // SASL ones read again (kafka/)
    }
  }
}

void shards_polling_only(ParseContext& ctx) {
  const Config& c = ctx.config;
  if (c.source.mode == SourceMode::replication && c.source.polling.shards > 1) {
    ctx.error("source.polling.shards", ctx.line("source.polling.shards"),
              "must be 1 in replication mode (one slot, one relay; see docs/operations/sizing.md, "
              "\"Scaling out\")");
  }
}

void cloudevents_source(ParseContext& ctx) {
  const CloudEventsConfig& ce = ctx.config.message.cloudevents;
  if (ce.enabled && ce.source.empty()) {
    ctx.error("message.cloudevents.enabled", ctx.line("message.cloudevents.enabled"),
              "needs message.cloudevents.source (ce_source: a URI-reference naming the "
              "service, e.g. /orders-service)");
  }
}

void backoff_order(ParseContext& ctx) {
  if (ctx.config.relay.backoff_max < ctx.config.relay.backoff_initial) {
    ctx.error("relay.backoff_max_ms", ctx.line("relay.backoff_max_ms"),
              "must not be smaller than relay.backoff_initial_ms");
  }
}

void dead_lettered_kept_longer(ParseContext& ctx) {
  const RetentionConfig& rc = ctx.config.retention;
  if (rc.dead_lettered_after.count() > 0 && rc.dead_lettered_after < rc.published_after) {
    ctx.error("retention.dead_lettered_after_s", ctx.line("retention.dead_lettered_after_s"),
              "must be 0 (keep them) or at least retention.published_after_s (" +
                  std::to_string(rc.published_after.count()) +
                  "): dead-lettered rows wait for a replay");
  }
}

void exactly_once_alone(ParseContext& ctx) {
  const Config& c = ctx.config;
  if (c.delivery.guarantee == DeliveryGuarantee::exactly_once && c.source.polling.shards > 1) {
    ctx.error("delivery.guarantee", ctx.line("delivery.guarantee"),
              "exactly_once needs one publishing relay (one transactional.id), so not with "
              "source.polling.shards above 1");
  }
}

void transactional_id_unused(ParseContext& ctx) {
  if (ctx.config.delivery.guarantee != DeliveryGuarantee::exactly_once &&
      ctx.present("delivery.transactional_id")) {
    ctx.warnings.push_back("delivery.transactional_id (line " +
                           std::to_string(ctx.line("delivery.transactional_id")) +
                           ") has no effect unless delivery.guarantee is exactly_once");
  }
}

std::vector<Rule> declare_rules() {
  return {
      {{"postgres.password_file", "postgres.password"},
       "The password is given in postgres.password or read from postgres.password_file, not "
       "both; a file that cannot be read is an error.",
       password_file},
      {{"postgres.writer_role", "postgres.relay_role"},
       "postgres.writer_role differs from postgres.relay_role.",
       roles_differ},
      {{"kafka.properties", "kafka.allow_no_hostname_verification",
        "kafka.allow_unverified_certificates"},
       "Each property passes the relay's rules (\"Kafka properties the relay refuses\"), then "
       "librdkafka's own check; a value that may be a secret is never shown in the error.",
       kafka_properties},
      {{"kafka.secret_files", "kafka.properties"},
       "A property is given in kafka.properties or kafka.secret_files, not both; the file's "
       "content passes the same checks as a property.",
       kafka_secret_files},
      {{"source.polling.shards", "source.mode"},
       "source.polling.shards must be 1 in replication mode (one slot, one relay).",
       shards_polling_only},
      {{"message.cloudevents.enabled", "message.cloudevents.source"},
       "message.cloudevents.enabled needs message.cloudevents.source.",
       cloudevents_source},
      {{"relay.backoff_max_ms", "relay.backoff_initial_ms"},
       "relay.backoff_max_ms is not smaller than relay.backoff_initial_ms.",
       backoff_order},
      {{"retention.dead_lettered_after_s", "retention.published_after_s"},
       "retention.dead_lettered_after_s is 0 or at least retention.published_after_s: "
       "dead-lettered rows wait for a replay.",
       dead_lettered_kept_longer},
      {{"delivery.guarantee", "source.polling.shards"},
       "exactly_once needs one publishing relay (one transactional.id): not with "
       "source.polling.shards above 1.",
       exactly_once_alone},
      {{"delivery.transactional_id", "delivery.guarantee"},
       "delivery.transactional_id without exactly_once is a warning: it has no effect.",
       transactional_id_unused},
  };
}

}  // namespace

const std::vector<Rule>& rules() {
  static const std::vector<Rule> table = declare_rules();
  return table;
}

}  // namespace outbox::config
