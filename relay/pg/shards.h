// Scale-out in polling mode: N relays share the outbox by key hash, each publishing the rows
// of the shards it holds, with per-key order kept.
//
// The shard of a row (shard_sql): (hashtext(key) & 2147483647) % S, or id % S for a row
// without a key (such rows have no order to keep: Kafka spreads them over partitions).
// A function of the key only, so every row of a key is in one shard, and one relay at a
// time publishes a shard. It is computed by the server, never by the relay, so every relay
// of a database agrees on it whatever its version.
//
// Claims, all through session advisory locks (two-int form; pg_locks shows them with
// objsubid 2), so that a relay's claims end exactly when its session ends (process death,
// network cut past the keepalive bound, a PostgreSQL restart), never after a time:
//  - the leader key of single-relay mode, pg_advisory_lock(hashtext('outbox-relay')), is
//    taken SHARED: sharded relays run together, and exclude a relay with shards: 1 (which
//    takes it exclusively) both ways;
//  - membership: (kMemberClass, S) shared. Joining takes the gate (kGateClass, 0), a
//    transaction lock, and refuses while a member with another S is registered: two shard
//    functions never publish at once. Changing S therefore needs every relay of the old S
//    stopped (their sessions ended); the new ones stand by until then.
//  - shard k: (kShardClass, k) exclusive, held by one relay.
// Each relay aims at target = ceil(S / members) shards (shard_target): it takes free shards
// (pg_try_advisory_lock, never waits) while below, and gives back extras while above, but
// only at a by-state read (OutboxStore::begin_batch), when nothing it read is in flight:
// every row of the shard it ever read was recorded (marked, retried or dead-lettered, in a
// committed transaction) before the unlock, so the next holder's reads see them. A shard
// handed over therefore never has a row in flight on two relays, except after a session
// ended (then as after a crash of the old holder: its rows are sent again, in order).
// A dead relay's shards are free the moment its session ends; the others take them at
// their next look (every rebalance_interval), and a relay holding none waits on one
// shard's lock (800 ms at a time), so it takes over as soon as that shard's holder is gone.
#pragma once

#include <pqxx/pqxx>

#include <chrono>
#include <set>
#include <string>
#include <vector>

namespace outbox::pg {

//! Advisory lock classes (the first int of the two-int form).
constexpr int kMemberClass = 1869574001;
constexpr int kShardClass = 1869574002;
constexpr int kGateClass = 1869574003;

struct ShardSettings {
  int shards = 1;  //!< 1: no sharding (the leader lock), as before
  std::chrono::milliseconds rebalance_interval{1000};
};

//! The shard of a row of outbox.events as an SQL expression over its columns key and id.
std::string shard_sql(int shards);

//! How many shards each of `members` relays aims at: ceil(shards / members), at least 1.
int shard_target(int shards, int members);

//! What one relay should do now, given who holds what (pure; unit-tested).
struct ShardMoves {
  std::vector<int> release;  //!< extras to give back (highest first; never shard 0 first)
  std::vector<int> acquire;  //!< free shards to try (ascending), up to the target
};
//! `prefer`: free shards tried first (the ones held before a session ended, so that what
//! was in flight on them can still be recorded).
ShardMoves plan_shards(int shards, int members, const std::set<int>& held,
                       const std::set<int>& held_by_others, const std::set<int>& prefer = {});

//! The claims of one relay on one session. Not thread-safe (the relay's worker thread).
class ShardClaims {
 public:
  explicit ShardClaims(ShardSettings settings) : settings_(settings) {}

  //! On a fresh session: the shared leader key, the gate, the member lock. False (and
  //! `why`) when this relay must stand by: a relay with shards: 1 leads, or relays with
  //! another S are registered.
  bool join(pqxx::connection& conn, std::string& why);
  //! Looks at the members and the free shards; gives back extras when `may_release`
  //! (nothing in flight), takes free shards up to the target. Returns true when the held
  //! set changed. `wants_release()` tells whether extras are left to give back. Free
  //! shards in `prefer` are tried first.
  bool rebalance(pqxx::connection& conn, bool may_release, const std::set<int>& prefer = {});
  //! Holding nothing: waits up to 800 ms for one shard's lock (a different one each call).
  bool wait_for_one(pqxx::connection& conn);
  //! The session ended: nothing is held any more (PostgreSQL released everything).
  void reset();

  const std::set<int>& held() const { return held_; }
  int members() const { return members_; }
  bool wants_release() const { return wants_release_; }
  bool joined() const { return joined_; }

 private:
  ShardSettings settings_;
  bool joined_ = false;
  std::set<int> held_;
  int members_ = 1;
  bool wants_release_ = false;
  int next_wait_ = 0;
};

//! "0,1,5" for logs.
std::string shard_list(const std::set<int>& shards);

}  // namespace outbox::pg
