// `outbox-relay audit`: compares outbox.events with what Kafka holds.
//
// Reads the rows by keyset pagination on id (pages of AuditOptions::page_size), then every
// partition of the rows' topics (after kafka.topic_map) from its beginning up to the high
// watermark queried at start, with a read_committed consumer that never commits offsets.
// The accounting is AuditLedger's (audit_ledger.h). Rows are read before the watermarks are
// queried, so a row seen as published has its message below them.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "audit/audit_ledger.h"
#include "config/config.h"
#include "kafka/client_conf.h"

namespace outbox::audit {

//! Exit codes of run_audit (the values of cli::ExitCode).
enum AuditExit : int {
  kClean = 0,     //!< nothing lost, per-key order kept
  kProblems = 1,  //!< lost rows or order violations; or PostgreSQL / Kafka could not be read
  kUsage = 2,     //!< bad --since or postgres.dsn
};

struct AuditOptions {
  //! Audit only rows created at or after this: an ISO 8601 timestamp ("2024-05-01",
  //! "2024-05-01T12:00:00Z", "2024-05-01 12:00:00+02:00"; without offset: the server's
  //! TimeZone), or a number followed by s, m, h or d ("30m": created in the last 30 minutes).
  std::optional<std::string> since;
  bool json = false;               //!< one JSON object instead of text lines
  std::ostream* out = &std::cout;  //!< the report
  std::ostream* err = &std::cerr;  //!< why the audit could not run
  std::size_t page_size = 10'000;  //!< rows per keyset page
  //! Longest wait for Kafka's metadata and watermarks of a topic.
  std::chrono::milliseconds metadata_timeout{10'000};
  //! Longest time without a message while a partition is still below its watermark.
  std::chrono::milliseconds stall_timeout{30'000};
};

//! --since parsed: a timestamp for PostgreSQL to read, or a number of seconds ago.
using Since = std::variant<std::string, std::int64_t>;

//! The --since value, or nullopt with `error` set.
std::optional<Since> parse_since(std::string_view text, std::string* error);

//! Whether librdkafka documents `name` as a producer-only property (acks, linger.ms, ...):
//! such kafka.properties are not passed to the audit's consumer (kafka/client_conf.h).
using kafka::is_producer_only_property;

//! The report as aligned text lines, or as one JSON object (snake_case keys).
std::string format_text(const AuditReport& report);
std::string format_json(const AuditReport& report);

//! Runs the audit and writes the report to opts.out; returns an AuditExit.
int run_audit(const config::Config& config, const AuditOptions& opts);

}  // namespace outbox::audit
