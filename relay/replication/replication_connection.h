// A libpq connection in logical replication mode (replication=database): the replication
// commands, then the COPY BOTH stream of START_REPLICATION.
//
// Lifecycle: construct (connects), query()/create_slot(), start(), then read()/send_status()
// from one thread until destroyed. Any connection failure throws core::UnavailableError;
// server refusals no retry can cure (slot missing, invalidated, or in use by another
// process) throw core::FatalError with the server's words and what to do.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/ports.h"
#include "replication/pgoutput.h"

namespace outbox::replication {

//! The CREATE_REPLICATION_SLOT command that makes a pgoutput slot with an exported snapshot on
//! a server of `server_version` (PQserverVersion, e.g. 140011): PostgreSQL 15 and later take
//! the options in parentheses, (SNAPSHOT 'export'); 13 and 14 know only the keyword form,
//! EXPORT_SNAPSHOT (which 15 and later still accept, as a deprecated spelling).
std::string create_slot_command(const std::string& slot, int server_version);

//! The START_REPLICATION command: protocol version 1 and the inserts of `publication`. It
//! asks for no logical decoding messages (pgoutput's `messages` option, PostgreSQL 14 and
//! later): the relay has no use for them, and 13 would refuse the option. The same text for
//! every supported version.
std::string start_replication_command(const std::string& slot, const std::string& publication,
                                      const std::string& from = "0/0");

//! The relay's walsender mark: every replication connection of the relay holds the session
//! advisory lock (kWalsenderClass, 0) shared (two-int form, pg_locks objsubid 2; the other
//! classes are in pg/shards.h), for as long as it lives. It tells a previous relay
//! session's walsender still on the slot from another consumer's, whatever the
//! application_name of either (a per-pod one in the dsn is common): PgReplicationStream::prepare.
constexpr int kWalsenderClass = 1869574004;

class ReplicationConnection {
 public:
  using Row = std::vector<std::optional<std::string>>;

  //! `conninfo` as made by build_conninfo; replication=database is added here. Takes the
  //! walsender mark (kWalsenderClass) before any replication command.
  explicit ReplicationConnection(const std::string& conninfo);
  ~ReplicationConnection();
  ReplicationConnection(const ReplicationConnection&) = delete;
  ReplicationConnection& operator=(const ReplicationConnection&) = delete;

  //! A replication command or SQL (simple protocol); its rows as text.
  std::vector<Row> query(const std::string& sql);

  struct CreatedSlot {
    Lsn consistent_point;
    std::string snapshot;  //!< the exported snapshot's name, valid until the next command
  };
  //! CREATE_REPLICATION_SLOT ... LOGICAL pgoutput with an exported snapshot, in the server's
  //! syntax (create_slot_command): the slot's consistent point and a snapshot that shows exactly
  //! the transactions committed before it. PostgreSQL answers only once every transaction open at
  //! that moment has ended, so this waits in short slices, calling `on_wait` about once a second
  //! of `clock`, and cancels the command (throwing core::UnavailableError) as soon as
  //! `cancelled` returns true.
  CreatedSlot create_slot(const std::string& slot, const std::function<bool()>& cancelled,
                          const std::function<void()>& on_wait, const core::Clock& clock);

  //! START_REPLICATION SLOT ... LOGICAL from the slot's confirmed position, inserts of
  //! `publication` (start_replication_command). With `from` above the confirmed position the
  //! server decodes the transactions that commit before `from` without sending them.
  void start(const std::string& slot, const std::string& publication,
             const std::string& from = "0/0");

  //! The next CopyData message of the stream, waiting up to `wait` for one; nullopt if none
  //! came. Throws when the stream ends or the connection fails.
  std::optional<std::string> read(std::chrono::milliseconds wait);

  //! A standby status update: `received` as written, `flushed` as flushed and applied (the
  //! slot keeps WAL from there on). With `reply`, the server answers with a keepalive that
  //! carries its current position.
  void send_status(Lsn received, Lsn flushed, bool reply);

 private:
  [[noreturn]] void fail_from_result(PGresult* result, const std::string& what);
  //! Waits up to `wait` for the socket, then lets libpq read what came: false if nothing did.
  bool wait_for_input(std::chrono::milliseconds wait, const char* what);
  PGconn* conn_ = nullptr;
};

}  // namespace outbox::replication
