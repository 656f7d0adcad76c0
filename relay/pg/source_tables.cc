#include "pg/source_tables.h"

#include <pqxx/pqxx>

#include <stdexcept>
#include <string_view>

#include "pg/migrations.h"

namespace outbox::pg {

namespace {

// An event id the copy turns into a uuid: the canonical text form only, which uuid_in always
// accepts. Anything else is dead-lettered, never cast: a failing cast would fail the
// service's insert.
constexpr const char* kUuidPattern =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
// The topic of a row copied dead-lettered for want of one: not a valid Kafka topic name, so
// a replay of the row without correcting it is dead-lettered again, never sent somewhere.
constexpr const char* kNoTopic = "(none)";
// pg_trigger.tgtype of AFTER INSERT FOR EACH ROW (TRIGGER_TYPE_ROW | TRIGGER_TYPE_INSERT).
constexpr int kAfterInsertRow = 5;
constexpr const char* kInsufficientPrivilege = "42501";

std::string ident(const std::string& name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string literal(const std::string& text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') out += '\'';
    out += c;
  }
  return out + "'";
}

std::string relation(const SourceTable& t) { return ident(t.schema) + "." + ident(t.table); }

std::string where(const SourceTable& t) {
  return t.config_key.empty() ? "" : " (" + t.config_key + ")";
}

bool is_string_type(const ColumnType& c) { return c.category == 'S'; }

// The mapped columns, each with what it holds and the config key naming it.
struct Mapped {
  std::string column;
  std::string part;  // "event id", "topic", ...
  std::string key;   // "event_id", ...
};

std::vector<Mapped> mapped_columns(const SourceTable& t) {
  std::vector<Mapped> out = {{t.event_id_column, "event id", "event_id"},
                             {t.topic_column, "topic", "topic"},
                             {t.key_column, "key", "key"},
                             {t.payload_column, "payload", "payload"}};
  if (!t.created_at_column.empty()) out.push_back({t.created_at_column, "created_at", "created_at"});
  for (const auto& [column, header] : t.headers) {
    out.push_back({column, "header " + header, "headers." + column});
  }
  return out;
}

std::string payload_expression(const std::string& column, const ColumnType& type) {
  if (type.name == "bytea") return "NEW." + ident(column);
  return "convert_to(NEW." + ident(column) + "::text, 'UTF8')";
}

bool sql_error_is_privilege(const pqxx::sql_error& e) {
  return e.sqlstate() == kInsufficientPrivilege ||
         dynamic_cast<const pqxx::insufficient_privilege*>(&e) != nullptr ||
         std::string_view(e.what()).find("permission denied") != std::string_view::npos ||
         std::string_view(e.what()).find("must be owner") != std::string_view::npos;
}

std::string trimmed(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

// The table's oid as text, or nullopt when it does not exist (or is not a table).
std::optional<std::string> table_oid(pqxx::transaction_base& tx, const SourceTable& t) {
  auto row = tx.exec_params1(
      "SELECT (SELECT c.oid::text FROM pg_class c WHERE c.oid = to_regclass($1) "
      "AND c.relkind IN ('r', 'p'))",
      relation(t));
  if (row[0].is_null()) return std::nullopt;
  return row[0].as<std::string>();
}

Columns read_columns(pqxx::transaction_base& tx, const std::string& oid) {
  Columns columns;
  for (const auto& row : tx.exec_params(
           "SELECT a.attname, b.typname, b.typcategory FROM pg_attribute a "
           "JOIN pg_type t ON t.oid = a.atttypid "
           "JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END "
           "WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped",
           oid)) {
    std::string category = row[2].as<std::string>();
    columns[row[0].as<std::string>()] = {row[1].as<std::string>(),
                                         category.empty() ? 'X' : category[0]};
  }
  return columns;
}

// The state of one table, with its columns when it exists.
SourceTableState inspect(pqxx::transaction_base& tx, const SourceTable& t, Columns* columns_out) {
  SourceTableState s;
  s.table = t.qualified();
  auto oid = table_oid(tx, t);
  if (!oid) return s;
  s.table_exists = true;
  Columns columns = read_columns(tx, *oid);
  s.problem = mapping_problem(t, columns);
  std::string function = "outbox." + copy_function_name(t) + "()";
  auto row = tx.exec_params1(
      "SELECT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = $1::oid AND g.tgname = $2 "
      "AND g.tgenabled <> 'D' AND g.tgtype = $3 AND g.tgfoid = to_regprocedure($4)), "
      "to_regprocedure($4) IS NOT NULL",
      *oid, kCopyTriggerName, kAfterInsertRow, function);
  s.trigger_installed = row[0].as<bool>();
  if (row[1].as<bool>() && !s.problem) {
    s.function_current = tx.exec_params1(
                               "SELECT prosrc = $2 AND prosecdef FROM pg_proc "
                               "WHERE oid = to_regprocedure($1)",
                               function, copy_function_body(t, columns))[0]
                             .as<bool>();
  }
  if (tx.exec1("SELECT to_regclass('outbox.source_tables') IS NOT NULL")[0].as<bool>()) {
    auto recorded = tx.exec_params(
        "SELECT installed_lsn::text FROM outbox.source_tables "
        "WHERE source_table = $1 AND event_id_column = $2",
        t.qualified(), t.event_id_column);
    if (!recorded.empty()) {
      s.recorded = true;
      s.installed_lsn = recorded[0][0].as<std::string>();
    }
  }
  if (columns_out) *columns_out = std::move(columns);
  return s;
}

}  // namespace

std::optional<std::string> mapping_problem(const SourceTable& t, const Columns& columns) {
  for (const Mapped& m : mapped_columns(t)) {
    if (!columns.count(m.column)) {
      return "source table " + t.qualified() + where(t) + " has no column \"" + m.column +
             "\" for the " + m.part + ": name the column holding it (" +
             (t.config_key.empty() ? "" : t.config_key + ".") + m.key + ")";
    }
  }
  const ColumnType& id = columns.at(t.event_id_column);
  if (id.name != "uuid" && !is_string_type(id)) {
    return "source table " + t.qualified() + where(t) + ": column \"" + t.event_id_column +
           "\" (the event id) is of type " + id.name +
           ", which the copy cannot take as a uuid: give a uuid column, or a text one holding "
           "uuids";
  }
  const ColumnType& payload = columns.at(t.payload_column);
  if (payload.name != "jsonb" && payload.name != "json" && payload.name != "bytea" &&
      !is_string_type(payload)) {
    return "source table " + t.qualified() + where(t) + ": column \"" + t.payload_column +
           "\" (the payload) is of type " + payload.name +
           ", which the copy cannot turn into bytes: give a jsonb, json, text or bytea column";
  }
  if (!t.created_at_column.empty()) {
    const ColumnType& at = columns.at(t.created_at_column);
    if (at.name != "timestamptz" && at.name != "timestamp") {
      return "source table " + t.qualified() + where(t) + ": column \"" + t.created_at_column +
             "\" (created_at) is of type " + at.name +
             ": give a timestamptz or timestamp column, or leave created_at out (the copy's "
             "time)";
    }
  }
  return std::nullopt;
}

std::string copy_function_name(const SourceTable& t) {
  return "source_copy_" + checksum(t.qualified());
}

std::string copy_function_body(const SourceTable& t, const Columns& columns) {
  const std::string id = ident(t.event_id_column);
  const std::string topic = ident(t.topic_column);
  const std::string table = literal(t.qualified());
  std::string headers = "'{}'::jsonb";
  if (!t.headers.empty()) {
    headers = "jsonb_strip_nulls(jsonb_build_object(";
    bool first = true;
    for (const auto& [column, header] : t.headers) {
      headers += (first ? "" : ", ") + literal(header) + ", NEW." + ident(column) + "::text";
      first = false;
    }
    headers += "))";
  }
  std::string created_at = "now()";
  if (!t.created_at_column.empty()) {
    created_at = "coalesce(NEW." + ident(t.created_at_column) + "::timestamptz, now())";
  }
  // Invariant source-copy-never-fails: no expression below can raise for any row (casts
  // only to text, the uuid cast only after the pattern matched, the topic's CHECK kept by
  // the placeholder), and the checks are plain SQL, no EXCEPTION block (a subtransaction
  // per row, which every writer would pay for).
  return "\n"
         "-- outbox-relay: copies each row inserted into " + t.qualified() +
         " into outbox.events (source.tables).\n"
         "DECLARE\n"
         "    new_event_id text := NEW." + id + "::text;\n"
         "    new_topic text := NEW." + topic + "::text;\n"
         "    unusable text;\n"
         "BEGIN\n"
         "    unusable := CASE\n"
         "        WHEN new_event_id IS NULL THEN 'its event id (column ' || " +
         literal(t.event_id_column) + " || ') is NULL'\n"
         "        WHEN new_event_id !~ " + literal(kUuidPattern) +
         " THEN 'its event id (column ' || " + literal(t.event_id_column) +
         " || ') is not a uuid: ' || left(new_event_id, 100)\n"
         "        WHEN new_topic IS NULL OR new_topic = '' THEN 'its topic (column ' || " +
         literal(t.topic_column) + " || ') is NULL or empty'\n"
         "    END;\n"
         "    INSERT INTO outbox.events (event_id, topic, key, payload, headers, created_at,\n"
         "                               source_table, dead_lettered_at, last_error)\n"
         "    VALUES (CASE WHEN new_event_id ~ " + literal(kUuidPattern) +
         " THEN new_event_id::uuid ELSE gen_random_uuid() END,\n"
         "            CASE WHEN new_topic IS NULL OR new_topic = '' THEN " + literal(kNoTopic) +
         " ELSE new_topic END,\n"
         "            NEW." + ident(t.key_column) + "::text,\n"
         "            " + payload_expression(t.payload_column, columns.at(t.payload_column)) +
         ",\n"
         "            " + headers + ",\n"
         "            " + created_at + ",\n"
         "            " + table + ",\n"
         "            CASE WHEN unusable IS NOT NULL THEN now() END,\n"
         "            'source row of ' || " + table +
         " || ' not publishable: ' || unusable)\n"
         "    ON CONFLICT (event_id) DO NOTHING;\n"
         "    IF unusable IS NULL THEN\n"
         "        PERFORM outbox.hint_relay();\n"
         "    END IF;\n"
         "    RETURN NULL;\n"
         "END\n";
}

std::vector<std::string> install_statements(const SourceTable& t, const Columns& columns) {
  std::string body = copy_function_body(t, columns);
  std::string tag = "$copy$";
  for (int i = 1; body.find(tag) != std::string::npos; ++i) tag = "$copy" + std::to_string(i) + "$";
  std::string function = "outbox." + copy_function_name(t) + "()";
  return {
      "CREATE OR REPLACE FUNCTION " + function +
          " RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
          "SET search_path = pg_catalog, pg_temp AS " +
          tag + body + tag,
      "REVOKE ALL ON FUNCTION " + function + " FROM PUBLIC",
      "COMMENT ON FUNCTION " + function + " IS " +
          literal("outbox-relay: copies the rows inserted into " + t.qualified() +
                  " into outbox.events (source.tables)"),
      "DROP TRIGGER IF EXISTS " + std::string(kCopyTriggerName) + " ON " + relation(t),
      "CREATE TRIGGER " + std::string(kCopyTriggerName) + " AFTER INSERT ON " + relation(t) +
          " FOR EACH ROW EXECUTE FUNCTION " + function,
  };
}

std::string SourceTableState::describe() const {
  if (!table_exists) return table + ": table missing (create it, or correct source.tables)";
  if (problem) return *problem;
  if (current()) return table + ": copy trigger installed as configured (since LSN " +
                        installed_lsn + ")";
  std::string what = !trigger_installed ? "copy trigger missing or disabled"
                     : !function_current ? "copy function differs from the config"
                                         : "not recorded in outbox.source_tables";
  return table + ": " + what + ": run `outbox-relay migrate`";
}

std::vector<SourceTableState> inspect_source_tables(pqxx::transaction_base& tx,
                                                    const std::vector<SourceTable>& tables) {
  std::vector<SourceTableState> out;
  for (const SourceTable& t : tables) out.push_back(inspect(tx, t, nullptr));
  return out;
}

std::vector<std::string> install_source_tables(pqxx::connection& conn,
                                               const std::vector<SourceTable>& tables,
                                               core::Clock& clock) {
  std::vector<std::string> report;
  for (const SourceTable& t : tables) {
    Columns columns;
    SourceTableState state;
    {
      pqxx::read_transaction tx(conn);
      state = inspect(tx, t, &columns);
    }
    if (!state.table_exists) {
      throw std::runtime_error("source table " + t.qualified() + where(t) +
                               " does not exist (or the migrating role may not see it): create "
                               "it, or correct the table's name");
    }
    if (state.problem) throw std::runtime_error(*state.problem);
    if (state.current()) {
      report.push_back(t.qualified() + ": up to date (since LSN " + state.installed_lsn + ")");
      continue;
    }
    const bool create_trigger = !state.trigger_installed;
    try {
      std::vector<std::string> statements = install_statements(t, columns);
      if (!create_trigger) statements.resize(3);  // the function only: no lock on the table
      run_under_lock_timeout(conn, t.qualified(),
                             "transactions writing to " + t.qualified() + " hold it", clock,
                             [&](pqxx::transaction_base& w) {
                               for (const std::string& s : statements) w.exec0(s);
                             });
      // After the commit: every transaction committing later fires the trigger.
      pqxx::work w(conn);
      w.exec_params0(
          "INSERT INTO outbox.source_tables (source_table, event_id_column, installed_lsn) "
          "VALUES ($1, $2, pg_current_wal_insert_lsn()) ON CONFLICT (source_table) DO UPDATE "
          "SET event_id_column = EXCLUDED.event_id_column, installed_lsn = CASE WHEN $3::boolean "
          "THEN EXCLUDED.installed_lsn ELSE outbox.source_tables.installed_lsn END, "
          "installed_at = CASE WHEN $3::boolean THEN now() ELSE outbox.source_tables.installed_at "
          "END",
          t.qualified(), t.event_id_column, create_trigger);
      w.commit();
    } catch (const pqxx::sql_error& e) {
      std::string what = "installing the copy of source table " + t.qualified() + where(t) +
                         " failed: " + trimmed(e.what());
      if (sql_error_is_privilege(e)) {
        what +=
            " -- the role running migrate needs the TRIGGER privilege on the table (or to own "
            "it): GRANT TRIGGER ON " +
            relation(t) + " TO <migrate's role>, as its owner, or give postgres.admin_dsn the "
                          "table's owner";
      }
      throw std::runtime_error(what);
    }
    report.push_back(t.qualified() + (create_trigger ? ": installed" : ": updated"));
  }
  return report;
}

}  // namespace outbox::pg
