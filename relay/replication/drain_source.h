// Replication mode's drain (replication_source.h, 2, 3 and 6): the rows pending at the start
// that the stream may not bring, read by state from the table as polling reads them.
//
// Lifecycle and thread: made by ReplicationSource when it starts, dropped at the hand-over
// to the stream or at a reset; the worker thread only; the table outlives it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/event.h"
#include "replication/replication_ports.h"

namespace outbox::replication {

//! The rows pending at the start that the stream may not bring: every row pending, of a
//! topic not skipped, with an id up to a bound fixed at the start (2, 3 in
//! replication_source.h). Read by state from the table, as polling reads; nothing of it is held
//! here.
class DrainSource {
 public:
  DrainSource(ReplicationTable& table, std::int64_t upto) : table_(table), upto_(upto) {}
  //! By state: the first pending rows up to the bound, in id order, leaving out
  //! `skip_topics`. Empty only when none is left of the topics not skipped: done() then.
  std::vector<core::OutboxEvent> begin(std::size_t limit, std::size_t max_bytes,
                                       const std::vector<std::string>& skip_topics);
  //! The next pending rows above `after_id` up to the bound, if exactly `pending_upto`
  //! pending rows of topics not skipped have ids up to `after_id` (6 in replication_source.h);
  //! otherwise none.
  std::vector<core::OutboxEvent> after(std::int64_t after_id, std::size_t pending_upto,
                                       std::size_t limit, std::size_t max_bytes,
                                       const std::vector<std::string>& skip_topics);
  bool done() const { return done_; }
  std::int64_t upto() const { return upto_; }

 private:
  ReplicationTable& table_;
  std::int64_t upto_;
  bool done_ = false;
};

}  // namespace outbox::replication
