// Secrets given by file (postgres.password_file, kafka.secret_files): read at start and again
// whenever a connection that uses them is opened (docs/operations/secrets.md).
#pragma once

#include <optional>
#include <string>

namespace outbox::common {

//! The file's content without its trailing line ends (\n, \r\n), as `echo` or a Kubernetes
//! Secret leaves them; nullopt with the reason in *why when it cannot be read. Never logs.
std::optional<std::string> read_secret_file(const std::string& path, std::string* why = nullptr);

}  // namespace outbox::common
