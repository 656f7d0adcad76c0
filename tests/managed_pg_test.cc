// `check` on managed PostgreSQL services: recognition from roles and settings, and the fixes
// each service allows (cli/managed_pg.h). The same on a real server: tests/test_check.py.
#include <catch2/catch.hpp>

#include "cli/managed_pg.h"

using namespace outbox::cli;

TEST_CASE("a managed service is recognised by its settings or its marker role", "[check]") {
  CHECK(detect_managed_service({}) == ManagedService::none);
  ServerFacts rds;
  rds.rds_logical_replication = "off";
  CHECK(detect_managed_service(rds) == ManagedService::rds);
  ServerFacts rds_role;
  rds_role.rds_superuser_role = true;
  CHECK(detect_managed_service(rds_role) == ManagedService::rds);
  ServerFacts cloud_sql;
  cloud_sql.cloudsqlsuperuser_role = true;
  CHECK(detect_managed_service(cloud_sql) == ManagedService::cloud_sql);
  ServerFacts azure;
  azure.azure_extensions = "";
  CHECK(detect_managed_service(azure) == ManagedService::azure);
  ServerFacts azure_role;
  azure_role.azure_pg_admin_role = true;
  CHECK(detect_managed_service(azure_role) == ManagedService::azure);
  // a role named rds_replication alone is not RDS: any server may have one
  ServerFacts lone;
  lone.rds_replication_role = true;
  lone.rds_replication_member = true;
  CHECK(detect_managed_service(lone) == ManagedService::none);
  CHECK_FALSE(replication_privilege(ManagedService::none, lone, "relay", false).ok);

  rds.rds_superuser_role = rds.rds_replication_role = true;
  CHECK(describe_managed_service(ManagedService::rds, rds) ==
        "Amazon RDS or Aurora (setting rds.logical_replication = off, role rds_superuser, role "
        "rds_replication)");
}

// Regression: on RDS and Aurora check failed a role that may replicate (a member of
// rds_replication) and told to ALTER ROLE ... REPLICATION, which RDS does not allow.
TEST_CASE("on RDS membership of rds_replication is the replication privilege",
          "[check][regression]") {
  ServerFacts f;
  f.rds_logical_replication = "on";
  f.rds_superuser_role = f.rds_replication_role = true;
  f.rds_replication_member = true;
  auto member = replication_privilege(ManagedService::rds, f, "relay", false);
  CHECK(member.ok);
  CHECK(member.detail == "role relay may replicate (member of rds_replication)");

  f.rds_replication_member = false;
  auto not_member = replication_privilege(ManagedService::rds, f, "Relay-1", false);
  CHECK_FALSE(not_member.ok);
  CHECK(not_member.fix ==
        "as the master user (a member of rds_superuser): GRANT rds_replication TO \"Relay-1\"");
  CHECK_THAT(not_member.detail, !Catch::Contains("ALTER ROLE"));
}

// Regression: on managed services check told to ALTER SYSTEM SET wal_level, which they refuse.
TEST_CASE("wal_level's fix is the service's own setting", "[check][regression]") {
  ServerFacts f;
  CHECK(wal_level_fix(ManagedService::none, f) ==
        "ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL");
  CHECK_THAT(wal_level_fix(ManagedService::rds, f),
             Catch::Contains("set rds.logical_replication = 1 in the instance's DB parameter "
                             "group (Aurora: in the DB cluster parameter group)"));
  CHECK_THAT(wal_level_fix(ManagedService::cloud_sql, f),
             Catch::Contains("database flag cloudsql.logical_decoding = on"));
  CHECK_THAT(wal_level_fix(ManagedService::azure, f),
             Catch::Contains("server parameter wal_level = logical"));
  f.azure_replication_support = "replica";
  CHECK_THAT(wal_level_fix(ManagedService::azure, f),
             Catch::Contains("server parameter azure.replication_support = logical"));
  for (auto s : {ManagedService::rds, ManagedService::cloud_sql, ManagedService::azure}) {
    CHECK_THAT(wal_level_fix(s, f), !Catch::Contains("ALTER SYSTEM SET"));
  }
}

TEST_CASE("the REPLICATION attribute is granted by whoever the service allows", "[check]") {
  ServerFacts f;
  CHECK(replication_privilege(ManagedService::none, f, "relay", true).ok);
  CHECK(replication_privilege(ManagedService::none, f, "relay", false).fix ==
        "as a superuser: ALTER ROLE relay REPLICATION");
  CHECK_THAT(replication_privilege(ManagedService::cloud_sql, f, "relay", false).fix,
             Catch::StartsWith("as user postgres (or another member of cloudsqlsuperuser") &&
                 Catch::EndsWith("ALTER ROLE relay REPLICATION"));
  CHECK_THAT(replication_privilege(ManagedService::azure, f, "relay", false).fix,
             Catch::Contains("azure_pg_admin") && Catch::EndsWith("ALTER ROLE relay REPLICATION"));
}
