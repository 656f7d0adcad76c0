// Typed configuration of outbox-relay, read from one YAML file.
//
// Every key has a default except postgres.dsn and kafka.bootstrap_servers. Parsing never
// stops at the first problem: it returns every error at once, each naming the dotted key
// and the line it is on, so one edit-run cycle fixes a whole file.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace outbox::config {

using std::chrono::milliseconds;

struct PostgresConfig {
  //! libpq connection string (key=value or URI). Never logged whole: see pg::redact_dsn.
  std::string dsn;
  //! Password from postgres.password or the file named by postgres.password_file.
  std::string password;
  //! postgres.password_file as given: read again at each new connection (pg::Conninfo).
  std::string password_file;
  //! Seconds libpq may take to connect.
  int connect_timeout_s = 10;
  //! libpq connection string of a privileged role, used only by `migrate` (which falls back
  //! to `dsn`); carries its own password. Never logged whole: see pg::redact_dsn.
  std::string admin_dsn;
  //! postgres.allow_weak_tls: accept a dsn whose sslmode is weaker than verify-full to a
  //! host that is not a Unix socket or loopback (see pg::weak_tls_problem).
  bool allow_weak_tls = false;
  //! postgres.relay_role / postgres.writer_role: the group roles `migrate` makes when missing
  //! and grants this database's schema to (pg::RoleNames). The defaults are shared by every
  //! database of the cluster that keeps them; names of a database's own keep its outbox apart.
  std::string relay_role = "outbox_relay";
  std::string writer_role = "outbox_writer";
};

struct KafkaConfig {
  //! Comma-separated host:port list.
  std::string bootstrap_servers;
  //! librdkafka properties passed through as given (after the relay's own defaults).
  std::vector<std::pair<std::string, std::string>> properties;
  //! Row topic -> Kafka topic; a row topic not listed goes to the topic of the same name.
  std::map<std::string, std::string> topic_map;
  //! kafka.secret_files as given (property -> file): their values, read at start, are in
  //! `properties`; sasl.username/sasl.password are read again when authentication fails.
  std::map<std::string, std::string> secret_files;
  //! kafka.allow_no_hostname_verification: accept ssl.endpoint.identification.algorithm=none.
  bool allow_no_hostname_verification = false;
  //! kafka.allow_unverified_certificates: accept enable.ssl.certificate.verification=false.
  bool allow_unverified_certificates = false;
};

enum class SourceMode { polling, replication };

struct PollingConfig {
  //! Rows read, published and marked as one unit.
  int batch_size = 1000;
  //! Bytes (payload + key + headers) read as one unit: a batch stops at the row that
  //! reaches it. Bounds the relay's memory whatever the payload sizes.
  int batch_max_bytes = 16 << 20;
  //! Longest wait between two reads when no NOTIFY hint arrives.
  milliseconds interval{500};
  //! Scale-out (pg/shards.h): rows are split into this many shards by a hash of their key,
  //! and the relays sharing the same value claim them through advisory locks. 1: one relay
  //! publishes everything (the leader lock), as before.
  int shards = 1;
  //! How often a relay with shards > 1 looks at who holds what (members, free shards).
  milliseconds shards_rebalance_interval{1000};
};

struct ReplicationConfig {
  //! Logical replication slot (pgoutput) the relay streams from.
  std::string slot_name = "outbox_relay";
  //! Publication of inserts into outbox.events.
  std::string publication_name = "outbox_relay";
  //! Create the slot / publication when missing (else: stop with the SQL to create them).
  bool create_slot = true;
  bool create_publication = true;
  //! How often the confirmed position is reported to the server, at the least.
  milliseconds status_interval{10'000};
  //! When idle, how often to ask the server for its position so the slot can advance.
  milliseconds heartbeat_interval{10'000};
};

//! The relay's in-flight window (core/batch_relay.h): how far reading and sending may run
//! ahead of Kafka's acknowledgements and the marks. Polling mode; replication mode keeps
//! one batch in flight.
struct PipelineConfig {
  //! Rows from the oldest one not yet acknowledged and marked to the newest one sent: also
  //! how far other partitions run ahead of a stuck one, and the most rows sent again after
  //! a crash.
  int max_in_flight_rows = 5'000;
  //! Bytes (payload + key + headers) of the messages not yet acknowledged.
  int max_in_flight_bytes = 32 << 20;
};

//! One source.tables entry: a service's own outbox table (Debezium's shape) whose inserted
//! rows `migrate`'s trigger copies into outbox.events (pg/source_tables.h). The column
//! defaults are Debezium's outbox columns.
struct SourceTableConfig {
  //! Schema-qualified, e.g. public.outboxevent.
  std::string table;
  //! The columns holding the event id (uuid, or text holding one), the topic, the key and
  //! the payload (jsonb, json, text or bytea).
  std::string event_id = "id";
  std::string topic = "aggregatetype";
  std::string key = "aggregateid";
  std::string payload = "payload";
  //! A timestamptz or timestamp column for created_at; empty: the time of the copy.
  std::string created_at;
  //! Column -> Kafka header name, in file order.
  std::vector<std::pair<std::string, std::string>> headers;
};

struct SourceConfig {
  SourceMode mode = SourceMode::polling;
  //! source.tables: service tables copied into outbox.events by `migrate`'s triggers.
  std::vector<SourceTableConfig> tables;
  PollingConfig polling;
  ReplicationConfig replication;
  PipelineConfig pipeline;
};

struct RelayConfig {
  //! No effect (kept so that older files load): rows are dead-lettered only for reasons
  //! proven their own, at once; a topic that cannot take messages waits.
  int max_attempts = 10;
  //! First and longest pause after PostgreSQL or Kafka failed (doubling in between).
  milliseconds backoff_initial{200};
  milliseconds backoff_max{30'000};
  //! How long SIGTERM waits for in-flight deliveries before leaving them for the next run.
  milliseconds shutdown_timeout{30'000};
};

//! The leader deletes old published rows (pg/retention.h).
struct RetentionConfig {
  bool enabled = true;
  //! Published rows older than this (by published_at) are deleted.
  std::chrono::seconds published_after{7 * 24 * 3600};
  //! Dead-lettered rows older than this (by dead_lettered_at) too; 0: kept until replayed.
  std::chrono::seconds dead_lettered_after{0};
  //! Pause between two rounds (a round deletes until nothing old is left).
  milliseconds interval{60'000};
  //! Rows deleted per statement (one short transaction each).
  int batch_size = 1000;
};

enum class LogFormat { text, json };

struct LogConfig {
  std::string level = "info";
  LogFormat format = LogFormat::text;
};

//! The HTTP endpoint: /metrics, /healthz, /readyz (relay/http/).
struct HttpConfig {
  bool enabled = true;
  std::string address = "0.0.0.0";
  //! 0: any free port (the bound one is logged: "http: listening on ADDRESS:PORT").
  int port = 8080;
  //! How often the pending/oldest/dead-lettered gauges, the slot gauges and Kafka's
  //! reachability are measured (each on a connection of its own).
  milliseconds stats_interval{10'000};
};

enum class DeliveryGuarantee { at_least_once, exactly_once };

//! delivery: how rows reach Kafka (docs/guide/exactly-once.md; relay/core/README-eos.md).
struct DeliveryConfig {
  DeliveryGuarantee guarantee = DeliveryGuarantee::at_least_once;
  //! exactly_once: the producer's transactional.id; empty = derived at start from the
  //! relay's identity (database system identifier, database name, source mode and slot).
  std::string transactional_id;
  //! exactly_once: the relay-owned compacted single-partition topic of checkpoints.
  std::string checkpoint_topic = "outbox-relay-checkpoints";
  //! exactly_once: transaction.timeout.ms of the producer (also its message timeout).
  milliseconds transaction_timeout{60'000};
};

//! CloudEvents 1.0, Kafka binding, binary mode (core::CloudEventsFormat).
struct CloudEventsConfig {
  //! message.cloudevents.enabled: add the ce_* and content-type headers.
  bool enabled = false;
  //! ce_source of every event (required when enabled).
  std::string source;
  //! The row header whose value is ce_type (else the row topic).
  std::string type_header = "type";
  //! content-type of a payload that is not JSON.
  std::string content_type = "application/octet-stream";
};

//! How rows become messages beyond the relay's defaults (core::MessageFormat).
struct MessageConfig {
  //! The Kafka topic of a row topic not in kafka.topic_map; {topic} is the row topic.
  std::string topic_template = "{topic}";
  //! Also the event id in header `id` (Debezium's outbox EventRouter).
  bool id_header = false;
  //! The key / the payload as a JSON string of its text (Kafka Connect's JsonConverter).
  bool json_string_key = false;
  bool json_string_value = false;
  CloudEventsConfig cloudevents;
};

struct Config {
  PostgresConfig postgres;
  KafkaConfig kafka;
  MessageConfig message;
  SourceConfig source;
  RelayConfig relay;
  LogConfig log;
  HttpConfig http;
  RetentionConfig retention;
  DeliveryConfig delivery;
};

struct ConfigError {
  std::string key;  //!< dotted path, e.g. "source.polling.batch_size"
  int line = 0;     //!< 1-based line in the file, 0 when the key is missing altogether
  std::string message;
  int column = 0;  //!< 1-based column of a YAML syntax error (key empty then), else 0
  std::string to_string() const;
};

struct ParseResult {
  std::optional<Config> config;  //!< set only when errors is empty
  std::vector<ConfigError> errors;
  std::vector<std::string> warnings;
};

//! Looks up an environment variable for ${VAR} substitution; nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
//! Checks one kafka.properties entry (e.g. against librdkafka); an error message or nullopt.
using PropertyCheck =
    std::function<std::optional<std::string>(const std::string& key, const std::string& value)>;
//! Reads a secret file (postgres.password_file, kafka.secret_files); nullopt when it cannot
//! be read.
using FileReader = std::function<std::optional<std::string>(const std::string& path)>;

struct ParseOptions {
  EnvLookup env;              //!< default: getenv
  PropertyCheck kafka_check;  //!< default: no check beyond the relay's own rules
  FileReader read_file;       //!< default: read from disk
};

//! trace, debug, info, warn, error or off.
bool is_log_level(const std::string& level);

ParseResult parse_config(std::string_view yaml_text, const ParseOptions& options = {});
ParseResult load_config_file(const std::string& path, const ParseOptions& options = {});

//! Replaces ${VAR} and ${VAR:-default}; an unset VAR without default is an error message.
std::optional<std::string> substitute_env(const std::string& value, const EnvLookup& env,
                                          std::string* error);

}  // namespace outbox::config
