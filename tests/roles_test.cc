// The schema's roles under the names of postgres.relay_role and postgres.writer_role.
#include <catch2/catch.hpp>

#include <string>

#include "config/config.h"
#include "pg/migrations.h"

using namespace outbox;

TEST_CASE("role names are replaced as whole identifiers only", "[pg][roles]") {
  pg::RoleNames roles{"orders_relay", "orders_writer"};
  CHECK(
      pg::with_role_names("GRANT USAGE ON SCHEMA outbox TO outbox_relay, outbox_writer;", roles) ==
      "GRANT USAGE ON SCHEMA outbox TO orders_relay, orders_writer;");
  CHECK(pg::with_role_names("outbox_relay_wakeup x_outbox_relay outbox_relay", roles) ==
        "outbox_relay_wakeup x_outbox_relay orders_relay");
  CHECK(pg::with_role_names("outbox.relay_wakeup outbox_writer\n", roles) ==
        "outbox.relay_wakeup orders_writer\n");
  pg::RoleNames defaults;
  for (const auto& m : pg::embedded_migrations())
    CHECK(pg::with_role_names(m.sql, defaults) == m.sql);
}

TEST_CASE("the grants of every migration are collected for the roles", "[pg][roles]") {
  auto grants = pg::role_grants({"a_relay", "a_writer"});
  REQUIRE_FALSE(grants.empty());
  auto has = [&](const std::string& text) {
    for (const auto& g : grants) {
      if (g == text) return true;
    }
    return false;
  };
  CHECK(has("GRANT SELECT ON outbox.events TO a_relay;"));
  CHECK(has("GRANT USAGE ON SCHEMA outbox TO a_relay, a_writer;"));
  CHECK(
      has("GRANT EXECUTE ON FUNCTION outbox.enqueue(text, text, jsonb, jsonb, text) TO a_writer;"));
  CHECK(has("GRANT SELECT, INSERT ON outbox.vanished TO a_relay;"));
  for (const auto& g : grants) {
    CHECK(g.find("outbox_relay") == std::string::npos);
    CHECK(g.find("outbox_writer") == std::string::npos);
    CHECK(g.back() == ';');
  }
}

TEST_CASE("postgres.relay_role and postgres.writer_role name each database's roles",
          "[config][roles]") {
  auto parse = [](const std::string& postgres_extra) {
    return config::parse_config("postgres:\n  dsn: host=localhost\n" + postgres_extra +
                                "kafka:\n  bootstrap_servers: k:9092\n");
  };
  auto r = parse("");
  REQUIRE(r.config);
  CHECK(r.config->postgres.relay_role == "outbox_relay");  // compatible with existing installs
  CHECK(r.config->postgres.writer_role == "outbox_writer");

  r = parse("  relay_role: orders_relay\n  writer_role: orders_writer\n");
  REQUIRE(r.config);
  CHECK(r.config->postgres.relay_role == "orders_relay");
  CHECK(r.config->postgres.writer_role == "orders_writer");

  r = parse("  relay_role: Orders-Relay\n");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].key == "postgres.relay_role");
  CHECK(r.errors[0].line == 3);
  CHECK_THAT(r.errors[0].message, Catch::Contains("a-z, 0-9"));

  r = parse("  relay_role: svc\n  writer_role: svc\n");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].key == "postgres.writer_role");
  CHECK(r.errors[0].line == 4);
}
