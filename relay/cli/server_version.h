// The PostgreSQL versions the relay supports, and what `check` says of a server's.
#pragma once

#include <optional>
#include <string>

namespace outbox::cli {

//! Oldest supported major version: 13 put gen_random_uuid() in core (the schema's default
//! for event_id) and added pg_replication_slots.wal_status (replication mode reads it).
inline constexpr int kMinPostgresMajor = 13;
//! Newest supported major version: the newest the integration tests run on.
inline constexpr int kMaxPostgresMajor = 18;

//! "13 to 18".
inline std::string supported_postgres_range() {
  return std::to_string(kMinPostgresMajor) + " to " + std::to_string(kMaxPostgresMajor);
}

//! Why a server of `version_num` (SHOW server_version_num, e.g. 180006) is not supported, or
//! nullopt when it is. `version` is its display form (SHOW server_version, e.g. "18.6").
inline std::optional<std::string> postgres_version_problem(int version_num,
                                                           const std::string& version) {
  int major = version_num / 10000;  // 10 and later: MMmmmm
  if (major < kMinPostgresMajor) {
    return "PostgreSQL " + version + " is older than the supported " + supported_postgres_range() +
           ": the schema needs gen_random_uuid() in core and replication mode needs "
           "pg_replication_slots.wal_status, both from PostgreSQL 13";
  }
  if (major > kMaxPostgresMajor) {
    return "PostgreSQL " + version + " is newer than the supported " + supported_postgres_range() +
           " (not tested with this release)";
  }
  return std::nullopt;
}

}  // namespace outbox::cli
