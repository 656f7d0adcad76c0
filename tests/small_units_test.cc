// Tests of the small pieces: backoff, array literals, connection strings, error classes, JSON.
#include <libpq-fe.h>
#include <catch2/catch.hpp>

#include <cstdlib>
#include <map>
#include <optional>
#include <string>

#include "common/logging.h"
#include "config/config.h"
#include "core/backoff.h"
#include "kafka/error_class.h"
#include "pg/conninfo.h"
#include "pg/pg_array.h"

using namespace outbox;
using std::chrono::milliseconds;

TEST_CASE("backoff doubles up to its cap and resets", "[backoff]") {
  core::Backoff b(milliseconds(100), milliseconds(350));
  CHECK(b.next() == milliseconds(100));
  CHECK(b.next() == milliseconds(200));
  CHECK(b.next() == milliseconds(350));
  CHECK(b.next() == milliseconds(350));
  b.reset();
  CHECK(b.next() == milliseconds(100));
}

TEST_CASE("array literals escape quotes and backslashes", "[pg]") {
  CHECK(pg::bigint_array({}) == "{}");
  CHECK(pg::bigint_array({1, -2, 9000000000}) == "{1,-2,9000000000}");
  CHECK(pg::text_array({"a", "b \"c\"", "d\\e", ""}) == R"({"a","b \"c\"","d\\e",""})");
}

TEST_CASE("the password is added to the connection string and never shown", "[pg]") {
  std::string error;
  auto info =
      pg::build_conninfo("host=db dbname=app password=old sslmode=verify-full", "n'ew", 7, &error);
  REQUIRE(info);
  CHECK_THAT(*info, Catch::Contains("password='n\\'ew'"));
  CHECK_THAT(*info, !Catch::Contains("old"));
  CHECK_THAT(*info, Catch::Contains("connect_timeout='7'") || Catch::Contains("connect_timeout=7"));
  CHECK_THAT(*info, Catch::Contains("application_name"));

  CHECK(pg::redact_dsn("host=db password=secret user=u") == "user=u password=*** host=db");
  CHECK_THAT(pg::redact_dsn("postgresql://u:secret@db:5433/app"), !Catch::Contains("secret"));
}

TEST_CASE("a URI dsn is accepted and a broken one names the problem", "[pg]") {
  std::string error;
  auto info = pg::build_conninfo("postgresql://u@db:5433/app?connect_timeout=2", "", 10, &error,
                                 /*allow_weak_tls=*/true);
  REQUIRE(info);
  CHECK_THAT(*info, Catch::Contains("port='5433'"));
  CHECK_THAT(*info, Catch::Contains("connect_timeout='2'"));
  CHECK_THAT(*info, !Catch::Contains("connect_timeout=10"));
  CHECK_FALSE(pg::build_conninfo("host=db nonsense", "", 10, &error));
  CHECK_FALSE(error.empty());
}

namespace {

// The keywords a connection string sets, as libpq reads them.
std::map<std::string, std::string> keywords(const std::optional<std::string>& conninfo) {
  REQUIRE(conninfo);
  std::map<std::string, std::string> out;
  PQconninfoOption* options = PQconninfoParse(conninfo->c_str(), nullptr);
  REQUIRE(options != nullptr);
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (o->val != nullptr) out[o->keyword] = o->val;
  }
  PQconninfoFree(options);
  return out;
}

std::optional<std::string> conninfo(const std::string& dsn) {
  std::string error;
  auto info = pg::build_conninfo(dsn, "", 10, &error, /*allow_weak_tls=*/true);
  INFO(error);
  return info;
}

const char* const kServerDefaults =
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 "
    "-c tcp_user_timeout=10000";

// PGOPTIONS unset while a test runs (build_conninfo reads it when the dsn has no options).
struct NoPgOptions {
  std::optional<std::string> saved;
  NoPgOptions() {
    if (const char* v = std::getenv("PGOPTIONS")) saved = v;
    unsetenv("PGOPTIONS");
  }
  ~NoPgOptions() {
    if (saved) setenv("PGOPTIONS", saved->c_str(), 1);
  }
};

}  // namespace

TEST_CASE("keepalive and TCP timeout defaults are added on both ends", "[pg]") {
  NoPgOptions no_env;
  for (const char* dsn : {"host=db dbname=app", "postgresql://u@db/app"}) {
    INFO(dsn);
    auto k = keywords(conninfo(dsn));
    CHECK(k["keepalives"] == "1");
    CHECK(k["keepalives_idle"] == "5");
    CHECK(k["keepalives_interval"] == "2");
    CHECK(k["keepalives_count"] == "3");
    CHECK(k["tcp_user_timeout"] == "10000");
    CHECK(k["options"] == kServerDefaults);
    CHECK(k["host"] == "db");
    CHECK(k["application_name"] == "outbox-relay");
  }
}

TEST_CASE("each client-side default yields to the dsn", "[pg]") {
  NoPgOptions no_env;
  const std::map<std::string, std::string> defaults = {{"keepalives", "1"},
                                                       {"keepalives_idle", "5"},
                                                       {"keepalives_interval", "2"},
                                                       {"keepalives_count", "3"},
                                                       {"tcp_user_timeout", "10000"}};
  for (const auto& [keyword, value] : defaults) {
    for (const std::string& dsn :
         {"host=db " + keyword + "=0", "postgresql://db/app?" + keyword + "=0"}) {
      INFO(dsn);
      auto k = keywords(conninfo(dsn));
      CHECK(k[keyword] == "0");  // libpq takes the last value: a default after it would win
      for (const auto& [other, other_value] : defaults) {
        if (other != keyword) CHECK(k[other] == other_value);
      }
      CHECK(k["options"] == kServerDefaults);
    }
  }
}

TEST_CASE("the dsn's options are kept and only settings they lack are added", "[pg]") {
  NoPgOptions no_env;
  SECTION("unrelated options are kept in front") {
    auto k = keywords(conninfo("host=db options='-c statement_timeout=5s'"));
    CHECK(k["options"] == std::string("-c statement_timeout=5s ") + kServerDefaults);
  }
  SECTION("URI form") {
    auto k = keywords(conninfo(
        "postgresql://db/app?options=-c%20tcp_keepalives_idle%3D60%20-c%20search_path%3Dx"));
    CHECK(k["options"] ==
          "-c tcp_keepalives_idle=60 -c search_path=x -c tcp_keepalives_interval=2 "
          "-c tcp_keepalives_count=3 -c tcp_user_timeout=10000");
  }
  SECTION("each server-side setting yields, whatever its spelling") {
    CHECK(keywords(conninfo("host=db options='-c tcp_keepalives_idle=60'"))["options"] ==
          "-c tcp_keepalives_idle=60 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 "
          "-c tcp_user_timeout=10000");
    CHECK(keywords(conninfo("host=db options='-ctcp_keepalives_interval=9'"))["options"] ==
          "-ctcp_keepalives_interval=9 -c tcp_keepalives_idle=5 -c tcp_keepalives_count=3 "
          "-c tcp_user_timeout=10000");
    CHECK(keywords(conninfo("host=db options='--tcp-keepalives-count=7'"))["options"] ==
          "--tcp-keepalives-count=7 -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 "
          "-c tcp_user_timeout=10000");
    CHECK(keywords(conninfo("host=db options='-c TCP_User_Timeout=0'"))["options"] ==
          "-c TCP_User_Timeout=0 -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 "
          "-c tcp_keepalives_count=3");
  }
  SECTION("all four set: options unchanged") {
    std::string all =
        "-c tcp_keepalives_idle=1 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=1 "
        "-c tcp_user_timeout=1";
    CHECK(keywords(conninfo("host=db options='" + all + "'"))["options"] == all);
  }
  SECTION("escaped spaces stay inside one setting") {
    auto k =
        keywords(conninfo(R"(host=db options='-c application_name=a\\ -c\\ tcp_user_timeout=1')"));
    CHECK(k["options"] ==
          std::string(R"(-c application_name=a\ -c\ tcp_user_timeout=1 )") + kServerDefaults);
  }
  SECTION("client- and server-side tcp_user_timeout are independent") {
    auto k = keywords(conninfo("host=db tcp_user_timeout=0"));
    CHECK(k["tcp_user_timeout"] == "0");
    CHECK_THAT(k["options"], Catch::Contains("-c tcp_user_timeout=10000"));
  }
}

TEST_CASE("PGOPTIONS counts as the user's options when the dsn has none", "[pg]") {
  NoPgOptions restore;
  setenv("PGOPTIONS", "-c tcp_user_timeout=2000 -c work_mem=8MB", 1);
  CHECK(keywords(conninfo("host=db"))["options"] ==
        "-c tcp_user_timeout=2000 -c work_mem=8MB -c tcp_keepalives_idle=5 "
        "-c tcp_keepalives_interval=2 -c tcp_keepalives_count=3");
  CHECK(keywords(conninfo("host=db options='-c work_mem=1MB'"))["options"] ==
        std::string("-c work_mem=1MB ") + kServerDefaults);
  unsetenv("PGOPTIONS");
}

TEST_CASE("Kafka errors are classed by who is at fault", "[kafka]") {
  using core::FailureKind;
  // A broker's "too large" may be about the whole produce request; librdkafka's own check
  // at produce time is about the one message.
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) == FailureKind::suspect);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE) == FailureKind::suspect);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR_INVALID_RECORD) == FailureKind::suspect);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, true) == FailureKind::permanent);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION) == FailureKind::permanent);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) == FailureKind::topic_blocked);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED) ==
        FailureKind::topic_blocked);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR_POLICY_VIOLATION) == FailureKind::topic_blocked);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR__MSG_TIMED_OUT) == FailureKind::transient);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR__TRANSPORT) == FailureKind::transient);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS) == FailureKind::transient);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR__FATAL) == FailureKind::transient);
}

TEST_CASE("log messages are escaped for JSON lines", "[logging]") {
  CHECK(logging::json_escape("a \"b\"\n\\c\x01") == "a \\\"b\\\"\\n\\\\c\\u0001");
}

TEST_CASE("multi-line messages are folded into one text log line", "[logging]") {
  // libpq's messages end with a line break and put a hint on a tab-indented second line.
  CHECK(logging::fold_lines("connection refused\n\tIs the server running?\n; retrying") ==
        "connection refused Is the server running? ; retrying");
  CHECK(logging::fold_lines("ends with a break\n") == "ends with a break");
  CHECK(logging::fold_lines("a  b\tc") == "a  b\tc");  // no break: spacing kept
  CHECK(logging::fold_lines("x \r\n y") == "x y");
}

TEST_CASE("log levels are the configuration's words", "[logging]") {
  CHECK(config::is_log_level("warn"));
  CHECK_FALSE(config::is_log_level("warning"));
  CHECK_FALSE(config::is_log_level("bogus"));
}
