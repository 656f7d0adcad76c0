// `outbox-relay status`: the outbox and the relay as PostgreSQL sees them, read-only:
// backlog, oldest pending age, dead-lettered rows, who leads, and in replication mode the
// slot. The queries are the metrics monitor's (pg/stats.h).
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include <cstdio>

#include "cli/commands.h"
#include "pg/conninfo.h"
#include "pg/stats.h"

namespace outbox::cli {

namespace {

std::string bytes_text(std::int64_t b) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

}  // namespace

int run_status(const config::Config& config, bool json) {
  std::string conninfo = conninfo_or_exit(config);
  bool replication = config.source.mode == config::SourceMode::replication;
  const std::string& slot_name = config.source.replication.slot_name;
  pg::OutboxStats stats;
  std::optional<pg::LeaderInfo> leader;
  std::vector<pg::ShardHolder> shard_holders;  // scale-out (source.polling.shards > 1)
  std::optional<pg::SlotStats> slot;
  std::vector<pg::SourceTableState> source_tables;
  try {
    pqxx::connection conn(conninfo);
    pqxx::read_transaction tx(conn);
    stats = pg::read_outbox_stats(tx);
    leader = pg::read_leader(tx);
    shard_holders = pg::read_shard_holders(tx);
    // Sharded relays all hold the leader key, shared: none of them is "the" leader.
    if (!shard_holders.empty()) leader.reset();
    if (replication) slot = pg::read_slot_stats(tx, slot_name);
    source_tables = pg::inspect_source_tables(tx, source_tables_of(config));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "status: PostgreSQL (%s): %s\n",
                 pg::redact_dsn(config.postgres.dsn).c_str(), e.what());
    return kFailure;
  }
  if (json) {
    nlohmann::json j = {
        {"mode", replication ? "replication" : "polling"},
        {"pending", stats.pending},
        {"pending_exact", stats.pending_exact},
        {"oldest_pending_age_seconds", stats.oldest_pending_age_s},
        {"dead_lettered", stats.dead_lettered},
        {"dead_lettered_exact", stats.dead_lettered_exact},
        {"leader", nullptr},
        {"slot", nullptr},
    };
    if (leader) {
      j["leader"] = {{"pid", leader->pid},
                     {"application_name", leader->application_name},
                     {"client_addr", leader->client_addr},
                     {"backend_start", leader->backend_start}};
    }
    if (!shard_holders.empty()) {
      j["shards"] = nlohmann::json::array();
      for (const auto& h : shard_holders) {
        j["shards"].push_back(
            {{"pid", h.pid}, {"client_addr", h.client_addr}, {"shards", h.shards}});
      }
    }
    if (replication) {
      nlohmann::json s = {{"name", slot_name}, {"exists", slot.has_value()}};
      if (slot) {
        auto opt = [](const auto& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); };
        s["wal_status"] = slot->wal_status;
        s["active"] = slot->active;
        s["active_pid"] = opt(slot->active_pid);
        s["confirmed_lsn"] = slot->confirmed_lsn;
        s["retained_wal_bytes"] = opt(slot->retained_wal_bytes);
        s["confirmed_lag_bytes"] = opt(slot->confirmed_lag_bytes);
      }
      j["slot"] = s;
    }
    j["source_tables"] = nlohmann::json::array();
    for (const auto& t : source_tables) {
      j["source_tables"].push_back(
          {{"table", t.table},
           {"installed_as_configured", t.current()},
           {"installed_lsn",
            t.installed_lsn.empty() ? nlohmann::json(nullptr) : nlohmann::json(t.installed_lsn)},
           {"detail", t.describe()}});
    }
    std::printf("%s\n", j.dump().c_str());
    return kOk;
  }
  std::printf("mode           %s\n", replication ? "replication" : "polling");
  if (stats.pending_exact) {
    std::printf("pending        %lld (oldest %.1f s)\n", static_cast<long long>(stats.pending),
                stats.oldest_pending_age_s);
  } else {
    std::printf("pending        more than %lld, at most %lld by the id range (oldest %.1f s)\n",
                static_cast<long long>(pg::kCountLimit), static_cast<long long>(stats.pending),
                stats.oldest_pending_age_s);
  }
  std::printf("dead-lettered  %s%lld\n", stats.dead_lettered_exact ? "" : "at least ",
              static_cast<long long>(stats.dead_lettered));
  if (leader) {
    std::printf("leader         pid %d, application %s, client %s, since %s\n", leader->pid,
                leader->application_name.empty() ? "-" : leader->application_name.c_str(),
                leader->client_addr.c_str(), leader->backend_start.c_str());
  } else if (shard_holders.empty()) {
    std::printf("leader         none (no relay holds the leader lock)\n");
  }
  for (const auto& h : shard_holders) {  // with shards, the leader line shows one of them
    std::string list;
    for (int k : h.shards) list += (list.empty() ? "" : ",") + std::to_string(k);
    std::printf("shards         pid %d, client %s: %s\n", h.pid, h.client_addr.c_str(),
                list.c_str());
  }
  if (replication) {
    if (!slot) {
      std::printf("slot           %s missing (the relay creates it at start)\n", slot_name.c_str());
    } else {
      std::printf(
          "slot           %s: wal_status %s, %s, confirmed %s, retained WAL %s, lag %s\n",
          slot_name.c_str(), slot->wal_status.empty() ? "-" : slot->wal_status.c_str(),
          slot->active
              ? ("active (PID " + std::to_string(slot->active_pid.value_or(0)) + ")").c_str()
              : "inactive",
          slot->confirmed_lsn.empty() ? "-" : slot->confirmed_lsn.c_str(),
          slot->retained_wal_bytes ? bytes_text(*slot->retained_wal_bytes).c_str() : "-",
          slot->confirmed_lag_bytes ? bytes_text(*slot->confirmed_lag_bytes).c_str() : "-");
    }
  }
  for (const auto& t : source_tables) std::printf("source table   %s\n", t.describe().c_str());
  return kOk;
}

}  // namespace outbox::cli
