// outbox.events as replication mode's state machine sees it (replication_ports.h), on the
// relay's normal session: the leader's session (pg/leader_session.h), which holds the leader
// lock, so that only the leader reads, publishes and marks. Rows are read and marked with the
// outbox-row SQL of pg/outbox_rows.h; what is replication's own here is the snapshot and
// visibility queries.
//
// Lifecycle: construct (no I/O); the session is opened by the first call (connect()) and
// re-opened after any failure; used from the worker thread. Every failure is
// core::UnavailableError (core::StandbyError while another relay leads).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pg/conninfo.h"
#include "pg/leader_session.h"
#include "pg/outbox_rows.h"
#include "pg/read_floor.h"
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
  //! `conninfo`, `redacted`, `clock` as pg::LeaderSession's.
  PgReplicationTable(pg::Conninfo conninfo, std::string redacted, const core::Clock& clock);

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
  //! Marks with pg::OutboxRows: rows found gone are kept for take_vanished().
  void record_outcome(const core::BatchOutcome& outcome) override;
  std::vector<core::VanishedRow> take_vanished() override;

  //! The leader lock's session (role, chores); any thread.
  const core::Leadership& leadership() const { return session_; }

 private:
  //! `body` on the session (connected and leading first); a failure ends the session and
  //! throws core::UnavailableError.
  template <typename F>
  auto on_session(F&& body) -> decltype(body(std::declval<pqxx::connection&>()));
  //! The transactions a new snapshot does not show as ended: its xip, and the xid of any
  //! backend at or above its xmax (the xip stops there).
  std::vector<std::uint64_t> in_progress_now(pqxx::connection& conn);

  pg::OutboxRows rows_;  //!< the marks (the reads run the fetch_sql variants)
  pg::ReadFloor floor_;  //!< where the drain's reads start (invariant read-floor)
  const core::Clock& clock_;
  pg::LeaderSession session_;                //!< after rows_ and floor_, which its `opened` uses
  std::vector<core::VanishedRow> vanished_;  //!< found gone by committed marks, not taken
};

}  // namespace outbox::replication
