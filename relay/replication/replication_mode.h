// Replication mode's parts, built once by cli/: the outbox table on the leader's session
// (PgReplicationTable, replication_table.h), the walsender session (PgReplicationStream,
// replication_stream.h) and the state machine between them (ReplicationSource,
// replication_source.h), which is the core::OutboxStore the relay loop drives and where the
// hand-over from the pending rows to the stream and the confirmed position are argued and
// kept.
//
// Lifecycle and thread: as core::OutboxStore, one worker thread; `clock` outlives this; no
// I/O until the loop's first read.
#pragma once

#include <functional>
#include <string>

#include "core/ports.h"
#include "pg/conninfo.h"
#include "replication/replication_source.h"
#include "replication/replication_stream.h"
#include "replication/replication_table.h"

namespace outbox::replication {

class ReplicationMode {
 public:
  //! `stopping` tells a long wait on the server (creating the slot) to give up.
  ReplicationMode(pg::Conninfo conninfo, std::string redacted, ReplicationSettings options,
                  core::Clock& clock, std::function<bool()> stopping);

  //! What the relay loop reads and marks through.
  core::OutboxStore& store() { return source_; }
  //! The leader lock's session (metrics, readiness, retention); any thread.
  const core::Leadership& leadership() const { return table_.leadership(); }

 private:
  PgReplicationTable table_;
  PgReplicationStream stream_;
  ReplicationSource source_;  // last: destroyed first (it reports the position at a stop)
};

}  // namespace outbox::replication
