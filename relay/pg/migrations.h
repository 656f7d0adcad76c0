// The schema/ migrations, embedded in the binary, and the runner behind `outbox-relay migrate`.
//
// Safe to run twice (applied versions are recorded in outbox.schema_migrations and skipped)
// and from two processes at once (a session advisory lock serialises runners; the second
// one finds everything applied).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <pqxx/connection>
#include <pqxx/transaction_base>

#include "core/ports.h"
#include "pg/source_tables.h"

namespace outbox::pg {

struct Migration {
  int version;
  std::string name;  //!< file name without .sql, e.g. "0001_outbox_events"
  std::string sql;
};

//! Every schema/NNNN_*.sql in version order.
const std::vector<Migration>& embedded_migrations();

//! Hex FNV-1a of the SQL text: recorded, to notice a migration edited after it was applied.
std::string checksum(const std::string& sql);

//! The group roles a database's schema grants to (postgres.relay_role, postgres.writer_role).
//! Roles belong to the whole cluster: with the defaults, every database migrated with them
//! shares one relay role and one writer role, so a relay login of one database may read and
//! mark another's outbox and a writer of one may enqueue into another. Names of their own per
//! database keep them apart (docs/guide/roles.md).
struct RoleNames {
  std::string relay = "outbox_relay";    //!< reads and marks outbox.events
  std::string writer = "outbox_writer";  //!< calls outbox.enqueue
};

//! `sql` (a schema/ file, which names the roles outbox_relay and outbox_writer) with the
//! roles of `roles`: whole identifiers only, never part of a longer name.
std::string with_role_names(const std::string& sql, const RoleNames& roles);

//! Every GRANT of the schema/ files to a role of `roles`, in file order: what the roles hold
//! once every migration has run (granted again by migrate, so that roles named after the
//! schema was migrated get them too).
std::vector<std::string> role_grants(const RoleNames& roles);

struct MigrationReport {
  std::vector<std::string> applied;   //!< applied by this run
  std::vector<std::string> skipped;   //!< applied before
  std::vector<std::string> warnings;  //!< e.g. checksum drift
  //! What was done about each role: "NAME: created", "NAME: present", and "NAME: granted"
  //! once the schema's privileges were granted to it.
  std::vector<std::string> roles;
  //! A line per configured source table (install_source_tables).
  std::vector<std::string> source_tables;
};

//! Applies what is missing, each migration in its own transaction (a file whose first line
//! is "-- outbox-relay: no transaction" runs on its own, outside one: CREATE INDEX
//! CONCURRENTLY). When every migration is recorded already it changes nothing and needs only
//! SELECT on outbox.schema_migrations (the relay's role has it). Throws on failure with the
//! migration's name and the server's message, which for a missing privilege says that a
//! privileged role is needed (postgres.admin_dsn); what was applied before stays applied.
//! Roles: when the connected role owns schema outbox (or is about to create it), the roles of
//! `roles` are created when missing (only then is CREATEROLE needed; a role that exists is
//! used as it is) and, once the migrations ran, granted the schema's privileges again
//! (role_grants), so that renamed roles get them on a database migrated before.
//! Source tables: once the schema is up to date, the copy of each of `source_tables` is
//! installed where it is not as configured (install_source_tables); none configured, none
//! touched.
//! The pauses (waiting for another runner's lock, and after a lock_timeout) are on `clock`.
MigrationReport migrate(const std::string& conninfo, core::Clock& clock,
                        const RoleNames& roles = {},
                        const std::vector<SourceTable>& source_tables = {});

//! Runs `body` in a transaction under lock_timeout 1 s; when a lock is not granted in time,
//! rolls back, says on stderr that `what` waits for `holders`, pauses on `clock` (doubling
//! up to 5 s) and runs it again. Services writing meanwhile queue behind the DDL for at most
//! that second. Other errors are thrown.
void run_under_lock_timeout(pqxx::connection& conn, const std::string& what,
                            const std::string& holders, core::Clock& clock,
                            const std::function<void(pqxx::transaction_base&)>& body);

//! Versions recorded in outbox.schema_migrations; empty when the table does not exist.
std::vector<int> applied_versions(const std::string& conninfo);

}  // namespace outbox::pg
