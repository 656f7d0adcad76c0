// Defects found by trying the relay as its users would (integration/tests/test_encoding.py,
// test_ops_settings.py has the end-to-end side of each).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <optional>
#include <string>

#include "config/config.h"
#include "pg/conninfo.h"

using namespace outbox;

namespace {

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

// Regression: the sessions used the dsn's client_encoding, PGCLIENTENCODING or the database's,
// so keys and headers reached Kafka in that encoding, or every read failed.
TEST_CASE("the relay's sessions always use UTF-8, whatever the dsn or PGCLIENTENCODING say",
          "[pg][user-report][regression]") {
  std::string error;
  auto plain = pg::build_conninfo("host=localhost dbname=app", "", 10, &error);
  REQUIRE(plain);
  CHECK(occurrences(*plain, "client_encoding=") == 1);
  CHECK_THAT(*plain, Catch::Contains("client_encoding='UTF8'"));

  auto latin =
      pg::build_conninfo("host=localhost dbname=app client_encoding=LATIN1", "", 10, &error);
  REQUIRE(latin);
  CHECK(occurrences(*latin, "client_encoding=") == 1);
  CHECK_THAT(*latin, Catch::Contains("client_encoding='UTF8'") && !Catch::Contains("LATIN1"));

  auto uri =
      pg::build_conninfo("postgresql://localhost/app?client_encoding=SQL_ASCII", "", 10, &error);
  REQUIRE(uri);
  CHECK_THAT(*uri, Catch::Contains("client_encoding='UTF8'") && !Catch::Contains("SQL_ASCII"));
}

// Regression: kafka.properties accepted `partitioner: random`, which ignores the key and
// spreads one key's events over partitions, out of order.
TEST_CASE("a partitioner that ignores the key is refused: it would break per-key order",
          "[config][user-report][regression]") {
  auto parse = [](const std::string& value) {
    config::ParseOptions o;
    o.env = [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
    return config::parse_config(
        "postgres:\n  dsn: h\nkafka:\n  bootstrap_servers: b\n"
        "  properties:\n    partitioner: " +
            value + "\n",
        o);
  };
  auto refused = parse("random");
  REQUIRE_FALSE(refused.config);
  REQUIRE(refused.errors.size() == 1);
  CHECK(refused.errors[0].key == "kafka.properties.partitioner");
  CHECK(refused.errors[0].line == 6);
  CHECK_THAT(refused.errors[0].message, Catch::Contains("per-key order"));
  for (const char* keyed : {"consistent_random", "murmur2_random", "murmur2", "fnv1a_random"}) {
    INFO(keyed);
    CHECK(parse(keyed).config);
  }
}
