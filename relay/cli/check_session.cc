#include "cli/check_session.h"

#include "pg/session_probe.h"

namespace outbox::cli {

CheckLine check_own_session(pqxx::connection_base& conn, const std::string& conninfo) {
  CheckLine line;
  try {
    pg::SessionFinding found = pg::probe_session(conn, conninfo, pg::new_session_marker());
    line.ok = found.own_session();
    line.detail = line.ok ? found.describe() : found.refusal();
    if (!line.ok) line.fix = pg::pooler_fix();
  } catch (const std::exception& e) {
    line.detail = std::string("cannot be probed: ") + e.what();
  }
  return line;
}

std::string connect_fix(const std::string& error, const std::string& otherwise) {
  auto hint = pg::pooler_startup_hint(error);
  return hint ? *hint : otherwise;
}

}  // namespace outbox::cli
