// PostgreSQL side of delivery.guarantee: exactly_once: the recovery's mark (rows a previous
// run committed to Kafka and did not mark) and the relay's identity for the default
// transactional.id. See relay/core/README-eos.md.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/ports.h"
#include "pg/conninfo.h"

namespace outbox::pg {

//! Marks the rows of a recovered checkpoint published, on a connection of its own (opened
//! per use: recovery is rare). Only rows still pending change: a row the checkpoint names
//! may have been marked since, or deleted by retention.
class PgRecoveryMarker : public core::RecoveryMarker {
 public:
  PgRecoveryMarker(Conninfo conninfo, std::string redacted);
  Result mark_published(const std::vector<core::CheckpointRow>& rows) override;

 private:
  Conninfo conninfo_;
  std::string redacted_;
};

//! The default transactional.id: "outbox-relay:<system identifier>:<database>:<source>",
//! source "polling" or "replication:<slot>". Stable across restarts, replicas of one relay
//! deployment and failovers (a physical standby has the primary's system identifier),
//! different for another database or slot. Throws core::FatalError when the role may not
//! read the system identifier (nothing else survives a failover: set
//! delivery.transactional_id), core::UnavailableError when PostgreSQL cannot be reached.
std::string default_transactional_id(const std::string& conninfo, const std::string& source);

}  // namespace outbox::pg
