// Source tables: a service's own outbox table (Debezium's shape), copied row by row into
// outbox.events by an AFTER INSERT trigger that `migrate` installs (schema 0013).
//
// Why a trigger (docs/guide/coming-from-debezium.md, "Keeping your outbox table"): the copy
// is made in the writer's transaction, so a row inserted and deleted in one transaction is
// still published, a rolled-back insert copies nothing, and every part of the relay (both
// source modes, both delivery guarantees, audit, replay, retention, dead letters) works on
// outbox.events unchanged. The cost is one more row write per event, in the writer's
// transaction.
//
// The copy never fails the service's insert (invariant `source-copy-never-fails`): every
// check is made in SQL on the new row (no plpgsql EXCEPTION block, which would be a
// subtransaction per row), and a row that cannot be mapped (NULL or empty topic, an event id
// that is not a uuid) is copied dead-lettered with its reason instead of raising.
//
// Functions of this file run on the caller's thread; install_source_tables is called by
// migrate, inside its advisory lock.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <pqxx/connection>
#include <pqxx/transaction_base>

#include "core/ports.h"

namespace outbox::pg {

//! One configured source table and the columns holding each part of an event
//! (config::SourceTableConfig, given here by cli/).
struct SourceTable {
  std::string schema;  //!< e.g. "public"
  std::string table;   //!< e.g. "outboxevent"
  std::string event_id_column = "id";
  std::string topic_column = "aggregatetype";
  std::string key_column = "aggregateid";
  std::string payload_column = "payload";
  std::string created_at_column;  //!< empty: the copy's now()
  //! Column -> Kafka header name, in the configured order.
  std::vector<std::pair<std::string, std::string>> headers;
  //! What names this table in errors (the config's key, e.g. "source.tables[0]").
  std::string config_key;

  //! "schema.table", the value of outbox.source_tables.source_table.
  std::string qualified() const { return schema + "." + table; }
};

//! A column of a source table as the catalog describes it.
struct ColumnType {
  std::string name;     //!< pg_type.typname of the column's type (of a domain: its base type)
  char category = 'X';  //!< pg_type.typcategory (S: string types)
};

//! The columns of a table: name -> type.
using Columns = std::map<std::string, ColumnType>;

//! Why `t` cannot be copied with the table's `columns` (a mapped column missing, or of a type
//! the copy cannot convert), naming the table, the column and what to do; nullopt when it can.
std::optional<std::string> mapping_problem(const SourceTable& t, const Columns& columns);

//! outbox's function copying `t`'s rows (its name is a hash of the table's name: one per
//! table, whatever the length of its name).
std::string copy_function_name(const SourceTable& t);
//! The name of the trigger on every source table.
inline constexpr const char* kCopyTriggerName = "outbox_copy";

//! The plpgsql body of the copy function for `t` with `columns` (mapping_problem must be
//! nullopt). Deterministic: a migrate that finds this exact body installed changes nothing.
std::string copy_function_body(const SourceTable& t, const Columns& columns);
//! The statements installing the copy for `t` in one transaction: the function (SECURITY
//! DEFINER, search_path pinned, EXECUTE revoked from PUBLIC) and the trigger.
std::vector<std::string> install_statements(const SourceTable& t, const Columns& columns);

//! What a source table looks like in the database, against the config.
struct SourceTableState {
  std::string table;  //!< schema.table as configured
  bool table_exists = false;
  bool trigger_installed = false;      //!< enabled AFTER INSERT FOR EACH ROW, calling the copy
  bool function_current = false;       //!< the copy function's body is the one the config gives
  bool recorded = false;               //!< a row of outbox.source_tables for it
  std::string installed_lsn;           //!< as recorded ("" when not)
  std::optional<std::string> problem;  //!< mapping_problem, when the table exists

  //! Installed as the config says: nothing for migrate to do.
  bool current() const {
    return table_exists && trigger_installed && function_current && recorded && !problem;
  }
  //! One line for check and status.
  std::string describe() const;
};

//! The state of each of `tables`, read in `tx` (read-only: the catalogs and
//! outbox.source_tables).
std::vector<SourceTableState> inspect_source_tables(pqxx::transaction_base& tx,
                                                    const std::vector<SourceTable>& tables);

//! Installs the copy of each of `tables` not installed as configured, each in its own
//! transaction under lock_timeout (retried with a pause on `clock`: CREATE TRIGGER waits for
//! the transactions writing to the table), then records it in outbox.source_tables with
//! installed_lsn read after the commit (kept when the trigger was there already). A table
//! installed as configured is left alone (no DDL). Throws, naming the table, the column and
//! what to do, for a missing table, a mapping it cannot copy, or a missing privilege.
//! Returns a line per table: "schema.table: installed", "... up to date", "... updated".
std::vector<std::string> install_source_tables(pqxx::connection& conn,
                                               const std::vector<SourceTable>& tables,
                                               core::Clock& clock);

}  // namespace outbox::pg
