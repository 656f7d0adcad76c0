// outbox.events as replication mode's state machine sees it (pg/replication_ports.h), on the
// relay's normal session: PgOutboxStore's connection, which holds the leader lock, so that
// only the leader reads, publishes and marks.
//
// Lifecycle: constructed on a PgOutboxStore that outlives it; used from the worker thread.
// Every failure is core::UnavailableError (and the session is re-opened on the next call).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "pg/pg_store.h"
#include "pg/replication_ports.h"

namespace outbox::pg {

//! A pg_snapshot as pg_current_snapshot()::text prints it: "xmin:xmax:xip,xip,...".
struct PgSnapshot {
  std::uint64_t xmin = 0;
  std::uint64_t xmax = 0;
  std::vector<std::uint64_t> xip;  //!< in progress when the snapshot was taken

  static std::optional<PgSnapshot> parse(std::string_view text);
  //! Whether the snapshot shows the commit of a transaction known to have committed, given
  //! its 32-bit xid (as a pgoutput Begin carries it; the epoch is taken from xmax, valid
  //! within 2^31 transactions of it, which the server's wraparound protection ensures).
  bool shows_committed(std::uint32_t xid) const;
};

class PgReplicationTable : public ReplicationTable {
 public:
  explicit PgReplicationTable(PgOutboxStore& store) : store_(store) {}

  void connect() override;
  std::vector<std::int64_t> pending_ids_in_snapshot(const std::string& snapshot) override;
  std::vector<std::uint64_t> committed_not_visible() override;
  bool visible(const std::vector<std::uint64_t>& xids) override;
  std::vector<std::int64_t> pending_ids() override;
  std::vector<core::OutboxEvent> pending_rows(const std::vector<std::int64_t>& ids,
                                              std::size_t limit, std::size_t max_bytes) override;
  RowCheck check(const std::vector<std::int64_t>& ids,
                 const std::vector<std::uint32_t>& xids) override;
  void record_outcome(const core::BatchOutcome& outcome) override;

 private:
  PgOutboxStore& store_;
};

}  // namespace outbox::pg
