// The outbox read from PostgreSQL's write-ahead log through a logical replication slot
// (pgoutput), behind core::OutboxStore, so the same BatchRelay drives both modes.
//
// This is the wiring only: the relay's normal session (PgOutboxStore: leader lock,
// marking) seen as a ReplicationTable (replication_table.h), the walsender session as a
// ReplicationStream (replication_stream.h), and the state machine between them,
// ReplicationSource (replication_source.h), where the hand-over from the pending rows to
// the stream and the confirmed position are argued and kept.
//
// Lifecycle and thread: as core::OutboxStore, one worker thread; `clock` outlives this.
#pragma once

#include <functional>
#include <string>

#include "core/ports.h"
#include "pg/pg_store.h"
#include "replication/replication_source.h"
#include "replication/replication_stream.h"
#include "replication/replication_table.h"

namespace outbox::replication {

class PgReplicationStore : public core::OutboxStore, public core::Leadership {
 public:
  //! `stopping` tells a long wait on the server (creating the slot) to give up.
  PgReplicationStore(pg::Conninfo conninfo, std::string redacted, ReplicationSettings options,
                     core::Clock& clock, std::function<bool()> stopping);

  std::vector<core::OutboxEvent> begin_batch(std::size_t limit, std::size_t max_bytes,
                                             const std::vector<std::string>& skip_topics) override;
  std::vector<core::OutboxEvent> read_after(std::int64_t after_id, std::size_t pending_upto,
                                            std::size_t limit, std::size_t max_bytes,
                                            const std::vector<std::string>& skip_topics) override;
  void record_outcome(const core::BatchOutcome& outcome) override;
  //! Marks go through the table's session (PgOutboxStore), which finds gone rows. The source
  //! resolves them with the rest of the outcome (nothing more can come of them), so they do
  //! not hold the slot's confirmed position back.
  std::vector<core::VanishedRow> take_vanished() override { return store_.take_vanished(); }
  bool wait_for_rows(std::chrono::milliseconds timeout) override;
  void keep_alive() noexcept override;
  //! The leader-lock session's state (see PgOutboxStore::role).
  pg::SessionRole role() const override { return store_.role(); }

 private:
  pg::PgOutboxStore store_;
  PgReplicationTable table_;
  PgReplicationStream stream_;
  ReplicationSource source_;  // last: destroyed first (it reports the position at a stop)
};

}  // namespace outbox::replication
