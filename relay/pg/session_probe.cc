#include "pg/session_probe.h"

#include <libpq-fe.h>

#include <memory>
#include <random>
#include <stdexcept>
#include <vector>

namespace outbox::pg {

namespace {

// The marker found and a new one set, in that order (OFFSET 0 keeps the inner query a
// subquery evaluated first, so the read comes before the set).
constexpr const char* kFirstSql =
    "SELECT pid, found, set_config($1, $2, false) FROM (SELECT pg_backend_pid() AS pid, "
    "coalesce(current_setting($1, true), '') AS found OFFSET 0) AS s";
constexpr const char* kReadSql = "SELECT pg_backend_pid(), coalesce(current_setting($1, true), '')";

// The same read as a literal statement (the second client's, on libpq).
constexpr const char* kSecondSql =
    "SELECT pg_backend_pid()::text, coalesce(current_setting('outbox.session_probe', true), '')";

bool contains(const std::string& text, const char* part) {
  return text.find(part) != std::string::npos;
}

std::string trimmed(const char* message) {
  std::string s = message ? message : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Runs `sql` on `conn`; the error message when it failed, else nullopt and the first row's
// values in `row` (when given). Every result is read, not only the last: a statement pooler
// refuses BEGIN with an error that comes after BEGIN's own result, then closes.
std::optional<std::string> exec(PGconn* conn, const char* sql, std::vector<std::string>* row) {
  if (PQsendQuery(conn, sql) != 1) return trimmed(PQerrorMessage(conn));
  std::string errors;
  while (PGresult* raw = PQgetResult(conn)) {
    std::unique_ptr<PGresult, decltype(&PQclear)> r(raw, &PQclear);
    ExecStatusType status = PQresultStatus(r.get());
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
      std::string message = trimmed(PQresultErrorMessage(r.get()));
      if (errors.find(message) == std::string::npos) {
        errors += (errors.empty() ? "" : "; ") + message;
      }
    } else if (row != nullptr && status == PGRES_TUPLES_OK && PQntuples(r.get()) == 1) {
      for (int c = 0; c < PQnfields(r.get()); ++c) row->emplace_back(PQgetvalue(r.get(), 0, c));
    }
  }
  if (errors.empty() && PQstatus(conn) != CONNECTION_OK) errors = trimmed(PQerrorMessage(conn));
  if (!errors.empty()) return errors;
  if (row != nullptr && row->empty()) return std::string("expected one row");
  return std::nullopt;
}

}  // namespace

const char* to_string(SessionMode mode) {
  switch (mode) {
    case SessionMode::direct:
      return "direct";
    case SessionMode::session:
      return "session";
    case SessionMode::transaction:
      return "transaction";
    case SessionMode::statement:
      return "statement";
  }
  return "unknown";
}

std::string SessionFinding::describe() const {
  switch (mode) {
    case SessionMode::direct:
      return "a server session of its own (direct connection; " + evidence + ")";
    case SessionMode::session:
      return "a server session of its own through a connection pooler in session mode (" +
             evidence + ")";
    case SessionMode::transaction:
      return "a connection pooler in transaction pooling mode (PgBouncer pool_mode = "
             "transaction): " +
             evidence;
    case SessionMode::statement:
      return "a connection pooler in statement pooling mode (PgBouncer pool_mode = "
             "statement): " +
             evidence;
  }
  return evidence;
}

std::string SessionFinding::refusal() const {
  return "PostgreSQL is reached through " + describe() +
         ". The relay keeps its leader lock and shard claims (session advisory locks), LISTEN "
         "and prepared statements in its server session, which such a pooler hands to other "
         "clients between transactions: two relays could both believe they lead";
}

std::string pooler_fix() {
  return "point postgres.dsn at PostgreSQL directly, or at a PgBouncer pool in session mode "
         "(pool_mode = session, with its default server_reset_query = DISCARD ALL); services "
         "may keep calling outbox.enqueue through the transaction pool";
}

SessionFinding classify_session(const SessionObservations& seen) {
  SessionFinding f;
  const std::string pid = std::to_string(seen.backend_pid);
  if (!seen.found_marker.empty()) {
    // Only a previous client can have set it: a new server session starts without it, and a
    // session pooler's DISCARD ALL removes it before handing the session on.
    f.mode = SessionMode::transaction;
    f.evidence = "the new connection's server session (process " + pid +
                 ") already carried another client's " + kSessionMarker +
                 ": sessions are handed from client to client without reset";
    return f;
  }
  if (seen.key_pid == seen.backend_pid) {
    f.mode = SessionMode::direct;
    f.evidence = "server process " + pid;
    return f;
  }
  const std::string pooler = "a pooler answers for PostgreSQL (cancel key process " +
                             std::to_string(seen.key_pid) + ", server process " + pid + ")";
  if (seen.second_refused_block) {
    f.mode = SessionMode::statement;
    f.evidence = pooler + "; it refused a transaction block (" + seen.second_error + ")";
    return f;
  }
  if (seen.second_saw_marker) {
    f.mode = SessionMode::transaction;
    f.evidence = pooler + "; a second connection ran in this connection's server session (" +
                 kSessionMarker + " set by the first was there)";
    return f;
  }
  if (seen.later_pid != seen.backend_pid || !seen.later_kept_marker) {
    f.mode = SessionMode::transaction;
    f.evidence =
        pooler + "; this connection's statements ran in server process " + pid + ", then " +
        std::to_string(seen.later_pid) +
        (seen.later_kept_marker ? "" : " (without its " + std::string(kSessionMarker) + ")");
    return f;
  }
  f.mode = SessionMode::session;
  f.evidence = pooler + "; this connection kept server process " + pid +
               " while a second one had process " + std::to_string(seen.second_pid);
  return f;
}

std::optional<std::string> session_moved(int own_pid, const std::string& own_marker, int pid,
                                         const std::string& marker) {
  if (pid == own_pid && marker == own_marker) return std::nullopt;
  return "a statement of this connection ran in server process " + std::to_string(pid) +
         (marker == own_marker
              ? ""
              : " (without this connection's " + std::string(kSessionMarker) + ")") +
         ", not in its own session's process " + std::to_string(own_pid) +
         ": the connection pooler hands server sessions to other clients between transactions";
}

std::string new_session_marker() {
  static thread_local std::mt19937_64 gen{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 2; ++i) {
    auto v = gen();
    for (int j = 0; j < 16; ++j) out += hex[(v >> (4 * j)) & 0xF];
  }
  return out;
}

SessionFinding probe_session(pqxx::connection_base& conn, const std::string& conninfo,
                             const std::string& marker, int* pid) {
  SessionObservations seen;
  seen.key_pid = conn.backendpid();
  {
    pqxx::nontransaction n(conn);
    auto row = n.exec_params1(kFirstSql, kSessionMarker, marker);
    seen.backend_pid = row[0].as<int>();
    seen.found_marker = row[1].as<std::string>();
  }
  if (pid != nullptr) *pid = seen.backend_pid;
  if (seen.key_pid == seen.backend_pid || !seen.found_marker.empty()) {
    return classify_session(seen);
  }
  // Behind a pooler: a second client, holding a transaction for steps 2 and 3, on libpq
  // itself: a statement pooler answers its BEGIN with an error and closes the connection,
  // and libpqxx would report the closed connection instead.
  std::unique_ptr<PGconn, decltype(&PQfinish)> second(PQconnectdb(conninfo.c_str()), &PQfinish);
  if (PQstatus(second.get()) != CONNECTION_OK) {
    throw std::runtime_error("a second connection for the probe failed: " +
                             trimmed(PQerrorMessage(second.get())));
  }
  if (auto refused = exec(second.get(), "BEGIN", nullptr)) {
    if (!contains(*refused, "statement pooling")) {
      throw std::runtime_error("the probe's second connection: " + *refused);
    }
    seen.second_refused_block = true;
    // The pooler's words alone, without libpq's "FATAL:" and what followed the close.
    std::string words = refused->substr(0, refused->find("; "));
    auto colon = words.find("FATAL:");
    if (colon != std::string::npos) words = words.substr(words.find_first_not_of(' ', colon + 6));
    seen.second_error = words;
    return classify_session(seen);
  }
  std::vector<std::string> row;
  if (auto failed = exec(second.get(), kSecondSql, &row)) {
    throw std::runtime_error("the probe's second connection: " + *failed);
  }
  seen.second_pid = std::stoi(row.at(0));
  seen.second_saw_marker = row.at(1) == marker;
  if (!seen.second_saw_marker) {
    // Step 3, while the second connection holds its transaction.
    pqxx::nontransaction n(conn);
    auto again = n.exec_params1(kReadSql, kSessionMarker);
    seen.later_pid = again[0].as<int>();
    seen.later_kept_marker = again[1].as<std::string>() == marker;
  }
  exec(second.get(), "ROLLBACK", nullptr);
  return classify_session(seen);
}

std::optional<std::string> pooler_startup_hint(const std::string& error) {
  if (contains(error, "unsupported startup parameter: options")) {
    return std::string(
        "a connection pooler (PgBouncer) refused the startup parameter `options`, where the "
        "relay sets server-side TCP keepalives: point postgres.dsn at PostgreSQL directly, or "
        "use a PgBouncer pool in session mode (pool_mode = session) whose pgbouncer.ini has "
        "`ignore_startup_parameters = extra_float_digits, options` (its own tcp_keepalive "
        "settings then apply)");
  }
  if (contains(error, "unsupported startup parameter: replication")) {
    return std::string(
        "a connection pooler (PgBouncer) refused the replication connection: source.mode "
        "replication streams from a logical slot over a walsender connection, which needs "
        "PostgreSQL itself: point postgres.dsn at PostgreSQL directly");
  }
  return std::nullopt;
}

}  // namespace outbox::pg
