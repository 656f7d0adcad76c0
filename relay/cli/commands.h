// The subcommands of outbox-relay. Each returns the process exit code (see cli/main.cc).
#pragma once

#include <string>
#include <vector>

#include "config/config.h"
#include "pg/conninfo.h"
#include "pg/replay.h"
#include "pg/source_tables.h"
#include "replication/takeover.h"

namespace outbox::cli {

enum ExitCode : int {
  kOk = 0,
  kFailure = 1,  //!< run stopped on an error, migrate failed, or a check failed
  kUsage = 2,    //!< bad command line or invalid configuration
};

//! postgres.dsn with the password and connection defaults applied; on a bad DSN prints the
//! reason and exits with kUsage.
std::string conninfo_or_exit(const config::Config& config);
//! postgres.admin_dsn when set (migrate, takeover: a privileged role), else as
//! conninfo_or_exit; on a bad DSN prints the reason and exits with kUsage.
std::string admin_conninfo_or_exit(const config::Config& config);
//! The same for a long-running relay: built again at each connection, so that
//! postgres.password_file is read again then (pg::Conninfo).
pg::Conninfo pg_conninfo_or_exit(const config::Config& config);

//! source.tables as pg/ takes them, each named by its key (source.tables[0]) in errors.
std::vector<pg::SourceTable> source_tables_of(const config::Config& config);

int run_relay(const config::Config& config);
int run_migrate(const config::Config& config);
int run_check(const config::Config& config);
int run_replay(const config::Config& config, const pg::ReplaySelection& selection);
//! `status`: backlog, oldest pending age, dead-lettered rows, leader, slot; text or JSON.
int run_status(const config::Config& config, bool json);
//! `takeover`: marks published what a stopped Debezium slot confirmed (replication/takeover.h).
int run_takeover(const config::Config& config, const replication::TakeoverOptions& options);

}  // namespace outbox::cli
