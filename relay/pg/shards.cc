#include "pg/shards.h"

#include <algorithm>

namespace outbox::pg {

namespace {

constexpr const char* kLockNotAvailable = "55P03";  // lock_timeout expired

// The leader key of single-relay mode, shared: see shards.h.
constexpr const char* kSharedLeaderSql = "SELECT pg_advisory_lock_shared(hashtext('outbox-relay'))";
constexpr const char* kWaitSql =  // (statement_timeout: see leader_session.cc kStandbyWaitSql)
    "SET LOCAL lock_timeout = '800ms'; SET LOCAL statement_timeout = 0";

// Advisory locks of this database in pg_locks, two-int form.
constexpr const char* kLocksOfDb = R"sql(
  FROM pg_locks l
  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))sql";

}  // namespace

std::string shard_sql(int shards) {
  const std::string s = std::to_string(std::max(shards, 1));
  return "(CASE WHEN key IS NULL THEN id % " + s + " ELSE (hashtext(key) & 2147483647) % " + s +
         " END)::int";
}

int shard_target(int shards, int members) {
  members = std::max(members, 1);
  return std::max(1, (shards + members - 1) / members);
}

ShardMoves plan_shards(int shards, int members, const std::set<int>& held,
                       const std::set<int>& held_by_others, const std::set<int>& prefer) {
  ShardMoves moves;
  const int target = shard_target(shards, members);
  const int have = static_cast<int>(held.size());
  if (have > target) {
    // Highest first: shard 0 (retention) stays where it is as long as it can.
    for (auto it = held.rbegin();
         it != held.rend() && have - static_cast<int>(moves.release.size()) > target; ++it) {
      moves.release.push_back(*it);
    }
    return moves;
  }
  auto free = [&](int k) {
    return k >= 0 && k < shards && !held.count(k) && !held_by_others.count(k) &&
           std::find(moves.acquire.begin(), moves.acquire.end(), k) == moves.acquire.end();
  };
  for (int k : prefer) {
    if (have + static_cast<int>(moves.acquire.size()) >= target) break;
    if (free(k)) moves.acquire.push_back(k);
  }
  for (int k = 0; k < shards && have + static_cast<int>(moves.acquire.size()) < target; ++k) {
    if (free(k)) moves.acquire.push_back(k);
  }
  return moves;
}

std::string shard_list(const std::set<int>& shards) {
  std::string out;
  for (int k : shards) {
    if (!out.empty()) out += ",";
    out += std::to_string(k);
  }
  return out.empty() ? "none" : out;
}

bool ShardClaims::join(pqxx::connection& conn, std::string& why) {
  if (joined_) return true;
  const std::string s = std::to_string(settings_.shards);
  {
    // Shared with the other sharded relays; a relay with shards: 1 holds it exclusively.
    pqxx::work txn(conn);
    txn.exec0(kWaitSql);
    try {
      txn.exec1(kSharedLeaderSql);
    } catch (const pqxx::sql_error& e) {
      if (e.sqlstate() != kLockNotAvailable) throw;
      why = "a relay with source.polling.shards: 1 holds the leader lock";
      return false;
    }
    txn.commit();
  }
  pqxx::work txn(conn);
  txn.exec0(kWaitSql);
  try {
    // The gate serialises joins: two relays with different S cannot both see none of the
    // other's kind and register.
    txn.exec1("SELECT pg_advisory_xact_lock(" + std::to_string(kGateClass) + ", 0)");
  } catch (const pqxx::sql_error& e) {
    if (e.sqlstate() != kLockNotAvailable) throw;
    why = "another relay is joining";
    return false;
  }
  auto other =
      txn.exec1("SELECT string_agg(DISTINCT l.objid::text, ',')" + std::string(kLocksOfDb) +
                " AND l.classid = " + std::to_string(kMemberClass) + " AND l.objid <> " + s);
  if (!other[0].is_null()) {
    std::string values = other[0].as<std::string>();
    why = "relays with source.polling.shards: " + values +
          " are running (stop all of them to change the number of shards)";
    txn.abort();  // the gate is released
    // Wait (800 ms at most) until the first of them is gone: its member lock, exclusively,
    // for the length of a transaction. Then the next call joins, or finds others to wait for.
    std::string first = values.substr(0, values.find(','));
    pqxx::work wait(conn);
    wait.exec0(kWaitSql);
    try {
      wait.exec1("SELECT pg_advisory_xact_lock(" + std::to_string(kMemberClass) + ", " + first +
                 ")");
    } catch (const pqxx::sql_error& e) {
      if (e.sqlstate() != kLockNotAvailable) throw;
    }
    return false;
  }
  txn.exec1("SELECT pg_advisory_lock_shared(" + std::to_string(kMemberClass) + ", " + s + ")");
  txn.commit();
  joined_ = true;
  return true;
}

namespace {
std::set<int> int_set(const std::string& array_text) {  // {1,2,3}
  std::set<int> out;
  std::string num;
  for (char c : array_text + ",") {
    if (c >= '0' && c <= '9') {
      num += c;
    } else if (!num.empty()) {
      out.insert(std::stoi(num));
      num.clear();
    }
  }
  return out;
}
}  // namespace

bool ShardClaims::rebalance(pqxx::connection& conn, bool may_release, const std::set<int>& prefer) {
  pqxx::nontransaction n(conn);
  const std::string shard_locks =
      std::string(kLocksOfDb) + " AND l.classid = " + std::to_string(kShardClass);
  auto row = n.exec1("SELECT (SELECT count(*)" + std::string(kLocksOfDb) +
                     " AND l.classid = " + std::to_string(kMemberClass) +
                     " AND l.objid = " + std::to_string(settings_.shards) +
                     "), ARRAY(SELECT l.objid::bigint::int" + shard_locks +
                     " AND l.pid <> pg_backend_pid())::text, ARRAY(SELECT l.objid::bigint::int" +
                     shard_locks + " AND l.pid = pg_backend_pid())::text");
  members_ = std::max(1, row[0].as<int>());
  std::set<int> others = int_set(row[1].as<std::string>());
  // What the relay's session holds, as PostgreSQL says: a wait whose lock_timeout expired as the
  // lock was granted holds it too. Never locking a shard twice keeps one unlock enough.
  std::set<int> mine = int_set(row[2].as<std::string>());
  bool changed = mine != held_;
  held_ = std::move(mine);
  ShardMoves moves = plan_shards(settings_.shards, members_, held_, others, prefer);
  wants_release_ = !moves.release.empty() && !may_release;
  if (may_release) {
    for (int k : moves.release) {
      n.exec1("SELECT pg_advisory_unlock(" + std::to_string(kShardClass) + ", " +
              std::to_string(k) + ")");
      held_.erase(k);
      changed = true;
    }
  }
  for (int k : moves.acquire) {
    bool got = n.exec1("SELECT pg_try_advisory_lock(" + std::to_string(kShardClass) + ", " +
                       std::to_string(k) + ")")[0]
                   .as<bool>();
    if (got) {
      held_.insert(k);
      changed = true;
    }
  }
  return changed;
}

bool ShardClaims::wait_for_one(pqxx::connection& conn) {
  int k = next_wait_;
  next_wait_ = (next_wait_ + 1) % settings_.shards;
  pqxx::work txn(conn);
  txn.exec0(kWaitSql);
  try {
    txn.exec1("SELECT pg_advisory_lock(" + std::to_string(kShardClass) + ", " + std::to_string(k) +
              ")");
  } catch (const pqxx::sql_error& e) {
    if (e.sqlstate() == kLockNotAvailable) return false;
    throw;
  }
  txn.commit();
  held_.insert(k);
  return true;
}

void ShardClaims::reset() {
  joined_ = false;
  held_.clear();
  wants_release_ = false;
}

}  // namespace outbox::pg
