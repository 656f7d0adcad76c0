#include <catch2/catch.hpp>

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "config/config.h"
#include "config/key.h"
#include "config/reference.h"

using namespace outbox::config;

namespace {

ParseOptions with_env(std::map<std::string, std::string> vars) {
  ParseOptions o;
  o.env = [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    return it == vars.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
  return o;
}

const ConfigError* find_error(const ParseResult& r, const std::string& key) {
  for (const auto& e : r.errors) {
    if (e.key == key) return &e;
  }
  return nullptr;
}

constexpr const char* kMinimal = R"(postgres:
  dsn: "host=db dbname=app"
kafka:
  bootstrap_servers: "k1:9092"
)";

}  // namespace

TEST_CASE("the smallest config gets every default", "[config]") {
  ParseResult r = parse_config(kMinimal, with_env({}));
  REQUIRE(r.errors.empty());
  const Config& c = *r.config;
  CHECK(c.postgres.dsn == "host=db dbname=app");
  CHECK(c.kafka.bootstrap_servers == "k1:9092");
  CHECK(c.source.mode == SourceMode::polling);
  CHECK(c.source.polling.batch_size == 1000);
  CHECK(c.source.polling.interval == std::chrono::milliseconds(500));
  CHECK(c.relay.max_attempts == 10);
  CHECK(c.log.format == LogFormat::text);
}

TEST_CASE("every key can be set", "[config]") {
  ParseResult r = parse_config(R"(postgres:
  dsn: "host=db"
  password: s3cret
  connect_timeout_s: 3
kafka:
  bootstrap_servers: "k:1"
  properties:
    compression.type: lz4
    linger.ms: 20
  topic_map:
    orders: prod.orders
source:
  mode: polling
  polling:
    batch_size: 50
    interval_ms: 100
relay:
  max_attempts: 3
  backoff_initial_ms: 10
  backoff_max_ms: 1000
  shutdown_timeout_ms: 5000
log:
  level: debug
  format: json
)",
                               with_env({}));
  REQUIRE(r.errors.empty());
  const Config& c = *r.config;
  CHECK(c.postgres.password == "s3cret");
  CHECK(c.postgres.connect_timeout_s == 3);
  REQUIRE(c.kafka.properties.size() == 2);
  CHECK(c.kafka.properties[0] == std::pair<std::string, std::string>("compression.type", "lz4"));
  CHECK(c.kafka.topic_map.at("orders") == "prod.orders");
  CHECK(c.source.polling.batch_size == 50);
  CHECK(c.relay.shutdown_timeout == std::chrono::milliseconds(5000));
  CHECK(c.log.level == "debug");
  CHECK(c.log.format == LogFormat::json);
}

TEST_CASE("an unknown key is named with its line", "[config]") {
  ParseResult r = parse_config(R"(postgres:
  dsnn: "host=db"
kafka:
  bootstrap_servers: "k:1"
)",
                               with_env({}));
  REQUIRE_FALSE(r.config);
  const ConfigError* e = find_error(r, "postgres.dsnn");
  REQUIRE(e != nullptr);
  CHECK(e->line == 2);
  CHECK_THAT(e->message, Catch::Contains("unknown key"));
  CHECK(find_error(r, "postgres.dsn") != nullptr);  // and the required one is missing
  CHECK_THAT(e->to_string(), Catch::StartsWith("line 2: postgres.dsnn:"));
}

TEST_CASE("all errors come back at once, in line order", "[config]") {
  ParseResult r = parse_config(R"(postgres:
  dsn: "host=db"
  connect_timeout_s: soon
kafka:
  bootstrap_servers: "k:1"
source:
  mode: sideways
  polling:
    batch_size: -5
    interval_ms: [1, 2]
log:
  level: loud
  colour: red
)",
                               with_env({}));
  REQUIRE_FALSE(r.config);
  REQUIRE(r.errors.size() == 6);
  CHECK(r.errors[0].key == "postgres.connect_timeout_s");
  CHECK(r.errors[0].line == 3);
  CHECK_THAT(r.errors[0].message, Catch::Contains("integer"));
  CHECK(r.errors[1].key == "source.mode");
  CHECK(r.errors[1].line == 7);
  CHECK(r.errors[2].key == "source.polling.batch_size");
  CHECK(r.errors[2].line == 9);
  CHECK_THAT(r.errors[2].message, Catch::Contains("between 1 and"));
  CHECK(r.errors[3].key == "source.polling.interval_ms");
  CHECK(r.errors[4].key == "log.level");
  CHECK(r.errors[5].key == "log.colour");
  CHECK(r.errors[5].line == 13);
}

TEST_CASE("missing required keys are reported even for an empty file", "[config]") {
  ParseResult r = parse_config("", with_env({}));
  REQUIRE(r.errors.size() == 2);
  CHECK(find_error(r, "postgres.dsn") != nullptr);
  CHECK(find_error(r, "kafka.bootstrap_servers") != nullptr);
}

TEST_CASE("invalid YAML names its line and column, as editors count them", "[config]") {
  SECTION("a bad indentation: where yaml-cpp stopped, 1-based") {
    ParseResult r =
        parse_config("postgres:\n  dsn: x\n   bad: 1\nkafka:\n  bootstrap_servers: k\n");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].key.empty());  // a syntax error is not a key's
    CHECK(r.errors[0].line == 3);
    CHECK(r.errors[0].column == 7);
    CHECK(r.errors[0].to_string() == "line 3, column 7: invalid YAML: illegal map value");
  }
  SECTION("an error in the first character is line 1, column 1") {
    ParseResult r = parse_config("]\nkafka: {}\n");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].to_string() == "line 1, column 1: invalid YAML: illegal flow end");
  }
  SECTION("an unclosed [ is reported where it opens, not where the parser gave up") {
    ParseResult r = parse_config(
        "postgres:\n  dsn: x\nkafka:\n  bootstrap_servers: [a, b\n  foo: 1\nsource:\n"
        "  mode: polling\n");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].line == 4);
    CHECK(r.errors[0].column == 22);
    CHECK_THAT(r.errors[0].message, Catch::Contains("[ is never closed") &&
                                        Catch::Contains("end of sequence flow not found"));
  }
  SECTION("an unclosed { at the end of the file: never a line past the end") {
    ParseResult r = parse_config(
        "postgres:\n  dsn: \"[x]\" # a [ in a comment\nkafka:\n  bootstrap_servers: k\n"
        "  properties: {a: 1\n");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].line == 5);
    CHECK(r.errors[0].column == 15);
    CHECK_THAT(r.errors[0].message, Catch::Contains("{ is never closed") &&
                                        Catch::Contains("end of map flow not found"));
  }
  SECTION("a file's syntax error names the file") {
    char dir[] = "/tmp/outbox-config-test-XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    std::string path = std::string(dir) + "/relay.yaml";
    std::ofstream(path) << "postgres:\n\tdsn: x\n";
    ParseResult r = load_config_file(path);
    std::filesystem::remove_all(dir);
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].line == 2);
    CHECK(r.errors[0].to_string() ==
          "line 2, column 5: invalid YAML in " + path + ": illegal map value");
  }
}

TEST_CASE("a section that is not a mapping is an error", "[config]") {
  ParseResult r = parse_config("postgres: [1]\nkafka:\n  bootstrap_servers: k\n", with_env({}));
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].key == "postgres");
  CHECK(r.errors[0].line == 1);
}

TEST_CASE("${VAR} is substituted, with defaults, and an unset one is an error", "[config]") {
  SECTION("set and default") {
    ParseResult r = parse_config(R"(postgres:
  dsn: "host=${DB_HOST} port=${DB_PORT:-5432}"
kafka:
  bootstrap_servers: "${BROKERS}"
)",
                                 with_env({{"DB_HOST", "db1"}, {"BROKERS", "b:9"}}));
    REQUIRE(r.errors.empty());
    CHECK(r.config->postgres.dsn == "host=db1 port=5432");
    CHECK(r.config->kafka.bootstrap_servers == "b:9");
  }
  SECTION("unset") {
    ParseResult r = parse_config(R"(postgres:
  dsn: "host=db"
  password: "${DB_PASSWORD}"
kafka:
  bootstrap_servers: "b:9"
)",
                                 with_env({}));
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].key == "postgres.password");
    CHECK(r.errors[0].line == 3);
    CHECK_THAT(r.errors[0].message, Catch::Contains("DB_PASSWORD is not set"));
  }
  SECTION("unterminated") {
    std::string error;
    CHECK_FALSE(substitute_env(
        "a ${B", [](const std::string&) { return std::nullopt; }, &error));
    CHECK_THAT(error, Catch::Contains("unterminated"));
  }
}

TEST_CASE("the password comes from a file, and never from both places", "[config]") {
  ParseOptions o = with_env({});
  o.read_file = [](const std::string& path) -> std::optional<std::string> {
    if (path == "/run/secrets/pg") return std::string("hunter2\n");
    return std::nullopt;
  };
  SECTION("file") {
    ParseResult r = parse_config(
        "postgres:\n  dsn: h\n  password_file: /run/secrets/pg\nkafka:\n  bootstrap_servers: b\n",
        o);
    REQUIRE(r.errors.empty());
    CHECK(r.config->postgres.password == "hunter2");  // trailing newline dropped
  }
  SECTION("unreadable file") {
    ParseResult r = parse_config(
        "postgres:\n  dsn: h\n  password_file: /nope\nkafka:\n  bootstrap_servers: b\n", o);
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].key == "postgres.password_file");
    CHECK(r.errors[0].line == 3);
  }
  SECTION("both") {
    ParseResult r = parse_config(
        "postgres:\n  dsn: h\n  password: x\n  password_file: /run/secrets/pg\n"
        "kafka:\n  bootstrap_servers: b\n",
        o);
    REQUIRE(r.errors.size() == 1);
    CHECK_THAT(r.errors[0].message, Catch::Contains("not both"));
  }
}

TEST_CASE("idempotence and acks=all cannot be turned off", "[config]") {
  ParseResult r = parse_config(R"(postgres:
  dsn: h
kafka:
  bootstrap_servers: b
  properties:
    enable.idempotence: "false"
    acks: "1"
    bootstrap.servers: other
)",
                               with_env({}));
  REQUIRE(r.errors.size() == 3);
  CHECK(r.errors[0].key == "kafka.properties.enable.idempotence");
  CHECK(r.errors[0].line == 6);
  CHECK_THAT(r.errors[0].message, Catch::Contains("idempotent"));
  CHECK(r.errors[1].key == "kafka.properties.acks");
  CHECK(r.errors[2].key == "kafka.properties.bootstrap.servers");
}

TEST_CASE("message timeouts and gaps, which would reorder a key, are refused", "[config]") {
  ParseResult r = parse_config(R"(postgres:
  dsn: h
kafka:
  bootstrap_servers: b
  properties:
    message.timeout.ms: "3000"
    delivery.timeout.ms: "0"
    enable.gapless.guarantee: "false"
relay:
  max_attempts: 3
)",
                               with_env({}));
  REQUIRE(r.errors.size() == 2);
  CHECK(r.errors[0].key == "kafka.properties.message.timeout.ms");
  CHECK(r.errors[0].line == 6);
  CHECK_THAT(r.errors[0].message, Catch::Contains("out of key order"));
  CHECK(r.errors[1].key == "kafka.properties.enable.gapless.guarantee");
  REQUIRE(r.warnings.size() == 1);  // an old key: loads, says it does nothing
  CHECK_THAT(r.warnings[0], Catch::Contains("relay.max_attempts (line 10) has no effect"));
}

TEST_CASE("acks=-1 and enable.idempotence=true are accepted as they are", "[config]") {
  ParseResult r = parse_config(
      "postgres: {dsn: h}\nkafka:\n  bootstrap_servers: b\n  properties:\n"
      "    acks: \"-1\"\n    enable.idempotence: \"true\"\n",
      with_env({}));
  CHECK(r.errors.empty());
}

TEST_CASE("kafka properties are checked by the injected check, with their line", "[config]") {
  ParseOptions o = with_env({});
  o.kafka_check = [](const std::string& key, const std::string&) -> std::optional<std::string> {
    if (key == "no.such.property") return std::string("No such configuration property");
    return std::nullopt;
  };
  ParseResult r = parse_config(
      "postgres: {dsn: h}\nkafka:\n  bootstrap_servers: b\n  properties:\n"
      "    linger.ms: 1\n    no.such.property: 1\n",
      o);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].key == "kafka.properties.no.such.property");
  CHECK(r.errors[0].line == 6);
}

TEST_CASE("replication mode takes its slot and publication settings", "[config]") {
  ParseResult r = parse_config(R"(postgres: {dsn: h}
kafka: {bootstrap_servers: b}
source:
  mode: replication
  replication:
    slot_name: relay_slot
    publication_name: relay_pub
    create_slot: false
    heartbeat_interval_ms: 2000
)",
                               with_env({}));
  REQUIRE(r.errors.empty());
  CHECK(r.config->source.mode == SourceMode::replication);
  CHECK(r.config->source.replication.slot_name == "relay_slot");
  CHECK(r.config->source.replication.publication_name == "relay_pub");
  CHECK_FALSE(r.config->source.replication.create_slot);
  CHECK(r.config->source.replication.create_publication);
  CHECK(r.config->source.replication.heartbeat_interval == std::chrono::milliseconds(2000));
}

TEST_CASE("slot and publication names must be plain identifiers", "[config]") {
  ParseResult r = parse_config(R"(postgres: {dsn: h}
kafka: {bootstrap_servers: b}
source:
  replication:
    slot_name: "Bad-Slot"
    publication_name: "x; DROP TABLE y"
    create_slot: maybe
)",
                               with_env({}));
  REQUIRE(r.errors.size() == 3);
  CHECK(r.errors[0].key == "source.replication.slot_name");
  CHECK(r.errors[0].line == 5);
  CHECK(r.errors[1].key == "source.replication.publication_name");
  CHECK(r.errors[2].key == "source.replication.create_slot");
  CHECK_THAT(r.errors[2].message, Catch::Contains("true, false"));
}

TEST_CASE("backoff_max below backoff_initial is an error", "[config]") {
  ParseResult r = parse_config(
      "postgres: {dsn: h}\nkafka: {bootstrap_servers: b}\nrelay:\n  backoff_initial_ms: 500\n"
      "  backoff_max_ms: 100\n",
      with_env({}));
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].key == "relay.backoff_max_ms");
  CHECK(r.errors[0].line == 5);
}

TEST_CASE("an empty dsn or empty topic mapping is an error", "[config]") {
  ParseResult r = parse_config(
      "postgres: {dsn: \"\"}\nkafka:\n  bootstrap_servers: b\n  topic_map:\n    orders: \"\"\n",
      with_env({}));
  REQUIRE(r.errors.size() == 2);
  CHECK(find_error(r, "postgres.dsn") != nullptr);
  CHECK(find_error(r, "kafka.topic_map.orders") != nullptr);
}

// Regression: a topic_map target Kafka refuses passed the config and dead-lettered every row.
TEST_CASE("a topic_map target that is no Kafka topic name is a config error at its line",
          "[config][regression]") {
  ParseResult r = parse_config(
      "postgres: {dsn: h}\nkafka:\n  bootstrap_servers: b\n  topic_map:\n"
      "    orders: team/orders\n    dots: \"..\"\n    long: " +
          std::string(250, 'x') +
          "\n    fine: team.orders_v2-eu\n    max: " + std::string(249, 'y') + "\n",
      with_env({}));
  REQUIRE(r.errors.size() == 3);
  const ConfigError* e = find_error(r, "kafka.topic_map.orders");
  REQUIRE(e != nullptr);
  CHECK(e->line == 5);
  CHECK(e->to_string() ==
        "line 5: kafka.topic_map.orders: must be a Kafka topic name (1-249 characters of a-z, "
        "A-Z, 0-9, '.', '_' and '-', not \".\" or \"..\"), got \"team/orders\"");
  CHECK(find_error(r, "kafka.topic_map.dots") != nullptr);
  REQUIRE(find_error(r, "kafka.topic_map.long") != nullptr);
  CHECK(find_error(r, "kafka.topic_map.long")->line == 7);
  CHECK(find_error(r, "kafka.topic_map.fine") == nullptr);
  CHECK(find_error(r, "kafka.topic_map.max") == nullptr);
}

TEST_CASE("a config file that cannot be read is an error naming it", "[config]") {
  ParseResult r = load_config_file("/nonexistent/outbox.yaml");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].to_string() ==
        "--config: cannot read /nonexistent/outbox.yaml: No such file or directory");
}

TEST_CASE("a directory given as the config file is a read error, not missing keys", "[config]") {
  char dir[] = "/tmp/outbox-config-test-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  ParseResult r = load_config_file(dir);
  std::filesystem::remove_all(dir);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].key == "--config");
  CHECK(r.errors[0].message ==
        "cannot read " + std::string(dir) + ": it is a directory, not a YAML file");
}

TEST_CASE("the example config in the repository is valid and shows the defaults", "[config]") {
  ParseResult r = load_config_file(OUTBOX_SOURCE_DIR "/relay/config/example.yaml", with_env({}));
  INFO((r.errors.empty() ? "" : r.errors[0].to_string()));
  REQUIRE(r.errors.empty());
  Config defaults;
  CHECK(r.config->source.polling.batch_size == defaults.source.polling.batch_size);
  CHECK(r.config->source.polling.interval == defaults.source.polling.interval);
  CHECK(r.config->relay.max_attempts == defaults.relay.max_attempts);
  CHECK(r.config->relay.backoff_initial == defaults.relay.backoff_initial);
  CHECK(r.config->relay.backoff_max == defaults.relay.backoff_max);
  CHECK(r.config->relay.shutdown_timeout == defaults.relay.shutdown_timeout);
  CHECK(r.config->source.pipeline.max_in_flight_rows ==
        defaults.source.pipeline.max_in_flight_rows);
  CHECK(r.config->source.pipeline.max_in_flight_bytes ==
        defaults.source.pipeline.max_in_flight_bytes);
  CHECK(r.config->postgres.connect_timeout_s == defaults.postgres.connect_timeout_s);
  CHECK(r.config->http.enabled == defaults.http.enabled);
  CHECK(r.config->http.address == defaults.http.address);
  CHECK(r.config->http.port == defaults.http.port);
  CHECK(r.config->http.stats_interval == defaults.http.stats_interval);
  CHECK(r.config->postgres.dsn == "host=127.0.0.1 port=5432 dbname=app user=outbox_relay_login");
  CHECK(r.config->postgres.admin_dsn.empty());
  CHECK(r.config->retention.enabled == defaults.retention.enabled);
  CHECK(r.config->retention.published_after == defaults.retention.published_after);
  CHECK(r.config->retention.dead_lettered_after == defaults.retention.dead_lettered_after);
  CHECK(r.config->retention.interval == defaults.retention.interval);
  CHECK(r.config->retention.batch_size == defaults.retention.batch_size);
  CHECK(r.config->delivery.guarantee == defaults.delivery.guarantee);
  CHECK(r.config->delivery.checkpoint_topic == defaults.delivery.checkpoint_topic);
  CHECK(r.config->delivery.transaction_timeout == defaults.delivery.transaction_timeout);
  CHECK(r.warnings.empty());
}

TEST_CASE("retention is on by default: published rows after 7 days, dead-lettered kept",
          "[config][retention]") {
  ParseResult r = parse_config(kMinimal, with_env({}));
  REQUIRE(r.errors.empty());
  const RetentionConfig& rc = r.config->retention;
  CHECK(rc.enabled);
  CHECK(rc.published_after == std::chrono::hours(7 * 24));
  CHECK(rc.dead_lettered_after == std::chrono::seconds(0));
  CHECK(rc.interval == std::chrono::milliseconds(60'000));
  CHECK(rc.batch_size == 1000);
}

TEST_CASE("retention takes every key, and can be switched off", "[config][retention]") {
  ParseResult r = parse_config(std::string(kMinimal) + R"(retention:
  enabled: false
  published_after_s: 3600
  dead_lettered_after_s: 86400
  interval_ms: 5000
  batch_size: 200
)",
                               with_env({}));
  INFO((r.errors.empty() ? "" : r.errors[0].to_string()));
  REQUIRE(r.errors.empty());
  const RetentionConfig& rc = r.config->retention;
  CHECK_FALSE(rc.enabled);
  CHECK(rc.published_after == std::chrono::seconds(3600));
  CHECK(rc.dead_lettered_after == std::chrono::seconds(86400));
  CHECK(rc.interval == std::chrono::milliseconds(5000));
  CHECK(rc.batch_size == 200);
}

TEST_CASE("bad retention values name their key and line", "[config][retention]") {
  ParseResult r = parse_config(std::string(kMinimal) + R"(retention:
  enabled: sometimes
  published_after_s: 0
  interval_ms: 10
  batch_size: -1
  keep_forever: true
)",
                               with_env({}));
  REQUIRE_FALSE(r.config);
  const ConfigError* e = find_error(r, "retention.enabled");
  REQUIRE(e);
  CHECK(e->line == 6);
  CHECK_THAT(e->message, Catch::Contains("true, false"));
  e = find_error(r, "retention.published_after_s");
  REQUIRE(e);
  CHECK(e->line == 7);
  CHECK_THAT(e->message, Catch::Contains("between 1 and"));
  e = find_error(r, "retention.interval_ms");
  REQUIRE(e);
  CHECK(e->line == 8);
  e = find_error(r, "retention.batch_size");
  REQUIRE(e);
  CHECK(e->line == 9);
  e = find_error(r, "retention.keep_forever");
  REQUIRE(e);
  CHECK(e->line == 10);
  CHECK_THAT(e->message, Catch::Contains("unknown key"));
}

TEST_CASE("dead-lettered rows are kept (0) or kept longer than published ones",
          "[config][retention]") {
  ParseResult r = parse_config(std::string(kMinimal) + R"(retention:
  published_after_s: 3600
  dead_lettered_after_s: 60
)",
                               with_env({}));
  REQUIRE_FALSE(r.config);
  const ConfigError* e = find_error(r, "retention.dead_lettered_after_s");
  REQUIRE(e);
  CHECK(e->line == 7);
  CHECK_THAT(e->message, Catch::Contains("at least retention.published_after_s (3600)"));
  ParseResult keep = parse_config(std::string(kMinimal) + R"(retention:
  published_after_s: 3600
  dead_lettered_after_s: 0
)",
                                  with_env({}));
  CHECK(keep.errors.empty());
}

TEST_CASE("postgres.admin_dsn is optional, substituted, and empty means unset",
          "[config][migrate]") {
  ParseResult none = parse_config(kMinimal, with_env({}));
  REQUIRE(none.config);
  CHECK(none.config->postgres.admin_dsn.empty());

  ParseResult set = parse_config(R"(postgres:
  dsn: "host=db dbname=app user=relay"
  admin_dsn: "host=db dbname=app user=owner password=${ADMIN_PW}"
kafka:
  bootstrap_servers: "k1:9092"
)",
                                 with_env({{"ADMIN_PW", "pw"}}));
  REQUIRE(set.config);
  CHECK(set.config->postgres.admin_dsn == "host=db dbname=app user=owner password=pw");
  CHECK(set.config->postgres.dsn == "host=db dbname=app user=relay");

  ParseResult empty = parse_config(R"(postgres:
  dsn: "host=db"
  admin_dsn: "${ADMIN_DSN:-}"
kafka:
  bootstrap_servers: "k1:9092"
)",
                                   with_env({}));
  REQUIRE(empty.config);
  CHECK(empty.config->postgres.admin_dsn.empty());

  ParseResult unset = parse_config(R"(postgres:
  dsn: "host=db"
  admin_dsn: "${ADMIN_DSN}"
kafka:
  bootstrap_servers: "k1:9092"
)",
                                   with_env({}));
  const ConfigError* e = find_error(unset, "postgres.admin_dsn");
  REQUIRE(e);
  CHECK(e->line == 3);
  CHECK_THAT(e->message, Catch::Contains("ADMIN_DSN is not set"));
}

TEST_CASE("http keys: defaults, values, and errors naming key and line", "[config][http]") {
  ParseResult d = parse_config(kMinimal, with_env({}));
  REQUIRE(d.errors.empty());
  CHECK(d.config->http.enabled);
  CHECK(d.config->http.address == "0.0.0.0");
  CHECK(d.config->http.port == 8080);
  CHECK(d.config->http.stats_interval == std::chrono::milliseconds(10'000));

  std::string text = std::string(kMinimal) +
                     "http:\n  enabled: false\n  address: 127.0.0.1\n  port: 0\n"
                     "  stats_interval_ms: 500\n";
  ParseResult r = parse_config(text, with_env({}));
  REQUIRE(r.errors.empty());
  CHECK_FALSE(r.config->http.enabled);
  CHECK(r.config->http.address == "127.0.0.1");
  CHECK(r.config->http.port == 0);
  CHECK(r.config->http.stats_interval == std::chrono::milliseconds(500));

  std::string bad = std::string(kMinimal) +
                    "http:\n  enabled: maybe\n  port: 70000\n  adress: x\n  address: \"\"\n";
  ParseResult b = parse_config(bad, with_env({}));
  REQUIRE_FALSE(b.config);
  const ConfigError* enabled = find_error(b, "http.enabled");
  REQUIRE(enabled);
  CHECK(enabled->line == 6);
  const ConfigError* port = find_error(b, "http.port");
  REQUIRE(port);
  CHECK(port->line == 7);
  CHECK(port->message.find("between 0 and 65535") != std::string::npos);
  const ConfigError* typo = find_error(b, "http.adress");
  REQUIRE(typo);
  CHECK(typo->line == 8);
  const ConfigError* empty = find_error(b, "http.address");
  REQUIRE(empty);
  CHECK(empty->line == 9);
}

TEST_CASE("the in-flight window takes rows and bytes, and names a bad value with its line",
          "[config]") {
  ParseResult ok = parse_config(R"(postgres:
  dsn: "host=db"
kafka:
  bootstrap_servers: "k:1"
source:
  pipeline:
    max_in_flight_rows: 5000
    max_in_flight_bytes: 1048576
)",
                                with_env({}));
  REQUIRE(ok.config);
  CHECK(ok.config->source.pipeline.max_in_flight_rows == 5000);
  CHECK(ok.config->source.pipeline.max_in_flight_bytes == 1048576);

  ParseResult bad = parse_config(R"(postgres:
  dsn: "host=db"
kafka:
  bootstrap_servers: "k:1"
source:
  pipeline:
    max_in_flight_rows: 0
    max_in_flight_byte: 1
)",
                                 with_env({}));
  REQUIRE_FALSE(bad.config);
  const ConfigError* rows = find_error(bad, "source.pipeline.max_in_flight_rows");
  REQUIRE(rows != nullptr);
  CHECK(rows->line == 7);
  const ConfigError* typo = find_error(bad, "source.pipeline.max_in_flight_byte");
  REQUIRE(typo != nullptr);
  CHECK(typo->line == 8);
}

TEST_CASE("delivery: at_least_once by default, exactly_once with its keys", "[config][eos]") {
  ParseResult d = parse_config(kMinimal, with_env({}));
  REQUIRE(d.errors.empty());
  CHECK(d.config->delivery.guarantee == DeliveryGuarantee::at_least_once);
  CHECK(d.config->delivery.transactional_id.empty());
  CHECK(d.config->delivery.checkpoint_topic == "outbox-relay-checkpoints");
  ParseResult r = parse_config(std::string(kMinimal) + R"(delivery:
  guarantee: exactly_once
  transactional_id: orders-relay
  checkpoint_topic: orders.relay-checkpoints
  transaction_timeout_ms: 30000
)",
                               with_env({}));
  INFO((r.errors.empty() ? "" : r.errors[0].to_string()));
  REQUIRE(r.errors.empty());
  CHECK(r.config->delivery.guarantee == DeliveryGuarantee::exactly_once);
  CHECK(r.config->delivery.transactional_id == "orders-relay");
  CHECK(r.config->delivery.checkpoint_topic == "orders.relay-checkpoints");
  CHECK(r.config->delivery.transaction_timeout == std::chrono::milliseconds(30000));
  CHECK(r.warnings.empty());
}

TEST_CASE("bad delivery values name the key and the line", "[config][eos]") {
  ParseResult r = parse_config(std::string(kMinimal) + R"(delivery:
  guarantee: exactly-once
  checkpoint_topic: "bad topic"
  transaction_timeout_ms: 10
  colour: blue
)",
                               with_env({}));
  REQUIRE(r.errors.size() == 4);
  const ConfigError* g = find_error(r, "delivery.guarantee");
  REQUIRE(g != nullptr);
  CHECK(g->line == 6);
  CHECK_THAT(g->message, Catch::Contains("at_least_once, exactly_once"));
  REQUIRE(find_error(r, "delivery.checkpoint_topic") != nullptr);
  CHECK(find_error(r, "delivery.checkpoint_topic")->line == 7);
  REQUIRE(find_error(r, "delivery.transaction_timeout_ms") != nullptr);
  CHECK(find_error(r, "delivery.transaction_timeout_ms")->line == 8);
  REQUIRE(find_error(r, "delivery.colour") != nullptr);
}

TEST_CASE("transactional.id in kafka.properties points to delivery.guarantee", "[config][eos]") {
  ParseResult r = parse_config(std::string(kMinimal) + R"(  properties:
    transactional.id: x
)",
                               with_env({}));
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].key == "kafka.properties.transactional.id");
  CHECK(r.errors[0].line == 6);
  CHECK_THAT(r.errors[0].message, Catch::Contains("delivery.guarantee: exactly_once"));
}

TEST_CASE("exactly_once keys without exactly_once warn that they do nothing", "[config][eos]") {
  ParseResult r = parse_config(std::string(kMinimal) + R"(delivery:
  transactional_id: x
)",
                               with_env({}));
  REQUIRE(r.errors.empty());
  REQUIRE(r.warnings.size() == 1);
  CHECK_THAT(r.warnings[0], Catch::Contains("delivery.transactional_id (line 6)"));
}

TEST_CASE("source.polling.shards: default 1, polling mode only, bounds with key and line",
          "[config]") {
  ParseResult def = parse_config(kMinimal, with_env({}));
  REQUIRE(def.config);
  CHECK(def.config->source.polling.shards == 1);
  CHECK(def.config->source.polling.shards_rebalance_interval.count() == 1000);

  ParseResult ok = parse_config(R"(postgres:
  dsn: "host=db"
kafka:
  bootstrap_servers: "k:1"
source:
  polling:
    shards: 8
    shards_rebalance_interval_ms: 250
)",
                                with_env({}));
  REQUIRE(ok.config);
  CHECK(ok.config->source.polling.shards == 8);
  CHECK(ok.config->source.polling.shards_rebalance_interval.count() == 250);

  ParseResult bad = parse_config(R"(postgres:
  dsn: "host=db"
kafka:
  bootstrap_servers: "k:1"
source:
  polling:
    shards: 0
    shards_rebalance_interval_ms: 5
)",
                                 with_env({}));
  REQUIRE_FALSE(bad.config);
  const ConfigError* shards = find_error(bad, "source.polling.shards");
  REQUIRE(shards != nullptr);
  CHECK(shards->line == 7);
  const ConfigError* interval = find_error(bad, "source.polling.shards_rebalance_interval_ms");
  REQUIRE(interval != nullptr);
  CHECK(interval->line == 8);

  ParseResult repl = parse_config(R"(postgres:
  dsn: "host=db"
kafka:
  bootstrap_servers: "k:1"
source:
  mode: replication
  polling:
    shards: 4
)",
                                  with_env({}));
  REQUIRE_FALSE(repl.config);
  const ConfigError* mode = find_error(repl, "source.polling.shards");
  REQUIRE(mode != nullptr);
  CHECK(mode->line == 8);
  CHECK(mode->message.find("replication") != std::string::npos);
}

TEST_CASE("exactly_once is refused with shards: one transactional.id, one publishing relay",
          "[config][eos]") {
  ParseResult r = parse_config(R"(postgres:
  dsn: "host=db"
kafka:
  bootstrap_servers: "k:1"
source:
  polling:
    shards: 4
delivery:
  guarantee: exactly_once
)",
                               with_env({}));
  REQUIRE_FALSE(r.config);
  const ConfigError* g = find_error(r, "delivery.guarantee");
  REQUIRE(g != nullptr);
  CHECK(g->line == 9);
  CHECK_THAT(g->message, Catch::Contains("source.polling.shards"));
}

TEST_CASE("the message section: topic template, Debezium's options, CloudEvents",
          "[config][message]") {
  ParseResult r = parse_config(std::string(kMinimal) + R"(message:
  topic_template: outbox.event.{topic}
  id_header: true
  json_string_key: true
  json_string_value: true
  cloudevents:
    enabled: true
    source: /orders-service
    type_header: eventType
    content_type: application/avro
)",
                               with_env({}));
  REQUIRE(r.errors.empty());
  const MessageConfig& m = r.config->message;
  CHECK(m.topic_template == "outbox.event.{topic}");
  CHECK(m.id_header);
  CHECK(m.json_string_key);
  CHECK(m.json_string_value);
  CHECK(m.cloudevents.enabled);
  CHECK(m.cloudevents.source == "/orders-service");
  CHECK(m.cloudevents.type_header == "eventType");
  CHECK(m.cloudevents.content_type == "application/avro");

  ParseResult d = parse_config(kMinimal, with_env({}));
  REQUIRE(d.errors.empty());
  CHECK(d.config->message.topic_template == "{topic}");
  CHECK_FALSE(d.config->message.cloudevents.enabled);
}

TEST_CASE("CloudEvents without a source, and a template Kafka cannot take, name their key",
          "[config][message]") {
  ParseResult r = parse_config(std::string(kMinimal) + R"(message:
  topic_template: "events/{aggregatetype}"
  cloudevents:
    enabled: true
)",
                               with_env({}));
  const ConfigError* t = find_error(r, "message.topic_template");
  REQUIRE(t != nullptr);
  CHECK(t->line == 6);
  CHECK_THAT(t->message, Catch::Contains("the only variable is {topic}"));
  const ConfigError* ce = find_error(r, "message.cloudevents.enabled");
  REQUIRE(ce != nullptr);
  CHECK(ce->line == 8);
  CHECK_THAT(ce->message, Catch::Contains("needs message.cloudevents.source"));

  ParseResult bad =
      parse_config(std::string(kMinimal) + "message:\n  topic_template: a/{topic}\n", with_env({}));
  REQUIRE(find_error(bad, "message.topic_template") != nullptr);
  CHECK_THAT(find_error(bad, "message.topic_template")->message,
             Catch::Contains("must give a Kafka topic name"));
}

namespace {

std::string read_source_file(const std::string& relative) {
  std::ifstream in(std::string(OUTBOX_SOURCE_DIR) + "/" + relative, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The dotted paths of every key line of a YAML text, commented-out ones ("# name: value")
// included: what a reader of example.yaml finds.
std::set<std::string> yaml_key_paths(const std::string& text) {
  std::set<std::string> paths;
  std::vector<std::pair<std::size_t, std::string>> open;  // indent -> name of the sections open
  static const std::regex kLine(R"(^( *)(# )?([a-z_]+):( .*)?$)");
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::smatch m;
    if (!std::regex_match(line, m, kLine)) continue;
    std::size_t indent = m[1].length();
    while (!open.empty() && open.back().first >= indent) open.pop_back();
    std::string path;
    for (const auto& [_, name] : open) path += name + ".";
    path += m[3].str();
    paths.insert(path);
    if (!m[2].matched && !m[4].matched) open.emplace_back(indent, m[3].str());
  }
  return paths;
}

// A file with the required keys and `path` set to `value` (in place of a required key's own
// value when it is one); *line is set to the line `path` is on.
std::string file_with(const std::string& path, const std::string& value, int* line) {
  std::vector<std::pair<std::string, std::string>> entries = {
      {"postgres.dsn", "host=db"}, {"kafka.bootstrap_servers", "k:9092"}};
  auto same =
      std::find_if(entries.begin(), entries.end(), [&](const auto& e) { return e.first == path; });
  if (same != entries.end()) entries.erase(same);
  entries.emplace_back(path, value);
  std::string text;
  std::vector<std::string> open;
  int lines = 0;
  for (const auto& [p, v] : entries) {
    std::vector<std::string> parts;
    for (std::size_t start = 0;;) {
      std::size_t dot = p.find('.', start);
      parts.push_back(p.substr(start, dot == std::string::npos ? dot : dot - start));
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    std::size_t common = 0;
    while (common < open.size() && common + 1 < parts.size() && open[common] == parts[common]) {
      ++common;
    }
    open.resize(common);
    for (std::size_t i = common; i + 1 < parts.size(); ++i) {
      text += std::string(i * 2, ' ') + parts[i] + ":\n";
      ++lines;
      open.push_back(parts[i]);
    }
    text += std::string((parts.size() - 1) * 2, ' ') + parts.back() + ": " + v + "\n";
    if (p == path)
      *line = ++lines;
    else
      ++lines;
  }
  return text;
}

}  // namespace

TEST_CASE("the committed example.yaml and configuration reference are current", "[config]") {
  // Both are rendered from the key table: `cmake --build build --target config-docs`.
  CHECK(read_source_file(kExamplePath) == example_yaml());
  CHECK(read_source_file(kReferencePath) == reference_markdown());
}

TEST_CASE("every declared key appears in example.yaml and in the reference", "[config]") {
  std::set<std::string> in_example = yaml_key_paths(read_source_file(kExamplePath));
  std::string reference = read_source_file(kReferencePath);
  REQUIRE(keys().size() > 40);
  for (const Key& key : keys()) {
    INFO(key.path);
    CHECK(in_example.count(key.path) == 1);
    CHECK(reference.find("| `" + key.path + "` |") != std::string::npos);
    CHECK_FALSE(key.description.empty());
    CHECK(find_key(key.path) == &key);  // declared once
  }
  for (const Section& section : sections()) {
    INFO(section.path);
    CHECK(in_example.count(section.path) == 1);
  }
}

TEST_CASE("a bad value of any key is reported with the key and its line", "[config]") {
  for (const Key& key : keys()) {
    INFO(key.path);
    int line = 0;
    // A list where a single value belongs, a single value where a mapping belongs.
    std::string bad = key.mapping || key.type == "list of mappings" ? "oops" : "[a, b]";
    ParseResult r = parse_config(file_with(key.path, bad, &line), with_env({}));
    REQUIRE_FALSE(r.config);
    const ConfigError* e = find_error(r, key.path);
    REQUIRE(e != nullptr);
    CHECK(e->line == line);
    CHECK_THAT(e->to_string(),
               Catch::StartsWith("line " + std::to_string(line) + ": " + key.path + ": "));
    // A word where a number or one of a set of words belongs.
    if (key.type.rfind("integer", 0) == 0 || key.type == "one of" || key.type == "boolean") {
      r = parse_config(file_with(key.path, "sideways", &line), with_env({}));
      REQUIRE_FALSE(r.config);
      e = find_error(r, key.path);
      REQUIRE(e != nullptr);
      CHECK(e->line == line);
      CHECK_THAT(e->message, Catch::Contains("\"sideways\""));
    }
  }
}

TEST_CASE("an unknown key suggests the key meant: a typo, or a key of another section",
          "[config]") {
  ParseResult r = parse_config(R"(postgres:
  dsn: "host=db"
  conect_timeout_s: 5
kafka:
  bootstrap_servers: "k:1"
source:
  batch_size: 10
  zzz: 1
)",
                               with_env({}));
  REQUIRE(r.errors.size() == 3);
  // (the list of known names grows with the table: only its start is fixed)
  CHECK_THAT(r.errors[0].to_string(),
             Catch::StartsWith("line 3: postgres.conect_timeout_s: unknown key (did you mean "
                               "connect_timeout_s? known here: dsn, password, password_file, "
                               "connect_timeout_s, "));
  CHECK_THAT(r.errors[1].message, Catch::Contains("did you mean source.polling.batch_size or "
                                                  "retention.batch_size?"));
  CHECK(r.errors[2].message ==
        "unknown key (known here: mode, tables, polling, pipeline, replication)");
}

TEST_CASE("every configuration key the command line's help names is declared", "[config]") {
  // --help names keys (relay.shutdown_timeout_ms, http.port, ...): they must exist.
  std::string main_cc = read_source_file("relay/cli/main.cc");
  std::set<std::string> top;
  for (const Key& key : keys()) top.insert(key.path.substr(0, key.path.find('.')));
  static const std::regex kDotted(R"(\b([a-z]+)\.([a-z_]+(\.[a-z_]+)?)\b)");
  int named = 0;
  for (std::sregex_iterator it(main_cc.begin(), main_cc.end(), kDotted), end; it != end; ++it) {
    if (!top.count((*it)[1].str()) || (*it)[1].str() == "config") continue;
    // A member call (message.c_str()) is code, not a key.
    if (it->suffix().first != main_cc.end() && *it->suffix().first == '(') continue;
    INFO((*it)[0].str());
    CHECK(find_key((*it)[0].str()) != nullptr);
    ++named;
  }
  CHECK(named >= 5);
}
