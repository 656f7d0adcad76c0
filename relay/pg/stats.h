// What the outbox and the relay's replication slot look like from PostgreSQL, in one place:
// the queries behind `outbox-relay status` and the gauges of /metrics. Each is cheap: the
// counts walk the partial indexes of pending and dead-lettered rows (schema/0001), the slot
// and the leader come from pg_replication_slots, pg_locks and pg_stat_activity. Read-only.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace outbox::pg {

struct OutboxStats {
  std::int64_t pending = 0;         //!< not published, not dead-lettered
  double oldest_pending_age_s = 0;  //!< age of the oldest pending row (0 when none)
  std::int64_t dead_lettered = 0;
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
