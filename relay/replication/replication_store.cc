#include "replication/replication_store.h"

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

PgReplicationStore::PgReplicationStore(pg::Conninfo conninfo, std::string redacted,
                                       ReplicationSettings options, core::Clock& clock,
                                       std::function<bool()> stopping)
    : store_(conninfo, std::move(redacted), clock),
      table_(store_),
      stream_(std::move(conninfo), options, stopping, clock),
      source_(table_, stream_, clock, source_options(options), stopping) {}

std::vector<core::OutboxEvent> PgReplicationStore::begin_batch(
    std::size_t limit, std::size_t max_bytes, const std::vector<std::string>& skip_topics) {
  return source_.begin_batch(limit, max_bytes, skip_topics);
}

std::vector<core::OutboxEvent> PgReplicationStore::read_after(
    std::int64_t after_id, std::size_t pending_upto, std::size_t limit, std::size_t max_bytes,
    const std::vector<std::string>& skip_topics) {
  return source_.read_after(after_id, pending_upto, limit, max_bytes, skip_topics);
}

void PgReplicationStore::record_outcome(const core::BatchOutcome& outcome) {
  source_.record_outcome(outcome);
}

bool PgReplicationStore::wait_for_rows(std::chrono::milliseconds timeout) {
  return source_.wait_for_rows(timeout);
}

void PgReplicationStore::keep_alive() noexcept { source_.keep_alive(); }

}  // namespace outbox::replication
