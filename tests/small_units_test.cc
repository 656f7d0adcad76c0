// Tests of the small pieces: backoff, array literals, connection strings, error classes, JSON.
#include <catch2/catch.hpp>

#include "common/logging.h"
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
  auto info = pg::build_conninfo("host=db dbname=app password=old", "n'ew", 7, &error);
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
  auto info = pg::build_conninfo("postgresql://u@db:5433/app?connect_timeout=2", "", 10, &error);
  REQUIRE(info);
  CHECK_THAT(*info, Catch::Contains("port='5433'"));
  CHECK_THAT(*info, Catch::Contains("connect_timeout='2'"));
  CHECK_THAT(*info, !Catch::Contains("connect_timeout=10"));
  CHECK_FALSE(pg::build_conninfo("host=db nonsense", "", 10, &error));
  CHECK_FALSE(error.empty());
}

TEST_CASE("Kafka errors are classed by who is at fault", "[kafka]") {
  using core::FailureKind;
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) == FailureKind::permanent);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION) == FailureKind::permanent);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) == FailureKind::row_retriable);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED) ==
        FailureKind::row_retriable);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR__MSG_TIMED_OUT) == FailureKind::transient);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR__TRANSPORT) == FailureKind::transient);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS) == FailureKind::transient);
  CHECK(kafka::classify(RD_KAFKA_RESP_ERR__FATAL) == FailureKind::transient);
}

TEST_CASE("log messages are escaped for JSON lines", "[logging]") {
  CHECK(logging::json_escape("a \"b\"\n\\c\x01") == "a \\\"b\\\"\\n\\\\c\\u0001");
}
