// The PostgreSQL versions the relay supports in each source mode, the ones CI tests, and what
// `check` says of a server's.
#pragma once

#include <array>
#include <optional>
#include <string>

namespace outbox::cli {

//! What one source mode needs of the server's version.
struct ModeSupport {
  const char* mode;     //!< "polling" or "replication", as in source.mode
  int min_major;        //!< oldest supported major version
  int max_major;        //!< newest supported major version: the newest CI tests
  const char* why_min;  //!< what the oldest is the oldest for
};

//! Polling: 13 put gen_random_uuid() in core (the schema's default for event_id).
inline constexpr ModeSupport kPollingSupport{
    "polling", 13, 18, "the schema needs gen_random_uuid() in core, from PostgreSQL 13"};
//! Replication: 13 added pg_replication_slots.wal_status and the xid8 snapshot functions
//! (pg_current_snapshot, pg_visible_in_snapshot, pg_xact_status) the drain reads. Below 15
//! the relay creates its slot in the older syntax (replication/replication_connection.h).
inline constexpr ModeSupport kReplicationSupport{
    "replication", 13, 18,
    "replication mode needs pg_replication_slots.wal_status and the xid8 snapshot functions, "
    "from PostgreSQL 13"};

//! The major versions CI runs the integration tests on (integration/test-all.sh): 15 the
//! whole suite; 16, 17 and 18 a subset of it, both modes.
inline constexpr std::array<int, 4> kTestedPostgresMajors{15, 16, 17, 18};

//! "13 to 18".
inline std::string supported_range(const ModeSupport& s) {
  return std::to_string(s.min_major) + " to " + std::to_string(s.max_major);
}

//! "13 to 18": the range of both modes (they are the same).
inline std::string supported_postgres_range() { return supported_range(kPollingSupport); }

//! Why a server of `version_num` (SHOW server_version_num, e.g. 180006) is not supported in
//! mode `s`, or nullopt when it is. `version` is its display form (SHOW server_version).
inline std::optional<std::string> postgres_version_problem(int version_num,
                                                           const std::string& version,
                                                           const ModeSupport& s = kPollingSupport) {
  int major = version_num / 10000;  // 10 and later: MMmmmm
  if (major < s.min_major) {
    return "PostgreSQL " + version + " is older than the supported " + supported_range(s) + " of " +
           s.mode + " mode: " + s.why_min;
  }
  if (major > s.max_major) {
    return "PostgreSQL " + version + " is newer than the supported " + supported_range(s) + " of " +
           s.mode + " mode (not tested with this release)";
  }
  return std::nullopt;
}

//! `check`'s "postgres version" line: fails when the configured mode does not support the
//! server; says of each mode whether it would, and whether CI tests this major version.
struct VersionReport {
  bool ok = true;
  std::string detail;
  std::string fix;  //!< for a failure
};

inline VersionReport postgres_version_report(int version_num, const std::string& version,
                                             bool replication_mode) {
  VersionReport r;
  const ModeSupport& configured = replication_mode ? kReplicationSupport : kPollingSupport;
  std::optional<std::string> failure;
  r.detail = version + " (";
  for (const ModeSupport* s : {&kPollingSupport, &kReplicationSupport}) {
    auto problem = postgres_version_problem(version_num, version, *s);
    r.detail += std::string(s == &kPollingSupport ? "" : "; ") + s->mode +
                " mode: " + (problem ? "unsupported" : "supported") + ", " + supported_range(*s);
    if (problem && s == &configured) failure = problem;
  }
  if (failure) {
    r.ok = false;
    r.detail += "): " + *failure;
    r.fix = "run the relay in " + std::string(configured.mode) + " mode against PostgreSQL " +
            supported_range(configured);
    return r;
  }
  int major = version_num / 10000;
  std::string tested;
  bool is_tested = false;
  for (int m : kTestedPostgresMajors) {
    tested += (tested.empty() ? "" : ", ") + std::to_string(m);
    is_tested = is_tested || m == major;
  }
  r.detail += is_tested ? "; tested in CI)"
                        : "; not tested in CI, which tests " + tested + ": expected to work)";
  return r;
}

}  // namespace outbox::cli
