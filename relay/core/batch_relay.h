// The polling pipeline: read a batch of pending rows, publish them, record the outcome.
//
// Invariant 1: a row is recorded as published only when the publisher reported Kafka's
// acknowledgement for its message. Invariant 2: rows are selected by state (pending), never
// by "id greater than the last one seen", so a transaction that commits late is still read.
// Invariant 3: within a batch messages are handed to the publisher in id order, and a batch
// is finished before the next one is read, so one key's events reach Kafka in id order.
// Invariant 4: an outcome that could not be recorded (the mark failed: connection lost, a
// trigger, a revoked grant, statement_timeout) is kept and its recording retried with
// backoff before anything else is read; its messages are never sent again by this process
// for that reason, so a mark that fails every time costs no duplicates.
// Invariant 5: a row is dead-lettered only for a reason proven its own: checked on the row
// alone (topic name, headers, librdkafka's own size check), or an error Kafka may answer for
// a whole produce request (too large, invalid record) repeated with the row in a batch of
// its own. Invariant 6: a topic that cannot take messages (unknown, not authorized, policy)
// never dead-letters its rows: it waits with its own backoff, asked about before its rows
// are sent again, while the other topics flow (its rows are skipped when reading).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "core/backoff.h"
#include "core/observer.h"
#include "core/ports.h"

namespace outbox::core {

struct BatchRelayOptions {
  std::size_t batch_size = 1000;
  std::size_t batch_max_bytes = 16 << 20;  //!< see OutboxStore::begin_batch
  std::chrono::milliseconds interval{500};
  std::chrono::milliseconds backoff_initial{200};
  std::chrono::milliseconds backoff_max{30'000};
  std::chrono::milliseconds shutdown_timeout{30'000};
  std::map<std::string, std::string> topic_map;
};

//! What one batch did.
struct BatchReport {
  std::size_t read = 0;
  bool full = false;  //!< stopped at a limit (rows or bytes): more rows may be waiting
  std::size_t published = 0;
  std::size_t retried = 0;
  std::size_t dead_lettered = 0;
  std::size_t left_pending = 0;   //!< not resolved: stays pending, sent again later
  std::size_t transient = 0;      //!< of which the cluster's fault (the relay backs off)
  std::size_t topic_blocked = 0;  //!< of which waiting for their topic
  std::size_t suspects = 0;       //!< of which to be sent alone (batch-level error)
};

//! Counters since start, readable from any thread.
struct RelayCounters {
  std::atomic<std::uint64_t> published{0};
  std::atomic<std::uint64_t> dead_lettered{0};
  std::atomic<std::uint64_t> failed_attempts{0};
  std::atomic<std::uint64_t> batches{0};
};

//! Lifecycle: construct, run() on one thread until `stop` is set, destroy.
class BatchRelay {
 public:
  BatchRelay(OutboxStore& store, Publisher& publisher, Clock& clock, BatchRelayOptions options);

  //! One batch. Throws UnavailableError when PostgreSQL or the publisher failed; then
  //! nothing of this batch was recorded.
  BatchReport run_batch(const std::function<bool()>& give_up);

  //! Until `stop` becomes true: batches, waits for rows when idle, backs off on failures.
  //! After `stop`, the batch in flight gets up to shutdown_timeout to be acknowledged and
  //! recorded; run() then returns the number of messages it had to leave unrecorded.
  std::size_t run(const std::atomic<bool>& stop);

  const RelayCounters& counters() const { return counters_; }

  //! Reports progress and health to `observer` (not owned; outlives run()). Call before run().
  void set_observer(RelayObserver* observer) { observer_ = observer ? observer : &no_observer_; }

 private:
  void idle_wait(const std::atomic<bool>& stop);
  void record_unrecorded();
  void block_topic(const std::string& topic, const std::string& reason);
  void count(const BatchOutcome& outcome, BatchReport& report);

  OutboxStore& store_;
  Publisher& publisher_;
  Clock& clock_;
  BatchRelayOptions options_;
  Backoff backoff_;
  RelayCounters counters_;
  std::optional<BatchOutcome> unrecorded_;  //!< acknowledged, recording failed (invariant 4)
  struct TopicBlock {
    Backoff backoff;
    std::chrono::steady_clock::time_point until;
  };
  std::map<std::string, TopicBlock> blocked_;  //!< by row topic (invariant 6)
  std::set<std::string> known_good_;           //!< row topics the cluster said are there
  RelayObserver no_observer_;
  RelayObserver* observer_ = &no_observer_;
  std::int64_t solo_through_ = 0;  //!< rows up to this id go one per batch (invariant 5)
};

}  // namespace outbox::core
