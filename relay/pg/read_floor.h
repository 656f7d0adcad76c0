// The read floor (invariant read-floor): an id L such that no row of the reader's scope with
// an id below L is pending, or ever will be again. The polling reads by state start at L, the
// read-ahead guard counts from L and the idle check looks from L, so none of them walks the
// pending index's entries of rows marked below L: entries that are dead but stay on the
// index's pages until vacuum removes them (13.7 ms a read, and most of a drain's slowdown, at
// 10,000,000 rows: integration/bench/RESULTS.md). L is 0 (nothing proven) on each new
// PostgreSQL connection and whenever the scope (the shards read) changes.
//
// Why no row below L can become pending later. A row becomes pending only when it is
// inserted (nothing in the relay or the schema sets published_at or dead_lettered_at back to
// NULL; `replay` inserts a new row), and its id comes from outbox.events' identity sequence,
// whose values are handed out in increasing order in time. The premises of that (kPremisesSql
// in read_floor.cc: GENERATED ALWAYS, cache 1, increment > 0, no cycle, a plain table with no
// children and no subscription writing into it, prepared transactions keeping their vxid) are
// checked at each connection and by every fence statement; while one fails L is 0 and the
// reads are as without it (said at warn when it changes, at info at start). The fence, one
// statement (kFenceSql):
//   1. X = the highest id in the statement's snapshot: its transaction committed, so X and
//      every smaller id were handed out before the snapshot was taken;
//   2. H = the transactions holding a lock an INSERT takes on outbox.events, read from
//      pg_locks after that snapshot. An INSERT locks the table before it evaluates nextval(),
//      so every transaction holding an id up to X that has not ended is in H (a prepared
//      transaction too: it keeps its locks and its vxid, under no process);
//   3. once no transaction of H holds a lock (seen by a later statement), every transaction
//      that took an id up to X has committed or rolled back, and PostgreSQL releases a
//      transaction's locks only after the snapshots taken from then on count it as ended:
//      X is "passed".
// The rise: once X is passed, a later statement (its snapshot after the pass) sets L to the
// first pending row of the scope with an id in [L, m), or to m when there is none, for m at
// most X + 1: no row below that is pending in the snapshot, and none can become so. The relay
// asks for m = min(X + 1, the smallest id it read and has not seen marked published or
// dead-lettered); its bookkeeping only chooses m. (A rise only when no row was pending below
// m stood still whenever every row read was recorded, m was then X + 1, and a row above was
// pending: not yet read, or one waiting for its topic, which held L below it for as long as
// it waited: test_read_floor.py.)
//
// What the argument assumes and the relay cannot see: no row is written with an id of its own
// (INSERT ... OVERRIDING SYSTEM VALUE, COPY or a restore with the id column, a BEFORE INSERT
// trigger setting NEW.id) and nobody sets published_at back to NULL by hand. Such a row below
// L would wait; so every kFloorLifetime (and at each new connection) L and the passes are
// forgotten and proven again from the start: one walk of the pending index a minute, and such
// a row waits at most that long, never forever. A fence that finds the highest id lower than
// one it passed (ids set back: TRUNCATE ... RESTART IDENTITY, setval) forgets them at once.
//
// Cost: one statement of a few index probes and a read of pg_locks, at most every
// kFenceInterval, on the leader's connection, before a read. pg_locks reads the whole lock
// table, briefly holding each of its partitions: 10 times a second at most (at 50 ms the
// measurements of test_read_floor.py were 11 passes over the index for a drain and 28 pages a
// row after it, at 100 ms 15 and 34, at 250 ms 22 and 66); L trails the newest rows by two or
// three intervals of traffic. A transaction that inserted into outbox.events and stays open keeps
// its X from passing; L then stays where it is (the reads walk from there, as they did without the
// floor) until it ends, and after kFloorLifetime the relay names its process at warn.
#pragma once

#include <pqxx/pqxx>

#include <chrono>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/ports.h"

namespace outbox::pg {

//! Whether the read floor's premises hold on this database (kPremisesSql); false, with
//! `why` set to what to change, when they do not. For `check`.
bool read_floor_premises(pqxx::transaction_base& tx, std::string& why);

class ReadFloor {
 public:
  static constexpr std::chrono::milliseconds kFenceInterval{100};
  static constexpr std::chrono::seconds kFloorLifetime{60};
  //! The scope has no shard filter when `shards` <= 1; else the shards in the set given to
  //! advance() (pg/shards.h).
  explicit ReadFloor(int shards = 1);

  //! A new connection: the sequence is checked again and L is 0.
  void open(pqxx::connection& conn);
  //! The scope changed (another shard set): L is 0 again; a fence stays valid.
  void reset() { floor_ = 0; }
  //! L: no row of the scope below it is pending, or ever will be again.
  std::int64_t floor() const { return floor_; }
  //! Whether the sequence allows a floor (see above); logged once per connection when not.
  bool enabled() const { return enabled_; }

  //! Before a read (`by_state`: nothing this reader returned is unrecorded, see
  //! core::OutboxStore): runs the fence statement if kFenceInterval passed since the last one
  //! (`now`): raises L towards min(X + 1, the smallest row returned and not recorded
  //! published or dead-lettered) for the last X passed, takes a new fence or sees the open one
  //! pass. `shards`: the scope's shards (sharded only). Throws what libpqxx throws.
  void before_read(pqxx::connection& conn, std::chrono::steady_clock::time_point now, bool by_state,
                   const std::set<int>& shards = {});
  //! The rows a read returned (they stay pending until recorded).
  void returned(const std::vector<core::OutboxEvent>& events);
  //! A committed record of `outcome`, with the rows it found gone: a retried row stays
  //! pending, and is read again by the next by-state read.
  void recorded(const core::BatchOutcome& outcome, const std::vector<core::VanishedRow>& gone);

 private:
  void advance(pqxx::connection& conn, std::chrono::steady_clock::time_point now,
               const std::set<int>& shards);

  std::string fence_sql_;
  bool sharded_ = false;
  bool enabled_ = false;
  bool told_ = false;  //!< the floor's absence was logged
  std::int64_t floor_ = 0;
  std::int64_t passed_ = 0;  //!< the highest X seen passed (0: none)
  struct Fence {
    std::int64_t x = 0;
    std::vector<std::string> holders;  //!< pg_locks.virtualtransaction of H
    std::chrono::steady_clock::time_point since;
    bool warned = false;  //!< open longer than kFloorLifetime, said once
  };
  //! L, the passes and the open fence: nothing proven.
  void forget();
  std::optional<Fence> open_;  //!< taken, not yet seen passed
  //! Rows returned since the last by-state read and not recorded published or dead-lettered:
  //! L rises to the smallest at most (a wrong set only makes the rise's check fail).
  std::set<std::int64_t> unrecorded_;
  std::optional<std::chrono::steady_clock::time_point> next_;  //!< the next fence statement
  std::chrono::steady_clock::time_point expires_{};  //!< when L goes back to 0 (kFloorLifetime)
};

}  // namespace outbox::pg
