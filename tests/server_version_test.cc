#include <catch2/catch.hpp>

#include "cli/server_version.h"

using outbox::cli::kReplicationSupport;
using outbox::cli::postgres_version_problem;
using outbox::cli::postgres_version_report;

TEST_CASE("check accepts PostgreSQL 13 to 18 and refuses the others, saying why", "[check]") {
  CHECK_FALSE(postgres_version_problem(130000, "13.0"));
  CHECK_FALSE(postgres_version_problem(150014, "15.14"));
  CHECK_FALSE(postgres_version_problem(180006, "18.6"));
  auto old = postgres_version_problem(120022, "12.22");
  REQUIRE(old);
  CHECK_THAT(*old, Catch::StartsWith("PostgreSQL 12.22 is older than the supported 13 to 18 of "
                                     "polling mode") &&
                       Catch::Contains("gen_random_uuid"));
  auto young = postgres_version_problem(190000, "19devel");
  REQUIRE(young);
  CHECK_THAT(*young, Catch::StartsWith("PostgreSQL 19devel is newer than the supported 13 to 18"));
  auto old_replication = postgres_version_problem(120022, "12.22", kReplicationSupport);
  REQUIRE(old_replication);
  CHECK_THAT(*old_replication, Catch::Contains("of replication mode") &&
                                   Catch::Contains("pg_replication_slots.wal_status"));
}

TEST_CASE("check's version line speaks of each mode and of what CI tests", "[check]") {
  auto tested = postgres_version_report(160002, "16.2", /*replication_mode=*/true);
  CHECK(tested.ok);
  CHECK(tested.detail ==
        "16.2 (polling mode: supported, 13 to 18; replication mode: supported, 13 to 18; "
        "tested in CI)");

  auto untested = postgres_version_report(140011, "14.11", /*replication_mode=*/true);
  CHECK(untested.ok);
  CHECK(untested.detail ==
        "14.11 (polling mode: supported, 13 to 18; replication mode: supported, 13 to 18; "
        "not tested in CI, which tests 15, 16, 17, 18: expected to work)");

  auto old = postgres_version_report(120022, "12.22", /*replication_mode=*/false);
  CHECK_FALSE(old.ok);
  CHECK_THAT(old.detail,
             Catch::StartsWith("12.22 (polling mode: unsupported, 13 to 18; replication mode: "
                               "unsupported, 13 to 18): PostgreSQL 12.22 is older than the "
                               "supported 13 to 18 of polling mode"));
  CHECK(old.fix == "run the relay in polling mode against PostgreSQL 13 to 18");
}
