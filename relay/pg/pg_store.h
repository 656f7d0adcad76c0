// The outbox table in PostgreSQL, behind core::OutboxStore.
//
// Lifecycle: construct (no I/O), then reads (begin_batch by state, read_after above an id),
// record_outcome per group of answered rows (pipelined, core::OutboxStore::read_ahead) and
// wait_for_rows, from the relay's one worker thread. The session is opened on first use
// and re-opened after any failure; every libpqxx failure surfaces as core::UnavailableError
// with the server's message. No transaction is open between a read and the marks
// (invariant no-tx-across-kafka): reading is one prepared statement, recording a group's
// outcome one short transaction of prepared statements with array parameters
// (pg/outbox_rows.h).
//
// Leadership and own session: the leader's session (pg/leader_session.h), which takes the
// leader lock (or the shard claims) and probes that its server session is its own before any
// read.
//
// Sharded (ShardSettings.shards > 1, pg/shards.h): instead of the leader lock, the relay
// claims shards and reads only their rows (the fetch, its order guard count and the idle
// check all filter on the shard expression). What keeps per-key order:
//  - the shard set changes only at a by-state read (begin_batch), where nothing this store
//    returned is unrecorded (the core records every answered row before a by-state read,
//    and a row not answered is not in flight): extras are given back only there;
//  - a read_after returns nothing unless the shard set and the session are those of the
//    last begin_batch, so a newly taken shard's rows are first read by state, in id order,
//    and the order guard's count is over a set whose pending rows below the last id read
//    are exactly this relay's own in flight plus late commits, as in single-relay mode;
//  - an outcome is recorded only for rows of shards held now (a session that ended lost its
//    shards; rows of one not taken back are dropped from the outcome, stay pending and
//    are sent again by their new holder, as after a crash), so the holder of a shard is the
//    only one writing its rows.
#pragma once

#include <pqxx/pqxx>

#include <chrono>
#include <cstdint>
#include <set>
#include <string>
#include <unordered_map>

#include "core/ports.h"
#include "pg/conninfo.h"
#include "pg/leader_session.h"
#include "pg/outbox_rows.h"
#include "pg/read_floor.h"
#include "pg/shards.h"

namespace outbox::pg {

class PgOutboxStore : public core::OutboxStore, public core::Leadership {
 public:
  //! `conninfo` (built again at each new session: a rotated password file is read then);
  //! `redacted` is what logs may show of it.
  //! `shards`: scale-out (see above); the default is one relay publishing everything.
  //! `clock` (which outlives this) times the shards' rebalancing and the standby's wait.
  PgOutboxStore(Conninfo conninfo, std::string redacted, const core::Clock& clock,
                ShardSettings shards = {});

  std::vector<core::OutboxEvent> begin_batch(std::size_t limit, std::size_t max_bytes,
                                             const std::vector<std::string>& skip_topics) override;
  //! Reads hold nothing, marks are record_outcome (one transaction per group).
  std::vector<core::OutboxEvent> read_after(std::int64_t after_id, std::size_t pending_upto,
                                            std::size_t limit, std::size_t max_bytes,
                                            const std::vector<std::string>& skip_topics) override;
  bool wait_for_rows(std::chrono::milliseconds timeout) override;

  //! Marks by (id, event_id) where outcome.rows gives the event (see core::OutboxStore);
  //! the rows not matched are looked at again in the same transaction: a row gone
  //! (core::VanishedRow) is written to outbox.vanished (when the schema has it) and kept for
  //! take_vanished(), anything else rolls the whole outcome back (UnavailableError).
  void record_outcome(const core::BatchOutcome& outcome) override;
  std::vector<core::VanishedRow> take_vanished() override;

  //! The session's (see LeaderSession); any thread.
  SessionRole role() const override { return session_.role(); }
  bool runs_chores() const override { return session_.runs_chores(); }
  int shards() const { return session_.shards(); }
  int shards_held() const { return session_.shards_held(); }
  int shard_members() const { return session_.shard_members(); }

 private:
  void connect();
  bool sharded() const { return session_.sharded(); }
  //! The outcome restricted to rows of shards held now (sharded).
  core::BatchOutcome held_part(const core::BatchOutcome& outcome);
  //! Whether read_set_ is of the last begin_batch on the session open now.
  bool read_set_valid() const {
    return read_generation_ != 0 && read_generation_ == session_.generation();
  }
  std::vector<core::OutboxEvent> fetch(std::int64_t after_id, long long pending_upto,
                                       std::size_t limit, std::size_t max_bytes,
                                       const std::vector<std::string>& skip_topics);

  OutboxRows rows_;          //!< the fetch (sharded: of the shards in $7) and the marks
  std::string pending_sql_;  //!< whether a row is pending (sharded: of the shards in $2)
  ReadFloor floor_;          //!< where reads start (invariant read-floor)
  const core::Clock& clock_;
  LeaderSession session_;                    //!< after rows_ and floor_, which its `opened` uses
  std::vector<core::VanishedRow> vanished_;  //!< found gone by committed marks, not taken

  // Sharded mode (shards.h).
  std::set<int> read_set_;             //!< the shards of the last begin_batch
  std::uint64_t read_generation_ = 0;  //!< ... on the leader's session (LeaderSession::generation)
  std::unordered_map<std::int64_t, int> row_shard_;  //!< rows returned and not recorded
};

}  // namespace outbox::pg
