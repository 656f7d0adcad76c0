// libpq connection strings: adding the relay's settings and secrets, and redacting for logs.
#pragma once

#include <memory>
#include <optional>
#include <string>

namespace outbox::pg {

//! `dsn` (key=value or postgresql:// URI) as a key=value string with `password` (when not
//! empty), connect_timeout and application_name=outbox-relay added unless the dsn sets them.
//! So that a network cut (a peer that vanished, not a closed socket) is noticed within
//! seconds on both ends, it also adds, each unless the dsn sets it:
//!  - client side: keepalives=1 keepalives_idle=5 keepalives_interval=2 keepalives_count=3
//!    tcp_user_timeout=10000 (ms): a libpq call on a dead connection fails instead of blocking;
//!  - server side, appended to `options` (the dsn's, else PGOPTIONS, kept as they are):
//!    -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3
//!    -c tcp_user_timeout=10000, each unless `options` sets that setting (-c name=value,
//!    -cname=value or --name=value): the server ends a vanished relay's session, and so frees
//!    its leader lock and replication slot, within seconds.
//! client_encoding is always UTF8 (a dsn's or PGCLIENTENCODING's is overridden): keys and
//! headers reach Kafka as UTF-8 whatever the database's encoding.
//! The same string serves the replication connection (a walsender takes -c settings too).
//! nullopt and `error` when libpq cannot parse the dsn, or when weak_tls_problem() refuses
//! it and `allow_weak_tls` (postgres.allow_weak_tls) is false.
std::optional<std::string> build_conninfo(const std::string& dsn, const std::string& password,
                                          int connect_timeout_s, std::string* error,
                                          bool allow_weak_tls = false);

//! Why `dsn` does not protect the connection, or nullopt when it does: its sslmode (else
//! PGSSLMODE, else libpq's default `prefer`) is weaker than verify-full (the only mode that
//! checks both the certificate's CA and its host name) while a host it may connect to is
//! neither a Unix socket nor a loopback address (localhost, 127.0.0.0/8, ::1). Hosts come
//! from host/hostaddr (else PGHOST/PGHOSTADDR); a dsn naming a `service` without host is
//! treated as remote. The normal and the replication connection use the same conninfo, so
//! this covers both.
std::optional<std::string> weak_tls_problem(const std::string& dsn);

//! `dsn` without its password, fit for a log line or an error message.
std::string redact_dsn(const std::string& dsn);

//! What build_conninfo is given, with where the password comes from.
struct ConninfoParts {
  std::string dsn;
  std::string password;       //!< postgres.password, or the password_file's content at start
  std::string password_file;  //!< postgres.password_file; empty: nothing to read again
  int connect_timeout_s = 10;
  bool allow_weak_tls = false;
};

//! The conninfo every connection of the relay is opened with, built again at each open
//! (current()): a password given by file (postgres.password_file) is read again then, so a
//! rotated password (a mounted Secret rewritten, a token a sidecar refreshes) is used by the
//! next connection, the leader session's, the replication connection's and the others', with
//! no restart. A file that cannot be read at that moment leaves the last password read in use
//! (a warning is logged; a Secret being swapped is never a reason to stop).
//! A value type: copies share the last password read. current() may be called from any thread.
class Conninfo {
 public:
  //! A conninfo with nothing to read again (one-shot commands, tests).
  Conninfo(std::string fixed);  // NOLINT(google-explicit-constructor): a string is one
  Conninfo(const char* fixed)
      : Conninfo(std::string(fixed)) {}  // NOLINT(google-explicit-constructor)
  //! Checks `parts` as build_conninfo does; nullopt and `error` when it refuses them.
  static std::optional<Conninfo> make(const ConninfoParts& parts, std::string* error);

  //! The conninfo to open a connection with now.
  std::string current() const;

 private:
  struct State;
  explicit Conninfo(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

}  // namespace outbox::pg
