// libpq connection strings: adding the relay's settings and secrets, and redacting for logs.
#pragma once

#include <optional>
#include <string>

namespace outbox::pg {

//! `dsn` (key=value or postgresql:// URI) as a key=value string with `password` (when not
//! empty), connect_timeout and application_name=outbox-relay added unless the dsn sets them.
//! nullopt and `error` when libpq cannot parse the dsn.
std::optional<std::string> build_conninfo(const std::string& dsn, const std::string& password,
                                          int connect_timeout_s, std::string* error);

//! `dsn` without its password, fit for a log line or an error message.
std::string redact_dsn(const std::string& dsn);

}  // namespace outbox::pg
