// outbox.events as replication mode's state machine sees it (replication_ports.h), on the
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
#include "replication/replication_ports.h"

namespace outbox::replication {

//! A pg_snapshot as pg_current_snapshot()::text prints it: "xmin:xmax:xip,xip,...".
struct PgSnapshot {
  std::uint64_t xmin = 0;
  std::uint64_t xmax = 0;
  std::vector<std::uint64_t> xip;  //!< in progress when the snapshot was taken

  static std::optional<PgSnapshot> parse(std::string_view text);
  //! The full id of a 32-bit xid (as a pgoutput Begin or pg_stat_activity carry it): the
  //! epoch is taken from xmax, right within 2^31 transactions of it, which the server's
  //! wraparound protection ensures for any transaction still of interest.
  std::uint64_t full_xid(std::uint32_t xid) const;
  //! Whether the snapshot shows the commit of a transaction known to have committed.
  bool shows_committed(std::uint32_t xid) const;
  //! Whether the snapshot counts transaction `full` as ended (for a slot's exported
  //! snapshot: committed, or aborted).
  bool counts_ended(std::uint64_t full) const;
};

class PgReplicationTable : public ReplicationTable {
 public:
  explicit PgReplicationTable(pg::PgOutboxStore& store) : store_(store) {}

  void connect() override;
  Bound pending_bound_in_snapshot(const std::string& name) override;
  std::vector<std::uint64_t> not_yet_visible(const std::string& snapshot) override;
  std::vector<std::uint64_t> committed_not_visible() override;
  std::optional<FlushPoint> flush_point() override;
  bool visible(const std::vector<std::uint64_t>& xids) override;
  std::int64_t pending_bound() override;
  std::vector<core::OutboxEvent> pending_range(
      std::int64_t after_id, std::int64_t upto, std::optional<std::size_t> pending_upto,
      std::size_t limit, std::size_t max_bytes,
      const std::vector<std::string>& skip_topics) override;
  std::vector<core::OutboxEvent> pending_of_topics(const std::vector<std::string>& topics,
                                                   std::size_t limit,
                                                   std::size_t max_bytes) override;
  std::vector<core::OutboxEvent> pending_rows(const std::vector<std::int64_t>& ids,
                                              std::size_t limit, std::size_t max_bytes) override;
  RowCheck check(const std::vector<std::int64_t>& ids,
                 const std::vector<std::uint32_t>& xids) override;
  void record_outcome(const core::BatchOutcome& outcome) override;

 private:
  //! The transactions a new snapshot does not show as ended: its xip, and the xid of any
  //! backend at or above its xmax (the xip stops there).
  std::vector<std::uint64_t> in_progress_now(pqxx::connection& conn);

  pg::PgOutboxStore& store_;
};

}  // namespace outbox::replication
