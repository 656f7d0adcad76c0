#include "replication/replication_connection.h"

#include <sys/select.h>

#include <cerrno>

#include "core/ports.h"
#include "pg/session_probe.h"

namespace outbox::replication {

namespace {

std::string trimmed(const char* message) {
  std::string s = message ? message : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

std::string create_slot_command(const std::string& slot, int server_version) {
  if (server_version >= 150000) {
    return "CREATE_REPLICATION_SLOT " + slot + " LOGICAL pgoutput (SNAPSHOT 'export')";
  }
  return "CREATE_REPLICATION_SLOT " + slot + " LOGICAL pgoutput EXPORT_SNAPSHOT";
}

std::string start_replication_command(const std::string& slot, const std::string& publication,
                                      const std::string& from) {
  return "START_REPLICATION SLOT " + slot + " LOGICAL " + from +
         " (proto_version '1', publication_names '\"" + publication + "\"')";
}

ReplicationConnection::ReplicationConnection(const std::string& conninfo) {
  conn_ = PQconnectdb((conninfo + " replication='database'").c_str());
  if (PQstatus(conn_) != CONNECTION_OK) {
    std::string message = trimmed(PQerrorMessage(conn_));
    PQfinish(conn_);
    conn_ = nullptr;
    // A pooler never passes a walsender connection on: no retry cures that.
    if (auto hint = pg::pooler_startup_hint(message)) {
      throw core::FatalError("PostgreSQL replication connection: " + message + " (" + *hint + ")");
    }
    throw core::UnavailableError("PostgreSQL replication connection: " + message);
  }
  // pgoutput sends values as text under the walsender session's settings: pin the ones the decoder
  // reads (bytea as \x hex) whatever the server's or role's defaults.
  query("SET bytea_output = 'hex'");
  // Nobody takes this lock exclusively: it never waits.
  query("SELECT pg_advisory_lock_shared(" + std::to_string(kWalsenderClass) + ", 0)");
}

ReplicationConnection::~ReplicationConnection() {
  if (conn_ != nullptr) PQfinish(conn_);
}

void ReplicationConnection::fail_from_result(PGresult* result, const std::string& what) {
  const char* state = result ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  std::string sqlstate = state ? state : "";
  std::string message = trimmed(result ? PQresultErrorMessage(result) : PQerrorMessage(conn_));
  if (message.empty()) message = trimmed(PQerrorMessage(conn_));
  if (result) PQclear(result);
  // 55006 object in use: the slot is active for another process; 55000: invalidated slot;
  // 42704: no such slot; 42501: no REPLICATION privilege. Retrying cures none of them.
  if (sqlstate == "55006" || sqlstate == "55000" || sqlstate == "42704" || sqlstate == "42501") {
    throw core::FatalError(what + ": " + message);
  }
  throw core::UnavailableError(what + ": " + message);
}

std::vector<ReplicationConnection::Row> ReplicationConnection::query(const std::string& sql) {
  PGresult* result = PQexec(conn_, sql.c_str());
  ExecStatusType status = PQresultStatus(result);
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) fail_from_result(result, sql);
  std::vector<Row> rows;
  for (int r = 0; r < PQntuples(result); ++r) {
    Row row;
    for (int c = 0; c < PQnfields(result); ++c) {
      if (PQgetisnull(result, r, c)) {
        row.emplace_back(std::nullopt);
      } else {
        row.emplace_back(std::string(PQgetvalue(result, r, c), PQgetlength(result, r, c)));
      }
    }
    rows.push_back(std::move(row));
  }
  PQclear(result);
  return rows;
}

ReplicationConnection::CreatedSlot ReplicationConnection::create_slot(
    const std::string& slot, const std::function<bool()>& cancelled,
    const std::function<void()>& on_wait, const core::Clock& clock) {
  std::string sql = create_slot_command(slot, PQserverVersion(conn_));
  if (PQsendQuery(conn_, sql.c_str()) != 1) {
    throw core::UnavailableError("CREATE_REPLICATION_SLOT: " + trimmed(PQerrorMessage(conn_)));
  }
  auto last_note = clock.now();
  while (PQisBusy(conn_)) {
    if (cancelled()) {
      char err[256];
      if (PGcancel* cancel = PQgetCancel(conn_)) {
        PQcancel(cancel, err, sizeof err);
        PQfreeCancel(cancel);
      }
      throw core::UnavailableError("CREATE_REPLICATION_SLOT cancelled (stopping)");
    }
    wait_for_input(std::chrono::milliseconds(200), "CREATE_REPLICATION_SLOT");
    if (clock.now() - last_note >= std::chrono::seconds(1)) {
      on_wait();
      last_note = clock.now();
    }
  }
  PGresult* result = PQgetResult(conn_);
  if (PQresultStatus(result) != PGRES_TUPLES_OK) fail_from_result(result, sql);
  // slot_name, consistent_point, snapshot_name, output_plugin
  std::optional<Lsn> lsn;
  std::string snapshot;
  if (PQntuples(result) > 0 && PQnfields(result) >= 3 && !PQgetisnull(result, 0, 1) &&
      !PQgetisnull(result, 0, 2)) {
    lsn = Lsn::parse(PQgetvalue(result, 0, 1));
    snapshot = PQgetvalue(result, 0, 2);
  }
  PQclear(result);
  while (PGresult* rest = PQgetResult(conn_)) PQclear(rest);
  if (!lsn || snapshot.empty()) {
    throw core::UnavailableError(
        "CREATE_REPLICATION_SLOT returned no consistent point or no snapshot");
  }
  return {*lsn, snapshot};
}

void ReplicationConnection::start(const std::string& slot, const std::string& publication,
                                  const std::string& from) {
  std::string sql = start_replication_command(slot, publication, from);
  PGresult* result = PQexec(conn_, sql.c_str());
  if (PQresultStatus(result) != PGRES_COPY_BOTH) fail_from_result(result, "START_REPLICATION");
  PQclear(result);
}

std::optional<std::string> ReplicationConnection::read(std::chrono::milliseconds wait) {
  for (int round = 0; round < 2; ++round) {
    char* buffer = nullptr;
    int n = PQgetCopyData(conn_, &buffer, /*async=*/1);
    if (n > 0) {
      std::string message(buffer, static_cast<std::size_t>(n));
      PQfreemem(buffer);
      return message;
    }
    if (n == -1) fail_from_result(PQgetResult(conn_), "replication stream ended");
    if (n == -2)
      throw core::UnavailableError("replication stream: " + trimmed(PQerrorMessage(conn_)));
    if (round == 1) break;
    // Nothing buffered: wait for the socket, then let libpq read what came.
    if (!wait_for_input(wait, "replication stream")) return std::nullopt;
  }
  return std::nullopt;
}

bool ReplicationConnection::wait_for_input(std::chrono::milliseconds wait, const char* what) {
  int fd = PQsocket(conn_);
  fd_set readable;
  FD_ZERO(&readable);
  FD_SET(fd, &readable);
  timeval tv{static_cast<time_t>(wait.count() / 1000),
             static_cast<suseconds_t>((wait.count() % 1000) * 1000)};
  int ready = select(fd + 1, &readable, nullptr, nullptr, &tv);
  if (ready < 0 && errno != EINTR)
    throw core::UnavailableError(std::string(what) + ": select failed");
  if (ready <= 0) return false;
  if (PQconsumeInput(conn_) == 0) {
    throw core::UnavailableError(std::string(what) + ": " + trimmed(PQerrorMessage(conn_)));
  }
  return true;
}

void ReplicationConnection::send_status(Lsn received, Lsn flushed, bool reply) {
  std::string message = encode_standby_status(
      received, flushed, flushed, pg_time_from_system(std::chrono::system_clock::now()), reply);
  if (PQputCopyData(conn_, message.data(), static_cast<int>(message.size())) != 1 ||
      PQflush(conn_) != 0) {
    throw core::UnavailableError("replication status update: " + trimmed(PQerrorMessage(conn_)));
  }
}

}  // namespace outbox::replication
