// TLS policy for the PostgreSQL connection, Kafka TLS refusals and secrets from files.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <map>
#include <optional>
#include <string>

#include "config/config.h"
#include "pg/conninfo.h"

using namespace outbox;

namespace {

// The libpq environment variables weak_tls_problem reads, unset while a test runs.
struct NoPgEnv {
  std::map<std::string, std::string> saved;
  NoPgEnv() {
    for (const char* name : {"PGSSLMODE", "PGHOST", "PGHOSTADDR", "PGSERVICE"}) {
      if (const char* v = std::getenv(name)) saved[name] = v;
      unsetenv(name);
    }
  }
  ~NoPgEnv() {
    for (const char* name : {"PGSSLMODE", "PGHOST", "PGHOSTADDR", "PGSERVICE"}) unsetenv(name);
    for (const auto& [name, value] : saved) setenv(name.c_str(), value.c_str(), 1);
  }
};

std::string problem(const std::string& dsn) { return pg::weak_tls_problem(dsn).value_or(""); }

config::ParseOptions with_files(std::map<std::string, std::string> files) {
  config::ParseOptions o;
  o.env = [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
  o.read_file = [files](const std::string& path) -> std::optional<std::string> {
    auto it = files.find(path);
    return it == files.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
  return o;
}

const config::ConfigError* find_error(const config::ParseResult& r, const std::string& key) {
  for (const auto& e : r.errors) {
    if (e.key == key) return &e;
  }
  return nullptr;
}

std::string with_kafka(const std::string& kafka_lines) {
  return "postgres:\n  dsn: h\nkafka:\n  bootstrap_servers: b\n" + kafka_lines;
}

}  // namespace

TEST_CASE("a dsn weaker than verify-full to a remote host is refused, naming the risk", "[pg]") {
  NoPgEnv env;
  CHECK_THAT(problem("host=db.example.com dbname=app"),
             Catch::Contains("sslmode=prefer (libpq's default)") &&
                 Catch::Contains("host db.example.com") && Catch::Contains("unencrypted") &&
                 Catch::Contains("postgres.allow_weak_tls"));
  CHECK_THAT(problem("host=db sslmode=disable"), Catch::Contains("sslmode=disable"));
  CHECK_THAT(problem("host=db sslmode=require"),
             Catch::Contains("does not check the server's certificate"));
  CHECK_THAT(problem("host=db sslmode=verify-ca"), Catch::Contains("host name"));
  CHECK(problem("host=db sslmode=verify-full sslrootcert=/ca.pem") == "");
  CHECK(problem("postgresql://u@db:5433/app?sslmode=verify-full") == "");
  CHECK_THAT(problem("postgresql://u@db:5433/app?sslmode=require"),
             Catch::Contains("sslmode=require"));
  // One remote host among several is enough to refuse.
  CHECK_THAT(problem("host=localhost,db2 port=5432,5432"), Catch::Contains("host db2"));
  // A service file may point anywhere.
  CHECK_THAT(problem("service=prod"), Catch::Contains("service file"));
}

TEST_CASE("Unix sockets and loopback need no TLS: nothing crosses a network", "[pg]") {
  NoPgEnv env;
  CHECK(problem("dbname=app") == "");  // libpq's default socket
  CHECK(problem("host=/var/run/postgresql dbname=app") == "");
  CHECK(problem("host=localhost sslmode=disable") == "");
  CHECK(problem("host=127.0.0.1") == "");
  CHECK(problem("host=127.3.4.5") == "");
  CHECK(problem("host=::1") == "");
  CHECK(problem("postgresql://u@127.0.0.1:5433/app") == "");
  CHECK(problem("host=localhost,127.0.0.1") == "");
  // hostaddr is where libpq connects; host is then only the name checked in the certificate.
  CHECK(problem("host=db.example.com hostaddr=127.0.0.1") == "");
  CHECK_THAT(problem("host=localhost hostaddr=10.1.2.3"), Catch::Contains("host 10.1.2.3"));
  // Lookalikes are not loopback.
  CHECK_THAT(problem("host=localhost.example.com"), Catch::Contains("localhost.example.com"));
  CHECK_THAT(problem("host=128.0.0.1"), Catch::Contains("128.0.0.1"));
}

TEST_CASE("the environment counts as libpq reads it", "[pg]") {
  NoPgEnv env;
  setenv("PGHOST", "db.example.com", 1);
  CHECK_THAT(problem("dbname=app"), Catch::Contains("db.example.com"));
  setenv("PGSSLMODE", "verify-full", 1);
  CHECK(problem("dbname=app") == "");
  CHECK_THAT(problem("dbname=app sslmode=require"), Catch::Contains("sslmode=require"));
}

TEST_CASE("build_conninfo refuses a weak dsn unless postgres.allow_weak_tls", "[pg]") {
  NoPgEnv env;
  std::string error;
  CHECK_FALSE(pg::build_conninfo("host=db.example.com dbname=app", "pw", 10, &error));
  CHECK_THAT(error, Catch::Contains("postgres.allow_weak_tls"));
  error.clear();
  CHECK(pg::build_conninfo("host=db.example.com dbname=app", "pw", 10, &error, true));
  CHECK(error.empty());
  CHECK(pg::build_conninfo("host=db sslmode=verify-full", "pw", 10, &error));
}

TEST_CASE("a dsn libpq cannot parse is reported without the tokens that may be secrets", "[pg]") {
  NoPgEnv env;
  std::string error;
  CHECK_FALSE(pg::build_conninfo("postgresql://u:s3cr%zzet@localhost/app", "", 10, &error));
  CHECK_THAT(error, !Catch::Contains("s3cr") && Catch::Contains("(hidden)"));
  error.clear();
  CHECK_FALSE(pg::build_conninfo("host=localhost passwordhunter2", "", 10, &error));
  CHECK_THAT(error, !Catch::Contains("hunter2"));
  error.clear();
  // A keyword is no secret: kept, so the message still says where the problem is.
  CHECK_FALSE(pg::build_conninfo("host=localhost password", "", 10, &error));
  CHECK_THAT(error, Catch::Contains("\"password\""));
}

TEST_CASE("postgres.allow_weak_tls is read", "[config]") {
  auto r = config::parse_config(
      "postgres:\n  dsn: h\n  allow_weak_tls: true\nkafka:\n"
      "  bootstrap_servers: b\n",
      with_files({}));
  REQUIRE(r.config);
  CHECK(r.config->postgres.allow_weak_tls);
  r = config::parse_config(with_kafka(""), with_files({}));
  REQUIRE(r.config);
  CHECK_FALSE(r.config->postgres.allow_weak_tls);
}

TEST_CASE("turning off Kafka's certificate checks is refused unless explicitly allowed",
          "[config]") {
  auto r = config::parse_config(with_kafka("  properties:\n    security.protocol: SSL\n"
                                           "    ssl.endpoint.identification.algorithm: none\n"),
                                with_files({}));
  const auto* e = find_error(r, "kafka.properties.ssl.endpoint.identification.algorithm");
  REQUIRE(e);
  CHECK(e->line == 7);
  CHECK_THAT(e->message, Catch::Contains("kafka.allow_no_hostname_verification: true"));

  r = config::parse_config(with_kafka("  allow_no_hostname_verification: true\n  properties:\n"
                                      "    ssl.endpoint.identification.algorithm: none\n"),
                           with_files({}));
  CHECK(r.errors.empty());

  r = config::parse_config(
      with_kafka("  properties:\n    enable.ssl.certificate.verification: \"false\"\n"),
      with_files({}));
  e = find_error(r, "kafka.properties.enable.ssl.certificate.verification");
  REQUIRE(e);
  CHECK_THAT(e->message, Catch::Contains("kafka.allow_unverified_certificates: true"));
  r = config::parse_config(with_kafka("  allow_unverified_certificates: true\n  properties:\n"
                                      "    enable.ssl.certificate.verification: \"false\"\n"),
                           with_files({}));
  CHECK(r.errors.empty());
  // The allow keys allow nothing else, and https is always fine.
  r = config::parse_config(with_kafka("  allow_unverified_certificates: true\n  properties:\n"
                                      "    ssl.endpoint.identification.algorithm: none\n"),
                           with_files({}));
  CHECK(find_error(r, "kafka.properties.ssl.endpoint.identification.algorithm"));
  r = config::parse_config(
      with_kafka("  properties:\n    ssl.endpoint.identification.algorithm: https\n"),
      with_files({}));
  CHECK(r.errors.empty());
}

TEST_CASE("Kafka secrets come from files named by kafka.secret_files", "[config]") {
  auto files = with_files({{"/run/secrets/sasl", "pa ss\n"}, {"/run/secrets/key", "kp"}});
  auto r = config::parse_config(with_kafka("  properties:\n    sasl.username: relay\n"
                                           "  secret_files:\n"
                                           "    sasl.password: /run/secrets/sasl\n"
                                           "    ssl.key.password: /run/secrets/key\n"),
                                files);
  REQUIRE(r.config);
  std::map<std::string, std::string> props(r.config->kafka.properties.begin(),
                                           r.config->kafka.properties.end());
  CHECK(props["sasl.username"] == "relay");
  CHECK(props["sasl.password"] == "pa ss");  // trailing newline dropped
  CHECK(props["ssl.key.password"] == "kp");

  r = config::parse_config(with_kafka("  secret_files:\n    sasl.password: /nope\n"), files);
  const auto* e = find_error(r, "kafka.secret_files.sasl.password");
  REQUIRE(e);
  CHECK(e->line == 6);
  CHECK_THAT(e->message, Catch::Contains("cannot read file /nope"));

  r = config::parse_config(with_kafka("  properties:\n    sasl.password: x\n"
                                      "  secret_files:\n    sasl.password: /run/secrets/sasl\n"),
                           files);
  e = find_error(r, "kafka.secret_files.sasl.password");
  REQUIRE(e);
  CHECK_THAT(e->message, Catch::Contains("not both"));
}

TEST_CASE("a refused Kafka property never echoes a secret value", "[config]") {
  auto files = with_files({{"/s", "TOPSECRET"}});
  files.kafka_check = [](const std::string& name, const std::string& value) {
    return std::optional<std::string>("Invalid value \"" + value + "\" for " + name);
  };
  auto r = config::parse_config(with_kafka("  properties:\n    sasl.password: HUSH\n"
                                           "  secret_files:\n    ssl.key.password: /s\n"),
                                files);
  REQUIRE(r.errors.size() == 2);
  for (const auto& e : r.errors) {
    CHECK_THAT(e.message, !Catch::Contains("HUSH") && !Catch::Contains("TOPSECRET") &&
                              Catch::Contains("(hidden)"));
  }
}
