#include "pg/eos_support.h"

#include <string_view>

#include "common/logging.h"
#include "pg/pg_array.h"

namespace outbox::pg {

PgRecoveryMarker::PgRecoveryMarker(Conninfo conninfo, std::string redacted)
    : conninfo_(std::move(conninfo)), redacted_(std::move(redacted)) {}

core::RecoveryMarker::Result PgRecoveryMarker::mark_published(
    const std::vector<core::CheckpointRow>& rows) {
  Result result;
  if (rows.empty()) return result;
  std::vector<std::int64_t> ids;
  std::vector<std::string> events;
  bool by_id_only = false;
  for (const auto& row : rows) {
    ids.push_back(row.id);
    events.push_back(row.event_id);
    by_id_only = by_id_only || row.event_id.empty();
  }
  try {
    pqxx::connection conn(conninfo_.current());
    pqxx::work txn(conn);
    if (by_id_only) {  // a format-1 checkpoint (an earlier version's): ids alone
      pqxx::result r = txn.exec_params(
          "UPDATE outbox.events SET published_at = now(), last_error = NULL "
          "WHERE id = ANY($1::bigint[]) AND published_at IS NULL AND dead_lettered_at IS NULL",
          bigint_array(ids));
      result.marked = static_cast<std::size_t>(r.affected_rows());
    } else {
      // Invariant eos-row-identity (README-eos.md, "Row identity"): a row is the checkpoint's only
      // if both its id and its event_id are; an id reused after a rewind names another event.
      pqxx::result r = txn.exec_params(
          "UPDATE outbox.events e SET published_at = now(), last_error = NULL "
          "FROM unnest($1::bigint[], $2::text[]) AS c(id, event_id) "
          "WHERE e.id = c.id AND e.event_id::text = c.event_id "
          "AND e.published_at IS NULL AND e.dead_lettered_at IS NULL",
          bigint_array(ids), text_array(events));
      result.marked = static_cast<std::size_t>(r.affected_rows());
      result.reused = txn.exec_params1(
                             "SELECT count(*) FROM outbox.events e "
                             "JOIN unnest($1::bigint[], $2::text[]) AS c(id, event_id) "
                             "ON e.id = c.id AND e.event_id::text <> c.event_id "
                             "WHERE e.published_at IS NULL AND e.dead_lettered_at IS NULL",
                             bigint_array(ids), text_array(events))[0]
                          .as<std::size_t>();
    }
    txn.commit();
    return result;
  } catch (const std::exception& e) {
    throw core::UnavailableError(std::string("PostgreSQL (recovery mark): ") + e.what());
  }
}

std::string default_transactional_id(const std::string& conninfo, const std::string& source) {
  try {
    pqxx::connection conn(conninfo);
    pqxx::nontransaction n(conn);
    std::string db = n.exec1("SELECT current_database()")[0].as<std::string>();
    std::string system_id;
    try {
      system_id =
          n.exec1("SELECT system_identifier::text FROM pg_control_system()")[0].as<std::string>();
    } catch (const pqxx::sql_error& e) {
      // Not a missing privilege: retried. (By type and text too: libpqxx may leave
      // sqlstate() empty.)
      bool denied = e.sqlstate() == "42501" ||
                    dynamic_cast<const pqxx::insufficient_privilege*>(&e) != nullptr ||
                    std::string_view(e.what()).find("permission denied") != std::string_view::npos;
      if (!denied) throw;
      // Invariant eos-stable-transactional-id (README-eos.md, "transactional.id"): derived only
      // from facts a failover keeps. The server's address is not one: after a failover the new
      // leader would neither fence the old one nor find its checkpoints.
      throw core::FatalError(
          "exactly_once: cannot derive the transactional.id: this role may not read "
          "pg_control_system() (the database's system identifier; " +
          std::string(e.what()).substr(0, std::string(e.what()).find('\n')) +
          "). Set delivery.transactional_id (the same on every replica of this relay, unique "
          "to it), or GRANT EXECUTE ON FUNCTION pg_control_system() TO the relay's role");
    }
    return "outbox-relay:" + system_id + ":" + db + ":" + source;
  } catch (const core::FatalError&) {
    throw;
  } catch (const std::exception& e) {
    throw core::UnavailableError(std::string("PostgreSQL: ") + e.what());
  }
}

}  // namespace outbox::pg
