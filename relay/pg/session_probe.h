// Whether the relay's connection has a PostgreSQL server session of its own: connection
// poolers (PgBouncer's pool_mode) seen from the client.
//
// The relay keeps state in its server session for as long as its connection lives: the
// leader lock and the shard claims (session advisory locks), LISTEN on the hint channel,
// its prepared statements. A pooler in transaction or statement mode hands the server
// session to other clients between transactions: a second relay landing on the session that
// holds the leader lock takes it again at once (session locks stack within one session), so
// two relays could both believe they lead. Invariant own-session: the relay publishes only
// on a connection whose server session is its own; it refuses to run otherwise.
//
// The probe, at each new session of the relay (leader_session.cc) and in `check`; nothing in it
// waits on time, every answer comes from what the server and the pooler did:
//  1. One statement on the connection: pg_backend_pid(), the session marker already set
//     (`outbox.session_probe`, a custom setting) and a new random marker, set at session
//     level. A direct connection (or a proxy that only forwards bytes) got its process id in
//     the cancel key (PQbackendPID) from PostgreSQL itself: the two agree and the probe ends
//     there, one round trip. A pooler answers the startup itself and makes up the cancel
//     key (PgBouncer: random bytes), so they differ. A marker already set in a fresh
//     session is another client's: sessions are handed over without reset (transaction or
//     statement pooling, or session pooling with an empty server_reset_query).
//  2. Behind a pooler, a second connection opens a transaction: a pooler in statement mode
//     refuses the transaction block ("transaction blocks not allowed in statement pooling
//     mode"). In the transaction, the marker of step 1 seen there proves the first
//     connection's session went to this client (transaction pooling).
//  3. While the second connection holds its transaction (and so its server session), the
//     first connection reads its process id and marker again: another process, or the
//     marker gone, proves its statements changed session (transaction pooling).
//  Anything else is session pooling: the first connection kept one session throughout
//  and the second got another one. In transaction mode a quiet pool (PgBouncer hands out
//  the most recently released server first) gives step 2's proof; a busy pool may give
//  neither proof at start, and then the leader lock's statement guards (check_same_session):
//  it reads the process id and marker with the lock, so a relay whose statement ran in a
//  session not its own refuses instead of leading.
#pragma once

#include <pqxx/pqxx>

#include <optional>
#include <string>

namespace outbox::pg {

//! How the connection reaches PostgreSQL, as far as its session goes.
enum class SessionMode {
  direct,       //!< PostgreSQL itself (or a proxy forwarding bytes): the session is its own
  session,      //!< a pooler that keeps one server session per client (pool_mode = session)
  transaction,  //!< a pooler handing the session to other clients between transactions
  statement,    //!< a pooler handing it over after every statement, refusing transactions
};
const char* to_string(SessionMode mode);

//! The custom setting the probe sets in the relay's session.
inline constexpr const char* kSessionMarker = "outbox.session_probe";

//! What the probe saw (the pure input of classify_session).
struct SessionObservations {
  int key_pid = 0;           //!< the process id of the cancel key (PQbackendPID)
  int backend_pid = 0;       //!< pg_backend_pid() in the first statement
  std::string found_marker;  //!< the marker already set in the new session ("" when none)
  // Behind a pooler only (key_pid != backend_pid):
  bool second_refused_block = false;  //!< the second connection's transaction was refused
  std::string second_error;           //!< ... with this message
  bool second_saw_marker = false;     //!< its session carried the first connection's marker
  int second_pid = 0;                 //!< its server process
  int later_pid = 0;                  //!< the first connection's process id again (step 3)
  bool later_kept_marker = true;      //!< ... and whether its marker was still there
};

//! The verdict, with what was seen in plain words.
struct SessionFinding {
  SessionMode mode = SessionMode::direct;
  std::string evidence;
  //! direct and session: the relay may run.
  bool own_session() const { return mode == SessionMode::direct || mode == SessionMode::session; }
  //! One line for `check` and the log: the mode and the evidence.
  std::string describe() const;
  //! Why the relay refuses (own_session() false): the mode, the evidence, the consequence.
  std::string refusal() const;
};

//! What to do instead of a transaction or statement pool (check's fix line, the log).
std::string pooler_fix();

//! The verdict for what the probe saw (pure).
SessionFinding classify_session(const SessionObservations& seen);

//! Why a statement that was to run in the relay's own session ran elsewhere, or nullopt when
//! it ran there: `pid` and `marker` as read in that statement, against the session's own.
std::optional<std::string> session_moved(int own_pid, const std::string& own_marker, int pid,
                                         const std::string& marker);

//! A new random marker (hex).
std::string new_session_marker();

//! Probes `conn` (a new connection to `conninfo`; no transaction open on it), setting
//! `marker` in its session; behind a pooler a second connection to `conninfo` is opened for
//! the duration. `pid` receives the session's server process id. Throws what libpqxx throws
//! when PostgreSQL or the pooler fails otherwise.
SessionFinding probe_session(pqxx::connection_base& conn, const std::string& conninfo,
                             const std::string& marker, int* pid = nullptr);

//! For a connection error from a pooler refusing a startup parameter the relay sends
//! (`options`, where it sets server-side keepalives, or `replication`): what it means and
//! what to do; nullopt for any other error.
std::optional<std::string> pooler_startup_hint(const std::string& error);

}  // namespace outbox::pg
