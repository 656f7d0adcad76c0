// Every configuration key, declared once: name, type and default (from the field of Config
// it is bound to), accepted values, description. The parser, the unknown-key errors,
// relay/config/example.yaml and docs/reference/configuration.md all come from this table;
// relay/config/README.md says how to add a key.
#include <algorithm>

#include "config/key.h"
#include "config/key_builders.h"
#include "config/validators.h"

namespace outbox::config {

namespace {

// The field of Config a key is read into; works on a const Config too (for the default).
#define FIELD(member) \
  [](auto& c) -> auto& { return c.member; }

const std::vector<std::pair<std::string, std::string>> kLogLevels = {
    {"trace", "trace"}, {"debug", "debug"}, {"info", "info"},
    {"warn", "warn"},   {"error", "error"}, {"off", "off"}};

constexpr long kHour = 3'600'000;
constexpr long kTenYears = 10L * 365 * 24 * 3600;

std::vector<Key> declare_keys() {
  using namespace build;
  return {
      // postgres
      text("postgres.dsn", FIELD(postgres.dsn),
           {.description =
                "libpq connection string (key=value) or URI of the relay's role. Never logged "
                "whole: its password is left out. The relay adds TCP keepalive and timeout "
                "settings, each unless the dsn sets it.",
            .required = true,
            .example = "\"host=${PGHOST:-127.0.0.1} port=${PGPORT:-5432} dbname=app "
                       "user=outbox_relay_login\""},
           not_empty),
      text("postgres.password", FIELD(postgres.password),
           {.description = "The password of postgres.dsn's role, unless the dsn carries it.",
            .example = "\"${PGPASSWORD}\"",
            .commented = true}),
      text_for_rules("postgres.password_file",
                     {.description = "A file holding the password (its trailing newline "
                                     "ignored), e.g. a mounted secret; not with "
                                     "postgres.password.",
                      .example = "/run/secrets/pg",
                      .commented = true}),
      number("postgres.connect_timeout_s", FIELD(postgres.connect_timeout_s), {1, 3600},
             {.description = "Seconds libpq may take to connect, unless the dsn sets "
                             "connect_timeout."}),
      boolean("postgres.allow_weak_tls", FIELD(postgres.allow_weak_tls),
              {.description = "true: accept a dsn (dsn and admin_dsn) whose sslmode is weaker "
                              "than verify-full to a host that is not a Unix socket or "
                              "loopback."}),
      text("postgres.admin_dsn", FIELD(postgres.admin_dsn),
           {.description = "A privileged role for `migrate` only (else migrate uses "
                           "postgres.dsn), with its own password; never logged whole. Empty "
                           "means unset, so ${ADMIN_DSN:-} may leave it out.",
            .example = "\"host=db dbname=app user=app_owner password=${PGADMINPASSWORD}\"",
            .commented = true}),
      text("postgres.relay_role", FIELD(postgres.relay_role),
           {.description = "The group role `migrate` makes when missing and grants reading and "
                           "marking this database's outbox. Roles belong to the whole cluster: "
                           "the default is shared by every database keeping it; a name of the "
                           "database's own keeps other databases' relays out."},
           identifier, "1-63 of a-z, 0-9, _; not starting with a digit"),
      text("postgres.writer_role", FIELD(postgres.writer_role),
           {.description = "The group role `migrate` makes when missing and grants "
                           "outbox.enqueue in this database (services); not the relay_role."},
           identifier, "1-63 of a-z, 0-9, _; not starting with a digit"),

      // kafka
      text("kafka.bootstrap_servers", FIELD(kafka.bootstrap_servers),
           {.description = "The brokers to start from: host:port,host:port.",
            .required = true,
            .example = "\"127.0.0.1:9092\""},
           not_empty),
      mapping("kafka.properties", FIELD(kafka.properties),
              {.description =
                   "Any librdkafka producer property, applied after the relay's own defaults "
                   "and checked at start. The properties the relay's promises depend on cannot "
                   "be changed (see \"Kafka properties the relay refuses\").",
               .example = "{linger.ms: \"1\"}"}),
      mapping("kafka.topic_map", FIELD(kafka.topic_map),
              {.description = "Row topic to Kafka topic, e.g. {orders: prod.orders}; a row "
                              "topic not listed goes to the Kafka topic of the same name."},
              kafka_topic_name, "each value a Kafka topic name"),
      mapping("kafka.secret_files", nullptr,
              {.description = "librdkafka property to a file holding its value (trailing "
                              "newline ignored), e.g. {sasl.password: /run/secrets/kafka}; a "
                              "property is given here or in kafka.properties, not both."}),
      boolean("kafka.allow_no_hostname_verification", FIELD(kafka.allow_no_hostname_verification),
              {.description = "true: accept ssl.endpoint.identification.algorithm: none (the "
                              "broker's certificate need not name the host connected to)."}),
      boolean("kafka.allow_unverified_certificates", FIELD(kafka.allow_unverified_certificates),
              {.description = "true: accept enable.ssl.certificate.verification: false (any "
                              "certificate is accepted)."}),

      // message
      text("message.topic_template", FIELD(message.topic_template),
           {.description =
                "The Kafka topic of a row topic not in kafka.topic_map: {topic} stands for the "
                "row topic, e.g. outbox.event.{topic} (Debezium's default route). Written "
                "{topic}, not ${topic}: ${...} is an environment variable in this file."},
           topic_template, "literal topic characters around {topic}"),
      boolean("message.id_header", FIELD(message.id_header),
              {.description = "true: the event id also in header id, as Debezium's outbox "
                              "EventRouter sends it (beside outbox-event-id)."}),
      boolean("message.json_string_key", FIELD(message.json_string_key),
              {.description = "true: the key sent as a JSON string of its text (\"order-7\" "
                              "with the quotes), as Kafka Connect's JsonConverter writes it; "
                              "the partition follows these bytes."}),
      boolean("message.json_string_value", FIELD(message.json_string_value),
              {.description = "true: the payload sent as a JSON string of its text, as "
                              "Debezium's EventRouter with the JsonConverter (schemas "
                              "disabled) sends a jsonb or text payload column."}),
      boolean("message.cloudevents.enabled", FIELD(message.cloudevents.enabled),
              {.description = "true: CloudEvents 1.0 Kafka binding, binary mode: headers "
                              "ce_specversion, ce_id (the event id), ce_source, ce_type, "
                              "ce_time (created_at) and content-type; the payload unchanged."}),
      text("message.cloudevents.source", FIELD(message.cloudevents.source),
           {.description = "ce_source of every event (a URI-reference naming the service); "
                           "required when message.cloudevents.enabled.",
            .example = "\"/orders-service\"",
            .commented = true}),
      text("message.cloudevents.type_header", FIELD(message.cloudevents.type_header),
           {.description = "The row header whose value is ce_type; a row without it has its "
                           "row topic as ce_type."},
           not_empty),
      text("message.cloudevents.content_type", FIELD(message.cloudevents.content_type),
           {.description = "content-type of a payload that is not JSON (a JSON payload is "
                           "application/json; a row's own content-type header wins)."},
           not_empty),

      // source
      choice("source.mode", FIELD(source.mode),
             {{"polling", SourceMode::polling}, {"replication", SourceMode::replication}},
             {.description = "How rows are found: polling reads outbox.events; replication "
                             "streams its inserts from a logical replication slot (pgoutput)."}),
      table_list(
          "source.tables",
          {.description =
               "Services' own outbox tables (Debezium's shape), each copied into outbox.events "
               "by a trigger `migrate` installs: `table` (schema.table, required) and the "
               "columns holding each part, with Debezium's names as defaults: `event_id` (id), "
               "`topic` (aggregatetype), `key` (aggregateid), `payload` (payload), "
               "`created_at` (none: the time of the copy), `headers` (column to header name, "
               "e.g. {type: eventType}). Run `migrate` after changing it.",
           .example = "[{table: public.outboxevent, headers: {type: eventType}}]",
           .commented = true}),
      number("source.polling.batch_size", FIELD(source.polling.batch_size), {1, 100'000},
             {.description = "Rows per read, and per group of marks (both modes)."}),
      number("source.polling.batch_max_bytes", FIELD(source.polling.batch_max_bytes),
             {1 << 16, 1 << 30},
             {.description = "And at most this many bytes of payload + key + headers per read: "
                             "bounds the relay's memory whatever the payload sizes (both "
                             "modes)."}),
      number("source.polling.interval_ms", FIELD(source.polling.interval), {10, kHour},
             {.description = "Longest wait between two reads when no NOTIFY hint arrives."}),
      number("source.polling.shards", FIELD(source.polling.shards), {1, 1024},
             {.description =
                  "Scale-out, polling mode only: rows are split into this many shards by a "
                  "hash of their key, and the relays of a database with the same value share "
                  "them through advisory locks. 1: one relay publishes, the others stand by. "
                  "Every relay of a database must have the same value."}),
      number("source.polling.shards_rebalance_interval_ms",
             FIELD(source.polling.shards_rebalance_interval), {100, 600'000},
             {.description = "With shards above 1: how often a relay looks at who holds what, "
                             "takes free shards and gives back extras; bounds how soon a dead "
                             "relay's shards are taken."}),
      number("source.pipeline.max_in_flight_rows", FIELD(source.pipeline.max_in_flight_rows),
             {1, 1'000'000},
             {.description = "Rows sent and not yet acknowledged and marked: also the most "
                             "rows sent again after a crash, and how far other partitions run "
                             "ahead of a stuck one."}),
      number("source.pipeline.max_in_flight_bytes", FIELD(source.pipeline.max_in_flight_bytes),
             {1 << 16, 1 << 30},
             {.description = "Bytes of payload + key + headers of the messages not yet "
                             "acknowledged (memory)."}),
      text("source.replication.slot_name", FIELD(source.replication.slot_name),
           {.description = "The logical replication slot (pgoutput) the relay streams from."},
           identifier, "1-63 of a-z, 0-9, _; not starting with a digit"),
      text("source.replication.publication_name", FIELD(source.replication.publication_name),
           {.description = "The publication of inserts into outbox.events."}, identifier,
           "1-63 of a-z, 0-9, _; not starting with a digit"),
      boolean("source.replication.create_slot", FIELD(source.replication.create_slot),
              {.description = "Create the slot when missing (never re-creates an invalidated "
                              "one); false: stop with the SQL to run."}),
      boolean("source.replication.create_publication", FIELD(source.replication.create_publication),
              {.description = "Create the publication when missing; false: stop with the SQL "
                              "to run."}),
      number("source.replication.status_interval_ms", FIELD(source.replication.status_interval),
             {100, kHour},
             {.description = "The confirmed position is reported to the server at least this "
                             "often."}),
      number("source.replication.heartbeat_interval_ms",
             FIELD(source.replication.heartbeat_interval), {100, kHour},
             {.description = "When idle, how often the server is asked for its position so "
                             "the slot can advance."}),

      // relay
      number("relay.max_attempts", FIELD(relay.max_attempts), {1, 1'000'000},
             {.description = "No effect any more (accepted, with a warning, so that older files "
                             "load).",
              .commented = true,
              .deprecated = "has no effect any more and can be removed: a row is dead-lettered "
                            "only for a reason proven its own, at once, and a topic that "
                            "cannot take messages waits"}),
      number("relay.backoff_initial_ms", FIELD(relay.backoff_initial), {1, kHour},
             {.description = "First pause after PostgreSQL or Kafka failed, doubling up to "
                             "relay.backoff_max_ms."}),
      number("relay.backoff_max_ms", FIELD(relay.backoff_max), {1, kHour},
             {.description = "Longest pause after PostgreSQL or Kafka failed."}),
      number("relay.shutdown_timeout_ms", FIELD(relay.shutdown_timeout), {0, kHour},
             {.description = "How long SIGTERM waits for the deliveries in flight before "
                             "leaving them pending for the next run; keep it below the "
                             "platform's grace period."}),

      // log
      choice("log.level", FIELD(log.level), kLogLevels,
             {.description = "Lowest level logged (--log-level overrides it)."}),
      choice("log.format", FIELD(log.format),
             {{"text", LogFormat::text}, {"json", LogFormat::json}},
             {.description = "Lines on stderr as text, or one JSON object each."}),

      // http
      boolean("http.enabled", FIELD(http.enabled),
              {.description = "Serve /metrics (Prometheus), /healthz and /readyz."}),
      text("http.address", FIELD(http.address),
           {.description = "The address the endpoint listens on."}, not_empty),
      number("http.port", FIELD(http.port), {0, 65535},
             {.description = "The port; 0 takes any free one (logged as \"http: listening on "
                             "ADDRESS:PORT\")."}),
      number("http.stats_interval_ms", FIELD(http.stats_interval), {100, kHour},
             {.description = "How often the pending, oldest and dead-lettered gauges, the slot "
                             "gauges and Kafka's reachability are measured (each on a "
                             "connection of its own)."}),

      // retention
      boolean("retention.enabled", FIELD(retention.enabled),
              {.description = "The leader deletes old rows, in small batches, while it leads; "
                              "false: nothing is deleted."}),
      number("retention.published_after_s", FIELD(retention.published_after), {1, kTenYears},
             {.description = "Published rows are deleted this long after published_at (the "
                             "default: 7 days)."}),
      number("retention.dead_lettered_after_s", FIELD(retention.dead_lettered_after),
             {0, kTenYears},
             {.description = "Dead-lettered rows are deleted this long after "
                             "dead_lettered_at; 0 keeps them until replayed."}),
      number("retention.interval_ms", FIELD(retention.interval), {100, 24 * kHour},
             {.description = "Pause between two rounds (a round deletes until no old row is "
                             "left)."}),
      number("retention.batch_size", FIELD(retention.batch_size), {1, 100'000},
             {.description = "Rows deleted per statement (one short transaction each)."}),

      // delivery
      choice("delivery.guarantee", FIELD(delivery.guarantee),
             {{"at_least_once", DeliveryGuarantee::at_least_once},
              {"exactly_once", DeliveryGuarantee::exactly_once}},
             {.description = "at_least_once, or exactly_once: rows are published in Kafka "
                             "transactions with a checkpoint, and consumers read "
                             "read_committed."}),
      text("delivery.transactional_id", FIELD(delivery.transactional_id),
           {.description =
                "exactly_once: the producer's transactional.id. Empty: derived at start from "
                "the database (system identifier, name) and the source (polling, or "
                "replication and the slot); set it when the relay's role may not execute "
                "pg_control_system() (some managed services revoke it).",
            .commented = true}),
      text("delivery.checkpoint_topic", FIELD(delivery.checkpoint_topic),
           {.description = "exactly_once: the relay's compacted single-partition topic of "
                           "checkpoints, created if missing."},
           kafka_topic_name, "a Kafka topic name"),
      number("delivery.transaction_timeout_ms", FIELD(delivery.transaction_timeout),
             {1'000, 900'000},
             {.description = "exactly_once: the producer's transaction.timeout.ms (also its "
                             "message timeout)."}),
  };
}

#undef FIELD

std::vector<Section> declare_sections() {
  return {
      {"postgres", "The database holding outbox.events.",
       "[Security: PostgreSQL TLS](../operations/security.md#postgresql-tls)"},
      {"kafka", "The Kafka cluster rows are published to.",
       "[Security: Kafka TLS and SASL](../operations/security.md#kafka-tls-and-sasl)"},
      {"message", "How rows become Kafka messages (topic, headers, key and value bytes)."},
      {"message.cloudevents", "CloudEvents' Kafka binding, binary mode."},
      {"source", "Where rows come from."},
      {"source.polling", "Reading rows (the batch keys apply to both modes).",
       "[Scaling out](../operations/sizing.md#scaling-out)"},
      {"source.pipeline",
       "Both modes: how far reading and sending run ahead of Kafka's acknowledgements."},
      {"source.replication", "source.mode: replication only.",
       "[Replication mode](../guide/replication-mode.md)"},
      {"relay", "Pauses after failures, and shutdown.", "[Stopping](cli.md#stopping-sigterm)"},
      {"log", "Logging on stderr."},
      {"http", "The HTTP endpoint: /metrics, /healthz, /readyz.",
       "[Monitoring](../operations/monitoring.md)"},
      {"retention", "Deleting old rows.", "[Retention](../operations/retention.md)"},
      {"delivery", "How rows reach Kafka.", "[Exactly once](../guide/exactly-once.md)"},
  };
}

}  // namespace

const std::vector<Key>& keys() {
  static const std::vector<Key> table = declare_keys();
  return table;
}

const std::vector<Section>& sections() {
  static const std::vector<Section> table = declare_sections();
  return table;
}

const Key* find_key(const std::string& path) {
  for (const Key& k : keys()) {
    if (k.path == path) return &k;
  }
  return nullptr;
}

bool is_log_level(const std::string& level) {
  return std::any_of(kLogLevels.begin(), kLogLevels.end(),
                     [&](const auto& choice) { return choice.first == level; });
}

}  // namespace outbox::config
