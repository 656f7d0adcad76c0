// `outbox-relay takeover`: the relay takes over the rows of another logical decoding
// publisher (Debezium's PostgreSQL connector with its outbox EventRouter) once it is stopped.
//
// The argument (invariant `takeover-loses-nothing`, docs/design/invariants.md):
//   1. The other publisher's slot is inactive: nothing publishes from it while this runs (the
//      peek below acquires the slot, so the publisher cannot start again meanwhile either).
//   2. Its confirmed_flush_lsn C says it published every transaction committed at or below C:
//      a publisher confirms a position only once everything before it is in Kafka.
//   3. In one REPEATABLE READ snapshot S the first statement reads E =
//      pg_current_wal_insert_lsn(). A transaction visible in S wrote its commit record before
//      it became visible, so below E. Decoding reads only flushed WAL, and an asynchronous
//      commit is visible before it is flushed: a synchronous commit on another session
//      first flushes the WAL past E. Then peeking the slot (not consuming it) up to E decodes
//      every transaction committed above C and below E: the rows of the scope among them are
//      the ones the publisher may not have published ("unconfirmed").
//   4. So every pending row of the scope visible in S and not unconfirmed committed at or
//      below C: published by the other publisher. Those are marked published, with
//      published_by naming the slot, in that same transaction (one transaction: killed at any
//      point, nothing is marked; run again, the same rows are found).
//   5. Rows left pending: the unconfirmed ones (the relay publishes them: a duplicate when
//      the other publisher had sent one before it stopped, at most its messages past C) and
//      rows not visible in S (committed later: the other publisher is stopped, so only the
//      relay publishes them). None is lost.
// For a source table (schema 0013: a trigger copies each row of a Debezium-shaped table into
// outbox.events), rows written before the trigger have no copy: the takeover is refused until
// C has passed the table's installed_lsn, so the publisher has published every one of them.
//
// Lifecycle and threads: free functions and one value type; the caller's thread, its own
// connection, nothing kept between calls.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "replication/pgoutput.h"

namespace outbox::replication {

//! The takeover must not run now; the message says why and what to do.
class TakeoverRefused : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

//! One table the other publisher decoded and the rows of outbox.events that hold its events.
struct TakeoverScope {
  //! "schema.name" of the decoded table: outbox.events itself, or a source table.
  std::string table;
  //! The column of `table` holding the event id (outbox.events: event_id).
  std::string event_id_column;
  //! The value of outbox.events.source_table of its rows; nullopt for outbox.events itself
  //! (rows of outbox.enqueue: source_table NULL, or every row before schema 0013).
  std::optional<std::string> source_table;
  //! Source tables: the position after which every row of the table has its copy.
  std::optional<Lsn> installed_lsn;
};

//! The other publisher's slot as pg_replication_slots shows it.
struct OtherSlot {
  std::string name;
  bool exists = false;
  std::string slot_type;  //!< "logical" or "physical"
  std::string plugin;
  std::string database;
  bool active = false;
  std::optional<std::int64_t> active_pid;
  std::optional<Lsn> confirmed_flush;
};

//! Why the takeover must not run, with what to do; nullopt when it may. `database` is the one
//! connected to; `scopes` come from the publication (empty: it covers nothing the relay knows).
std::optional<std::string> takeover_refusal(const OtherSlot& slot, const std::string& database,
                                            const std::string& publication,
                                            const std::vector<TakeoverScope>& scopes);

//! A uuid in PostgreSQL's output form (lower-case hex, 8-4-4-4-12) from any form its input
//! accepts (upper case, braces, hyphens between groups of four); nullopt when not a uuid
//! (such a source row is dead-lettered by its copy, never pending).
std::optional<std::string> canonical_uuid(std::string_view text);

//! The event ids of the scopes' rows inserted in the decoded transactions: fed the pgoutput
//! messages of pg_logical_slot_peek_binary_changes in order.
class UnconfirmedEvents {
 public:
  explicit UnconfirmedEvents(std::vector<TakeoverScope> scopes);
  //! One message's bytes. Throws PgOutputError on bytes it cannot read, or a scope's row
  //! without the event id column.
  void add(std::string_view pgoutput_bytes);
  //! The event ids seen for scope `index` (the order of the constructor's scopes).
  const std::set<std::string>& of(std::size_t index) const { return ids_.at(index); }
  //! Inserts into the scopes' tables decoded, uuid or not.
  std::uint64_t inserts() const { return inserts_; }

 private:
  std::vector<TakeoverScope> scopes_;
  std::vector<std::set<std::string>> ids_;
  RelationCache relations_;
  std::uint64_t inserts_ = 0;
};

struct TakeoverOptions {
  std::string slot;         //!< the other publisher's slot
  std::string publication;  //!< the publication it decodes with
  bool drop_slot = false;   //!< drop the slot after the marks committed
};

struct TakeoverScopeReport {
  TakeoverScope scope;
  std::uint64_t marked = 0;        //!< pending rows marked published by the other publisher
  std::uint64_t unconfirmed = 0;   //!< event ids decoded past the confirmed position
  std::uint64_t left_pending = 0;  //!< pending rows of the scope left to the relay
};

struct TakeoverReport {
  Lsn confirmed_flush;  //!< the slot's position: everything at or below it was published
  Lsn end;              //!< the snapshot's WAL insert position, up to which the slot was read
  std::uint64_t messages = 0;  //!< pgoutput messages decoded
  std::vector<TakeoverScopeReport> scopes;
  bool slot_dropped = false;
  std::string published_by;  //!< the value written to outbox.events.published_by
};

//! Runs the takeover on `conninfo` (a role with REPLICATION and UPDATE on outbox.events).
//! Throws TakeoverRefused when it must not run (nothing changed), pqxx or PgOutputError on
//! other failures (nothing changed either: the marks are one transaction).
TakeoverReport take_over(const std::string& conninfo, const TakeoverOptions& options);

}  // namespace outbox::replication
