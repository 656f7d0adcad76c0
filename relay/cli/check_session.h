// `check`'s line on the relay's PostgreSQL session: its own, or a connection pooler that
// shares it (pg/session_probe.h).
#pragma once

#include <pqxx/pqxx>

#include <string>

namespace outbox::cli {

//! One line of `check`: whether it passed, what was seen, the fix when it failed.
struct CheckLine {
  bool ok = false;
  std::string detail;
  std::string fix;
};

//! Probes `conn` (just opened to `conninfo`, no transaction open on it). A transaction or
//! statement pool fails with the pool mode, the evidence and what to do instead.
CheckLine check_own_session(pqxx::connection_base& conn, const std::string& conninfo);

//! The fix for a connection error, when a pooler refused a startup parameter the relay sends.
std::string connect_fix(const std::string& error, const std::string& otherwise);

}  // namespace outbox::cli
