// The SQL of outbox.events rows, written once for both source modes: the column list a read
// returns, the fetch with its byte budget and its read-ahead guard (and the variants
// replication mode reads the table with), the marks by id and event id (published, retried,
// dead-lettered), the look at the rows a mark did not match (invariant gone-row-reported) and
// the record of those found gone in outbox.vanished.
//
// Lifecycle: an OutboxRows is owned by the holder of one PostgreSQL session: open() at each
// new session, close() when it ends; fetch() and record() in between, from that
// holder's thread. No transaction stays open between calls (invariant no-tx-across-kafka):
// a fetch is one statement, a record one short transaction.
#pragma once

#include <pqxx/pqxx>

#include <string>
#include <utility>
#include <vector>

#include "core/ports.h"

namespace outbox::pg {

//! Rows of (id, event_id::text, topic, key, payload, headers::text, attempts) as events.
std::vector<core::OutboxEvent> events_of(const pqxx::result& rows);

//! The polling read (with its byte budget and its read-ahead guard), written once, in the
//! variants replication mode reads the table with (replication/replication_table.cc). Parameters as
//! the polling read: $1 limit, $2 max bytes, $3 topics, $4 after id, $5 pending from $6 up to
//! after id (-1: a by-state read), $6 the read floor (pg/read_floor.h; 0: none), and:
enum class FetchScope {
  upto,    //!< rows of topics not in $3, ids up to $7 only (the replication drain)
  topics,  //!< rows of the topics in $3 only (deferred topics; $4 and $5 as a by-state read)
  among,   //!< rows whose ids are in $3 (bigint[]) only; no $4, $5, $6 (rows sent again)
};
std::string fetch_sql(FetchScope scope);

//! The polling read itself: every shard when `shards` <= 1; else restricted to the shards in
//! $7 (int[]), with each row's shard as a ninth column `shard` (pg/shards.h).
std::string polling_fetch_sql(int shards);

//! Whether any row is pending with an id from $1 (the read floor); sharded (`shards` > 1):
//! any such row of the shards in $2 (int[]).
std::string pending_exists_sql(int shards);

//! The highest pending id (0 if none): one probe of events_pending_idx from its end.
const char* pending_bound_sql();

class OutboxRows {
 public:
  //! `fetch_sql`: the statement fetch() runs (polling_fetch_sql); none: marks only.
  explicit OutboxRows(std::string fetch_sql = {}) : fetch_sql_(std::move(fetch_sql)) {}

  //! A new session: looks whether it may write outbox.vanished (warns once when not).
  void open(pqxx::connection& conn);
  //! The session ended: the statements are prepared again on the next one.
  void close() noexcept { prepared_ = false; }

  //! The fetch statement with `params` ($1...), prepared once per session; one statement.
  template <typename... Params>
  pqxx::result fetch(pqxx::connection& conn, Params&&... params) {
    prepare(conn);
    pqxx::nontransaction n(conn);
    return n.exec_prepared(kFetchName, std::forward<Params>(params)...);
  }

  //! Marks by (id, event_id) where outcome.rows gives the event (see core::OutboxStore), in
  //! one transaction; the rows not matched are looked at again in it: a row gone
  //! (core::VanishedRow) is written to outbox.vanished (when the session may) and appended
  //! to `gone` once committed, anything else throws and rolls the whole outcome back.
  void record(pqxx::connection& conn, const core::BatchOutcome& outcome,
              std::vector<core::VanishedRow>& gone);

 private:
  static constexpr const char* kFetchName = "outbox_fetch";
  void prepare(pqxx::connection& conn);
  //! Writes `outcome` in `txn`; appends the rows it found gone to `gone`.
  void write_outcome(pqxx::work& txn, const core::BatchOutcome& outcome,
                     std::vector<core::VanishedRow>& gone);

  std::string fetch_sql_;
  bool prepared_ = false;  //!< the statements are prepared on the current session
  //! The PostgreSQL session may write outbox.vanished (schema 0008 applied, INSERT granted).
  bool vanished_table_ = false;
  bool vanished_table_warned_ = false;
};

}  // namespace outbox::pg
