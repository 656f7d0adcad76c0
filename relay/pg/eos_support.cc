#include "pg/eos_support.h"

#include "common/logging.h"
#include "pg/pg_array.h"

namespace outbox::pg {

PgRecoveryMarker::PgRecoveryMarker(std::string conninfo, std::string redacted)
    : conninfo_(std::move(conninfo)), redacted_(std::move(redacted)) {}

std::size_t PgRecoveryMarker::mark_published(const std::vector<std::int64_t>& ids) {
  if (ids.empty()) return 0;
  try {
    pqxx::connection conn(conninfo_);
    pqxx::work txn(conn);
    pqxx::result r = txn.exec_params(
        "UPDATE outbox.events SET published_at = now(), last_error = NULL "
        "WHERE id = ANY($1::bigint[]) AND published_at IS NULL AND dead_lettered_at IS NULL",
        bigint_array(ids));
    txn.commit();
    return static_cast<std::size_t>(r.affected_rows());
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
    } catch (const pqxx::sql_error&) {
      // Not granted to this role: the server's address stands in (less stable: a failover
      // to a replica keeps the system identifier but not the address).
      system_id = n.exec1(
                       "SELECT coalesce(host(inet_server_addr()), 'local') || '.' || "
                       "current_setting('port')")[0]
                      .as<std::string>();
      logging::get("pg")->warn(
          "cannot read pg_control_system() (grant pg_monitor, or set "
          "delivery.transactional_id): the default transactional.id uses the server address");
    }
    return "outbox-relay:" + system_id + ":" + db + ":" + source;
  } catch (const std::exception& e) {
    throw core::UnavailableError(std::string("PostgreSQL: ") + e.what());
  }
}

}  // namespace outbox::pg
