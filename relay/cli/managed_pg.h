// Managed PostgreSQL services (Amazon RDS and Aurora, Google Cloud SQL, Azure Database for
// PostgreSQL) as `check` sees them: how it recognises one from the roles and settings the
// service creates, and the fixes its operators can apply there. On these services no one is
// superuser, ALTER SYSTEM is refused, and server settings are changed through the provider
// (a parameter group, a database flag, a server parameter); on RDS and Aurora replication
// is granted by membership of the role rds_replication, not by the REPLICATION attribute.
//
// The pure part (detect_managed_service and the fixes) is unit-tested
// (tests/managed_pg_test.cc); read_server_facts is the one query, run by `check`.
#pragma once

#include <optional>
#include <string>

namespace pqxx {
class transaction_base;
}

namespace outbox::cli {

//! What the server shows of the service it runs in: custom settings (NULL when the server
//! does not define them) and marker roles. Settings are read as the relay's session sees
//! them, so per-database or per-role values count.
struct ServerFacts {
  std::optional<std::string> rds_logical_replication;    //!< rds.logical_replication
  std::optional<std::string> cloudsql_logical_decoding;  //!< cloudsql.logical_decoding
  std::optional<std::string>
      azure_replication_support;                //!< azure.replication_support (Single Server)
  std::optional<std::string> azure_extensions;  //!< azure.extensions (Flexible Server)
  bool rds_superuser_role = false;              //!< role rds_superuser exists
  bool rds_replication_role = false;            //!< role rds_replication exists
  bool rds_replication_member = false;  //!< the session's role is a member of rds_replication
  bool cloudsqlsuperuser_role = false;  //!< role cloudsqlsuperuser exists
  bool azure_pg_admin_role = false;     //!< role azure_pg_admin exists
};

enum class ManagedService { none, rds, cloud_sql, azure };

//! Reads the facts in one query; errors propagate (check reports them).
ServerFacts read_server_facts(pqxx::transaction_base& tx);

//! Which service the facts point to: its settings or its marker role (rds_superuser,
//! cloudsqlsuperuser, azure_pg_admin). RDS first, then Cloud SQL, then Azure.
ManagedService detect_managed_service(const ServerFacts& facts);

//! "Amazon RDS or Aurora (setting rds.logical_replication = off, role rds_superuser)": the
//! service and what it was recognised by. Empty for ManagedService::none.
std::string describe_managed_service(ManagedService service, const ServerFacts& facts);

//! How to get wal_level = logical on this service (for none: ALTER SYSTEM and a restart).
std::string wal_level_fix(ManagedService service, const ServerFacts& facts);

//! Whether the session's role may open a replication connection, and what `check` says.
struct ReplicationPrivilege {
  bool ok = false;
  std::string detail;  //!< "role relay may replicate (member of rds_replication)"
  std::string fix;     //!< when not ok: the statement, and who may run it on this service
};

//! `role` and `attribute` (rolreplication OR rolsuper) as pg_roles has them. On RDS and
//! Aurora membership of rds_replication counts as the privilege.
ReplicationPrivilege replication_privilege(ManagedService service, const ServerFacts& facts,
                                           const std::string& role, bool attribute);

}  // namespace outbox::cli
