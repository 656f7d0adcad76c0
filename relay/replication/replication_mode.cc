#include "replication/replication_mode.h"

namespace outbox::replication {

namespace {

ReplicationSourceOptions source_options(const ReplicationSettings& c) {
  ReplicationSourceOptions o;
  o.slot_name = c.slot_name;
  o.status_interval = c.status_interval;
  o.heartbeat_interval = c.heartbeat_interval;
  o.waiting = c.waiting;
  o.visibility_waiting = c.visibility_waiting;
  return o;
}

}  // namespace

ReplicationMode::ReplicationMode(pg::Conninfo conninfo, std::string redacted,
                                 ReplicationSettings options, core::Clock& clock,
                                 std::function<bool()> stopping)
    : table_(conninfo, std::move(redacted), clock),
      stream_(std::move(conninfo), options, stopping, clock),
      source_(table_, stream_, clock, source_options(options), stopping) {}

}  // namespace outbox::replication
