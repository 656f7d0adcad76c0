// What the outbox and the relay's replication slot look like from PostgreSQL, in one place:
// the queries behind `outbox-relay status` and the gauges of /metrics. Each is cheap and
// bounded whatever the backlog: the counts walk at most kCountLimit entries of the partial
// indexes of pending and dead-lettered rows (schema/0001), a larger backlog is estimated
// from the id range (two index lookups), the oldest pending row is the pending index's
// first entry; the slot and the leader come from pg_replication_slots, pg_locks and
// pg_stat_activity. Read-only.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace outbox::pg {

//! Rows counted one by one at most (an exact count(*) of tens of millions of pending rows
//! ran past the monitor's statement_timeout).
constexpr std::int64_t kCountLimit = 10'000;

struct OutboxStats {
  //! Not published, not dead-lettered: counted up to kCountLimit; above it (pending_exact
  //! false) the ids from the oldest pending row to the newest row, an upper bound that is
  //! the backlog itself when it is a run of ids read in order (published rows or sequence
  //! gaps inside the range count too).
  std::int64_t pending = 0;
  bool pending_exact = true;
  double oldest_pending_age_s = 0;  //!< age of the oldest pending row (0 when none)
  std::int64_t dead_lettered = 0;   //!< counted up to kCountLimit
  bool dead_lettered_exact = true;  //!< false: kCountLimit or more
};

struct SlotStats {
  std::string wal_status;  //!< reserved, extended, unreserved, lost ("" when unknown)
  bool active = false;
  std::optional<int> active_pid;
  std::string confirmed_lsn;                        //!< confirmed_flush_lsn ("" when none)
  std::optional<std::int64_t> retained_wal_bytes;   //!< current WAL position - restart_lsn
  std::optional<std::int64_t> confirmed_lag_bytes;  //!< current WAL position - confirmed
};

//! The session holding the leader lock (pg_advisory_lock(hashtext('outbox-relay'))).
struct LeaderInfo {
  int pid = 0;
  std::string application_name;
  std::string client_addr;  //!< "local" for a Unix socket, "hidden" without pg_read_all_stats
  std::string backend_start;
};

//! A relay holding shards (source.polling.shards > 1; pg/shards.h).
struct ShardHolder {
  int pid = 0;
  std::string client_addr;  //!< as LeaderInfo
  std::vector<int> shards;
};

OutboxStats read_outbox_stats(pqxx::transaction_base& tx);
//! The sessions holding shard locks, by pid; empty when no relay runs sharded.
std::vector<ShardHolder> read_shard_holders(pqxx::transaction_base& tx);
//! nullopt when the slot does not exist.
std::optional<SlotStats> read_slot_stats(pqxx::transaction_base& tx, const std::string& slot);
//! nullopt when no session holds the lock (no relay leads).
std::optional<LeaderInfo> read_leader(pqxx::transaction_base& tx);

}  // namespace outbox::pg
