#include "cli/managed_pg.h"

#include <pqxx/pqxx>

#include <cctype>
#include <vector>

namespace outbox::cli {

namespace {

// A role name as an SQL identifier: bare when PostgreSQL would keep it as written.
std::string identifier(const std::string& name) {
  bool bare =
      !name.empty() && (std::islower(static_cast<unsigned char>(name[0])) || name[0] == '_');
  for (char c : name) {
    auto u = static_cast<unsigned char>(c);
    bare = bare && (std::islower(u) || std::isdigit(u) || c == '_' || c == '$');
  }
  if (bare) return name;
  std::string quoted = "\"";
  for (char c : name) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

std::optional<std::string> optional_text(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<std::string>();
}

// "setting rds.logical_replication = off, role rds_superuser"
std::string evidence(
    std::initializer_list<std::pair<const char*, const std::optional<std::string>*>> settings,
    std::initializer_list<std::pair<const char*, bool>> roles) {
  std::vector<std::string> parts;
  for (const auto& [name, value] : settings) {
    if (value->has_value()) parts.push_back("setting " + std::string(name) + " = " + **value);
  }
  for (const auto& [name, exists] : roles) {
    if (exists) parts.push_back("role " + std::string(name));
  }
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out;
}

}  // namespace

ServerFacts read_server_facts(pqxx::transaction_base& tx) {
  // current_setting(name, true) is NULL for a setting the server does not define; to_regrole
  // is NULL for a missing role (pg_has_role would raise an error instead).
  auto row = tx.exec1(
      "SELECT current_setting('rds.logical_replication', true), "
      "current_setting('cloudsql.logical_decoding', true), "
      "current_setting('azure.replication_support', true), "
      "current_setting('azure.extensions', true), "
      "to_regrole('rds_superuser') IS NOT NULL, to_regrole('rds_replication') IS NOT NULL, "
      "EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'rds_replication' "
      "AND pg_has_role(current_user, r.oid, 'MEMBER')), "
      "to_regrole('cloudsqlsuperuser') IS NOT NULL, to_regrole('azure_pg_admin') IS NOT NULL");
  ServerFacts f;
  f.rds_logical_replication = optional_text(row[0]);
  f.cloudsql_logical_decoding = optional_text(row[1]);
  f.azure_replication_support = optional_text(row[2]);
  f.azure_extensions = optional_text(row[3]);
  f.rds_superuser_role = row[4].as<bool>();
  f.rds_replication_role = row[5].as<bool>();
  f.rds_replication_member = row[6].as<bool>();
  f.cloudsqlsuperuser_role = row[7].as<bool>();
  f.azure_pg_admin_role = row[8].as<bool>();
  return f;
}

ManagedService detect_managed_service(const ServerFacts& f) {
  if (f.rds_logical_replication || f.rds_superuser_role) return ManagedService::rds;
  if (f.cloudsql_logical_decoding || f.cloudsqlsuperuser_role) return ManagedService::cloud_sql;
  if (f.azure_replication_support || f.azure_extensions || f.azure_pg_admin_role) {
    return ManagedService::azure;
  }
  return ManagedService::none;
}

std::string describe_managed_service(ManagedService service, const ServerFacts& f) {
  switch (service) {
    case ManagedService::rds:
      return "Amazon RDS or Aurora (" +
             evidence({{"rds.logical_replication", &f.rds_logical_replication}},
                      {{"rds_superuser", f.rds_superuser_role},
                       {"rds_replication", f.rds_replication_role}}) +
             ")";
    case ManagedService::cloud_sql:
      return "Google Cloud SQL (" +
             evidence({{"cloudsql.logical_decoding", &f.cloudsql_logical_decoding}},
                      {{"cloudsqlsuperuser", f.cloudsqlsuperuser_role}}) +
             ")";
    case ManagedService::azure:
      return "Azure Database for PostgreSQL (" +
             evidence({{"azure.replication_support", &f.azure_replication_support},
                       {"azure.extensions", &f.azure_extensions}},
                      {{"azure_pg_admin", f.azure_pg_admin_role}}) +
             ")";
    case ManagedService::none:
      break;
  }
  return "";
}

std::string wal_level_fix(ManagedService service, const ServerFacts& f) {
  switch (service) {
    case ManagedService::rds:
      return "on Amazon RDS and Aurora ALTER SYSTEM is refused: set rds.logical_replication = 1 "
             "in the instance's DB parameter group (Aurora: in the DB cluster parameter group), "
             "then reboot the instance (Aurora: the writer)";
    case ManagedService::cloud_sql:
      return "on Cloud SQL ALTER SYSTEM is refused: set the database flag "
             "cloudsql.logical_decoding = on (console: Edit, Flags; or gcloud sql instances "
             "patch INSTANCE --database-flags=cloudsql.logical_decoding=on together with the "
             "instance's other flags, which that option replaces); the instance restarts";
    case ManagedService::azure:
      if (f.azure_replication_support) {  // Single Server
        return "on Azure Database for PostgreSQL ALTER SYSTEM is refused: set the server "
               "parameter azure.replication_support = logical (portal: Replication; or az "
               "postgres server configuration set --name azure.replication_support --value "
               "logical), then restart the server";
      }
      return "on Azure Database for PostgreSQL ALTER SYSTEM is refused: set the server "
             "parameter wal_level = logical (portal: Server parameters; or az postgres "
             "flexible-server parameter set --name wal_level --value logical), then restart "
             "the server";
    case ManagedService::none:
      break;
  }
  return "ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL";
}

ReplicationPrivilege replication_privilege(ManagedService service, const ServerFacts& f,
                                           const std::string& role, bool attribute) {
  ReplicationPrivilege p;
  std::string id = identifier(role);
  if (attribute) {
    p.ok = true;
    p.detail = "role " + role + " may replicate";
    return p;
  }
  if (service == ManagedService::rds && f.rds_replication_member) {
    p.ok = true;
    p.detail = "role " + role + " may replicate (member of rds_replication)";
    return p;
  }
  switch (service) {
    case ManagedService::rds:
      p.detail = "role " + role +
                 " lacks replication: on Amazon RDS and Aurora it is membership of role "
                 "rds_replication (the REPLICATION attribute cannot be granted there)";
      p.fix = "as the master user (a member of rds_superuser): GRANT rds_replication TO " + id;
      break;
    case ManagedService::cloud_sql:
    case ManagedService::azure:
    case ManagedService::none: {
      // Who may grant the attribute: the service's admin role, or a superuser.
      const char* who =
          service == ManagedService::cloud_sql
              ? "as user postgres (or another member of cloudsqlsuperuser; Cloud SQL lets it "
                "grant REPLICATION)"
          : service == ManagedService::azure
              ? "as the server's admin user (a member of azure_pg_admin; Azure lets it grant "
                "REPLICATION)"
              : "as a superuser";
      p.detail = "role " + role + " lacks REPLICATION";
      p.fix = std::string(who) + ": ALTER ROLE " + id + " REPLICATION";
      break;
    }
  }
  return p;
}

}  // namespace outbox::cli
