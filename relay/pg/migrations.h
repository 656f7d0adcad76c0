// The schema/ migrations, embedded in the binary, and the runner behind `outbox-relay migrate`.
//
// Safe to run twice (applied versions are recorded in outbox.schema_migrations and skipped)
// and from two processes at once (a session advisory lock serialises runners; the second
// one finds everything applied).
#pragma once

#include <string>
#include <vector>

#include "core/ports.h"

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

struct MigrationReport {
  std::vector<std::string> applied;   //!< applied by this run
  std::vector<std::string> skipped;   //!< applied before
  std::vector<std::string> warnings;  //!< e.g. checksum drift
};

//! Applies what is missing, each migration in its own transaction (a file whose first line
//! is "-- outbox-relay: no transaction" runs on its own, outside one: CREATE INDEX
//! CONCURRENTLY). When every migration is recorded already it changes nothing and needs only
//! SELECT on outbox.schema_migrations (the relay's role has it). Throws on failure with the
//! migration's name and the server's message, which for a missing privilege says that a
//! privileged role is needed (postgres.admin_dsn); what was applied before stays applied.
//! The pauses (waiting for another runner's lock, and after a lock_timeout) are on `clock`.
MigrationReport migrate(const std::string& conninfo, core::Clock& clock);

//! Versions recorded in outbox.schema_migrations; empty when the table does not exist.
std::vector<int> applied_versions(const std::string& conninfo);

}  // namespace outbox::pg
