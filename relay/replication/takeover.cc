#include "replication/takeover.h"

#include <pqxx/pqxx>

#include <algorithm>
#include <cctype>
#include <type_traits>
#include <variant>

#include "pg/pg_array.h"

namespace outbox::replication {

namespace {

constexpr const char* kOutboxEvents = "outbox.events";

// The tables a publication decodes, as pgoutput names them (schema, then name).
constexpr const char* kPublicationTablesSql =
    "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1";
// The source tables (schema 0013) the publication decodes; `table` as pgoutput names it.
constexpr const char* kSourceTablesSql =
    "SELECT p.schemaname || '.' || p.tablename, s.source_table, s.event_id_column, "
    "s.installed_lsn::text FROM outbox.source_tables s JOIN pg_publication_tables p "
    "ON to_regclass(s.source_table) = format('%I.%I', p.schemaname, p.tablename)::regclass "
    "WHERE p.pubname = $1 ORDER BY 1";
constexpr const char* kSlotSql =
    "SELECT slot_type, coalesce(plugin, ''), coalesce(database::text, ''), active, active_pid, "
    "confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1";
constexpr const char* kColumnSql =
    "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'outbox.events'::regclass "
    "AND attname = $1 AND NOT attisdropped)";
// Messages read from the peek per round trip: bounds the client's memory, not the server's
// (the function materialises its result, spilling to disk past work_mem).
constexpr int kFetchRows = 1000;

OtherSlot read_slot(pqxx::transaction_base& t, const std::string& name) {
  OtherSlot slot;
  slot.name = name;
  auto rows = t.exec_params(kSlotSql, name);
  if (rows.empty()) return slot;
  const auto& row = rows[0];
  slot.exists = true;
  slot.slot_type = row[0].as<std::string>();
  slot.plugin = row[1].as<std::string>();
  slot.database = row[2].as<std::string>();
  slot.active = row[3].as<bool>();
  if (!row[4].is_null()) slot.active_pid = row[4].as<std::int64_t>();
  if (!row[5].is_null()) slot.confirmed_flush = Lsn::parse(row[5].as<std::string>());
  return slot;
}

std::vector<TakeoverScope> read_scopes(pqxx::transaction_base& t, const std::string& publication) {
  std::vector<TakeoverScope> scopes;
  for (const auto& row : t.exec_params(kPublicationTablesSql, publication)) {
    if (row[0].as<std::string>() == kOutboxEvents) {
      scopes.push_back({kOutboxEvents, "event_id", std::nullopt, std::nullopt});
    }
  }
  if (t.exec1("SELECT to_regclass('outbox.source_tables') IS NOT NULL")[0].as<bool>()) {
    for (const auto& row : t.exec_params(kSourceTablesSql, publication)) {
      TakeoverScope scope;
      scope.table = row[0].as<std::string>();
      scope.source_table = row[1].as<std::string>();
      scope.event_id_column = row[2].as<std::string>();
      scope.installed_lsn = Lsn::parse(row[3].as<std::string>());
      scopes.push_back(std::move(scope));
    }
  }
  return scopes;
}

// Commits a transaction that wrote WAL with synchronous_commit on: its commit record is
// flushed, and with it every WAL record before, so the flush position passes `end`. (A
// transaction that only took a transaction id writes no WAL before its commit record, and
// PostgreSQL commits it asynchronously whatever the setting.) The write: the hint row of
// schema 0001, left as it was (its row lock held for an instant).
void flush_wal_past(const std::string& conninfo, Lsn end) {
  pqxx::connection conn(conninfo);
  {
    pqxx::nontransaction n(conn);
    n.exec("SET synchronous_commit = on");
  }
  pqxx::work w(conn);
  w.exec("UPDATE outbox.relay_wakeup SET armed = armed WHERE singleton");
  w.commit();
  pqxx::nontransaction n(conn);
  auto flushed =
      Lsn::parse(n.exec1("SELECT pg_current_wal_flush_lsn()::text")[0].as<std::string>());
  if (!flushed || *flushed < end) {
    throw std::runtime_error("the WAL is flushed only up to " +
                             (flushed ? flushed->to_string() : std::string("?")) + ", before " +
                             end.to_string() + " after a synchronous commit");
  }
}

}  // namespace

std::optional<std::string> takeover_refusal(const OtherSlot& slot, const std::string& database,
                                            const std::string& publication,
                                            const std::vector<TakeoverScope>& scopes) {
  if (!slot.exists) {
    return "replication slot \"" + slot.name + "\" does not exist in this server (Debezium's " +
           "slot.name, default \"debezium\"); if an earlier takeover dropped it, there is " +
           "nothing left to take over";
  }
  if (slot.slot_type != "logical" || slot.plugin != "pgoutput") {
    return "replication slot \"" + slot.name + "\" is " + slot.slot_type + " with plugin \"" +
           slot.plugin + "\"; takeover reads a logical slot of plugin pgoutput (Debezium's " +
           "plugin.name: pgoutput)";
  }
  if (slot.database != database) {
    return "replication slot \"" + slot.name + "\" decodes database \"" + slot.database +
           "\", not \"" + database + "\": connect to that database";
  }
  if (slot.active) {
    return "replication slot \"" + slot.name + "\" is in use (pid " +
           (slot.active_pid ? std::to_string(*slot.active_pid) : std::string("unknown")) +
           "): stop Debezium (the Kafka Connect connector or worker) first, then run takeover " +
           "again";
  }
  if (!slot.confirmed_flush) {
    return "replication slot \"" + slot.name + "\" has no confirmed position yet: let Debezium " +
           "run until it has confirmed one, stop it, then run takeover again";
  }
  if (scopes.empty()) {
    return "publication \"" + publication + "\" decodes neither outbox.events nor a source " +
           "table of outbox.source_tables (Debezium's publication.name, default " +
           "\"dbz_publication\"; a source table is installed by outbox-relay migrate)";
  }
  for (const auto& scope : scopes) {
    if (scope.installed_lsn && *slot.confirmed_flush < *scope.installed_lsn) {
      return "replication slot \"" + slot.name + "\" confirmed " +
             slot.confirmed_flush->to_string() + ", before the copy trigger of " +
             *scope.source_table + " was installed at " + scope.installed_lsn->to_string() +
             ": rows written before the trigger have no copy and Debezium has not confirmed " +
             "publishing them all. Start Debezium again, let it confirm a position at or past " +
             scope.installed_lsn->to_string() + " (write a row to the table and wait until " +
             "its message is in Kafka and the slot's confirmed_flush_lsn passed it), stop it, " +
             "then run takeover again";
    }
  }
  return std::nullopt;
}

std::optional<std::string> canonical_uuid(std::string_view text) {
  std::string hex;
  std::size_t i = 0;
  if (!text.empty() && text.front() == '{') {
    if (text.back() != '}') return std::nullopt;
    text = text.substr(1, text.size() - 2);
  }
  if (text.empty()) return std::nullopt;
  for (char c : text) {
    if (c == '-') {
      // PostgreSQL accepts a hyphen after any group of four digits, never two in a row.
      if (hex.empty() || hex.size() % 4 != 0 || (i > 0 && text[i - 1] == '-')) return std::nullopt;
    } else if (std::isxdigit(static_cast<unsigned char>(c))) {
      hex += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else {
      return std::nullopt;
    }
    ++i;
  }
  if (hex.size() != 32 || text.back() == '-') return std::nullopt;
  return hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) + "-" +
         hex.substr(16, 4) + "-" + hex.substr(20);
}

UnconfirmedEvents::UnconfirmedEvents(std::vector<TakeoverScope> scopes)
    : scopes_(std::move(scopes)), ids_(scopes_.size()) {}

void UnconfirmedEvents::add(std::string_view pgoutput_bytes) {
  PgOutputMessage message = decode_pgoutput(pgoutput_bytes);
  if (auto* relation = std::get_if<Relation>(&message)) {
    relations_.update(std::move(*relation));
    return;
  }
  const auto* insert = std::get_if<Insert>(&message);
  if (insert == nullptr) return;  // Begin, Commit, updates, deletes: no new event
  const Relation& relation = relations_.get(insert->relation_oid);
  std::string table = relation.schema + "." + relation.name;
  for (std::size_t i = 0; i < scopes_.size(); ++i) {
    if (scopes_[i].table != table) continue;
    ++inserts_;
    auto id = column_text(relation, *insert, scopes_[i].event_id_column);
    if (!id) continue;  // NULL id: the copy dead-letters it
    if (auto uuid = canonical_uuid(*id)) ids_[i].insert(*uuid);
  }
}

TakeoverReport take_over(const std::string& conninfo, const TakeoverOptions& options) {
  pqxx::connection conn(conninfo);
  TakeoverReport report;
  report.published_by = "takeover of slot " + options.slot;
  {
    pqxx::read_transaction t(conn);
    std::string database = t.exec1("SELECT current_database()")[0].as<std::string>();
    if (t.exec_params("SELECT 1 FROM pg_publication WHERE pubname = $1", options.publication)
            .empty()) {
      throw TakeoverRefused("publication \"" + options.publication +
                            "\" does not exist (Debezium's publication.name, default "
                            "\"dbz_publication\")");
    }
    OtherSlot slot = read_slot(t, options.slot);
    std::vector<TakeoverScope> scopes = read_scopes(t, options.publication);
    if (auto why = takeover_refusal(slot, database, options.publication, scopes)) {
      throw TakeoverRefused(*why);
    }
    if (!t.exec_params1(kColumnSql, "published_by")[0].as<bool>()) {
      throw TakeoverRefused(
          "outbox.events has no column published_by (schema 0015): run outbox-relay migrate");
    }
    for (auto& scope : scopes) report.scopes.push_back({scope, 0, 0, 0});
  }

  std::vector<TakeoverScope> scopes;
  for (const auto& s : report.scopes) scopes.push_back(s.scope);
  UnconfirmedEvents unconfirmed(scopes);
  // Invariant takeover-loses-nothing (takeover.h): one snapshot for the end position, the
  // rows seen pending and the marks; the end position read by its first statement.
  pqxx::transaction<pqxx::repeatable_read> t(conn, "takeover");
  report.end =
      *Lsn::parse(t.exec1("SELECT pg_current_wal_insert_lsn()::text")[0].as<std::string>());
  bool source_column = t.exec_params1(kColumnSql, "source_table")[0].as<bool>();
  // Logical decoding reads only flushed WAL, and a transaction committed asynchronously
  // (synchronous_commit off) is visible before its commit record is flushed: such a row,
  // visible and pending but not decoded, would be taken for confirmed and never sent. A
  // synchronous commit on another session flushes the WAL past the end position.
  flush_wal_past(conninfo, report.end);
  t.exec(
      "DECLARE takeover_peek NO SCROLL CURSOR FOR SELECT data FROM "
      "pg_logical_slot_peek_binary_changes(" +
      t.quote(options.slot) + ", " + t.quote(report.end.to_string()) +
      "::pg_lsn, NULL, 'proto_version', '1', 'publication_names', " +
      t.quote(t.quote_name(options.publication)) + ")");
  for (;;) {
    pqxx::result rows = t.exec("FETCH " + std::to_string(kFetchRows) + " FROM takeover_peek");
    for (const auto& row : rows) {
      pqxx::binarystring bytes(row[0]);
      unconfirmed.add(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
      ++report.messages;
    }
    if (rows.size() < static_cast<std::size_t>(kFetchRows)) break;
  }
  t.exec("CLOSE takeover_peek");
  // The position the peek started from: read after it, while the slot is still ours to
  // refuse (a publisher that started meanwhile makes the run stop, nothing marked).
  OtherSlot slot = read_slot(t, options.slot);
  std::string database = t.exec1("SELECT current_database()")[0].as<std::string>();
  if (auto why = takeover_refusal(slot, database, options.publication, scopes)) {
    throw TakeoverRefused(*why);
  }
  report.confirmed_flush = *slot.confirmed_flush;

  for (std::size_t i = 0; i < report.scopes.size(); ++i) {
    auto& scope = report.scopes[i];
    const auto& ids = unconfirmed.of(i);
    scope.unconfirmed = ids.size();
    std::string filter = "published_at IS NULL AND dead_lettered_at IS NULL";
    if (scope.scope.source_table) {
      filter += " AND source_table = " + t.quote(*scope.scope.source_table);
    } else if (source_column) {
      filter += " AND source_table IS NULL";
    }
    std::vector<std::string> id_list(ids.begin(), ids.end());
    pqxx::result marked =
        t.exec_params("UPDATE outbox.events SET published_at = now(), published_by = $1 WHERE " +
                          filter + " AND event_id <> ALL ($2::uuid[])",
                      report.published_by, pg::text_array(id_list));
    scope.marked = static_cast<std::uint64_t>(marked.affected_rows());
    scope.left_pending =
        t.exec1("SELECT count(*) FROM outbox.events WHERE " + filter)[0].as<std::uint64_t>();
  }
  t.commit();

  if (options.drop_slot) {
    pqxx::nontransaction n(conn);
    n.exec_params("SELECT pg_drop_replication_slot($1)", options.slot);
    report.slot_dropped = true;
  }
  return report;
}

}  // namespace outbox::replication
