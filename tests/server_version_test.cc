#include <catch2/catch.hpp>

#include "cli/server_version.h"

using outbox::cli::postgres_version_problem;

TEST_CASE("check accepts PostgreSQL 13 to 18 and refuses the others, saying why", "[check]") {
  CHECK_FALSE(postgres_version_problem(130000, "13.0"));
  CHECK_FALSE(postgres_version_problem(150014, "15.14"));
  CHECK_FALSE(postgres_version_problem(180006, "18.6"));
  auto old = postgres_version_problem(120022, "12.22");
  REQUIRE(old);
  CHECK_THAT(*old, Catch::StartsWith("PostgreSQL 12.22 is older than the supported 13 to 18") &&
                       Catch::Contains("gen_random_uuid"));
  auto young = postgres_version_problem(190000, "19devel");
  REQUIRE(young);
  CHECK_THAT(*young, Catch::StartsWith("PostgreSQL 19devel is newer than the supported 13 to 18"));
}
