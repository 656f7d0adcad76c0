#include "replication/drain_source.h"

#include <limits>

namespace outbox::replication {

std::vector<core::OutboxEvent> DrainSource::begin(std::size_t limit, std::size_t max_bytes,
                                                  const std::vector<std::string>& skip_topics) {
  auto events = table_.pending_range(std::numeric_limits<std::int64_t>::min(), upto_, std::nullopt,
                                     limit, max_bytes, skip_topics);
  // By state, so a row not read is resolved, or of a skipped topic: deferred at the hand-over.
  if (events.empty()) done_ = true;
  return events;
}

std::vector<core::OutboxEvent> DrainSource::after(std::int64_t after_id, std::size_t pending_upto,
                                                  std::size_t limit, std::size_t max_bytes,
                                                  const std::vector<std::string>& skip_topics) {
  if (after_id >= upto_) return {};
  return table_.pending_range(after_id, upto_, pending_upto, limit, max_bytes, skip_topics);
}

}  // namespace outbox::replication
