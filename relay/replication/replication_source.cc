#include "replication/replication_source.h"

#include <utility>

#include "common/logging.h"

namespace outbox::replication {

ReplicationSource::ReplicationSource(ReplicationTable& table, ReplicationStream& stream,
                                     core::Clock& clock, ReplicationSourceOptions options,
                                     std::function<bool()> stopping)
    : table_(table),
      stream_(stream),
      clock_(clock),
      options_(std::move(options)),
      stopping_(stopping ? std::move(stopping) : [] { return false; }),
      stream_source_(table, stream, clock, options_, stopping_) {}

ReplicationSource::~ReplicationSource() {
  // A clean stop reports how far it got, so the next start re-reads as little as possible.
  if (phase_ == Phase::streaming) stream_source_.final_report();
}

template <typename F>
auto ReplicationSource::guarded(F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const core::UnavailableError&) {
    reset();
    throw;
  } catch (const core::FatalError&) {
    reset();
    throw;
  }
}

void ReplicationSource::reset() noexcept {
  // Back to stopped: the next by-state read takes the lock, makes a new drain list (3 in
  // the header) and then streams again from the slot's confirmed position.
  drain_.reset();
  stream_source_.reset();
  stream_.close();
  phase_ = Phase::stopped;
}

void ReplicationSource::start() {
  auto log = logging::get("pg");
  table_.connect();  // the leader lock first: only the leader touches the slot
  skip_to_ = {};
  bool slot_exists = stream_.prepare();
  std::int64_t upto = 0;
  if (!slot_exists) {
    log->info(
        "creating replication slot {}: PostgreSQL first waits for the transactions open "
        "now to end",
        options_.slot_name);
    ReplicationStream::Created created = stream_.create_slot();
    log->info("created replication slot {} at {}", options_.slot_name,
              created.consistent_point.to_string());
    // Exactly what committed before the consistent point (2 in the header), read while the
    // replication connection is idle, then released.
    ReplicationTable::Bound bound = table_.pending_bound_in_snapshot(created.snapshot);
    stream_.release_snapshot();
    wait_visible(table_.not_yet_visible(bound.snapshot));
    upto = bound.upto;
  } else {
    // 3a in the header: the insert position first, then the transactions open after it.
    std::optional<ReplicationTable::FlushPoint> point = table_.flush_point();
    wait_visible(table_.committed_not_visible());  // 3 in the header
    if (point && !ended_soon(point->open)) point.reset();
    upto = table_.pending_bound();
    skip_to_ = point ? point->flushed : Lsn{};
  }
  log->info(
      "publishing the rows pending in outbox.events with ids up to {} before streaming from "
      "slot {}",
      upto, options_.slot_name);
  drain_.emplace(table_, upto);
  phase_ = Phase::draining;
  if (skip_to_.value != 0) stream_source_.open_early(skip_to_);
}

void ReplicationSource::wait_visible(const std::vector<std::uint64_t>& xids) {
  auto since = clock_.now();
  auto next_log = since + options_.visibility_log_every;
  auto pause = options_.visibility_retry;
  bool waited = false;
  while (!xids.empty() && !table_.visible(xids)) {
    if (stopping_()) {
      throw core::UnavailableError("stopping while committed transactions were not visible yet");
    }
    auto now = clock_.now();
    if (now >= next_log) {
      logging::get("pg")->warn(
          "{} transactions committed but not visible to other sessions for {} s (a "
          "synchronous standby's wait?): the relay reads the pending rows once they are",
          xids.size(), std::chrono::duration_cast<std::chrono::seconds>(now - since).count());
      next_log = now + options_.visibility_log_every;
    }
    if (options_.waiting) options_.waiting();
    if (options_.visibility_waiting) options_.visibility_waiting(now - since);
    waited = true;
    clock_.sleep_for(pause, stopping_);
    pause = std::min(pause * 2, std::max(options_.visibility_retry, options_.visibility_retry_max));
  }
  if (waited && options_.visibility_waiting) options_.visibility_waiting({});
}

bool ReplicationSource::ended_soon(const std::vector<std::uint64_t>& xids) {
  // A short wait only: a long transaction open somewhere in the database (any table) only
  // costs the old start, from the slot's confirmed position, never a correctness.
  auto pause = options_.visibility_retry;
  for (int round = 0; round < 6; ++round) {
    if (xids.empty() || table_.visible(xids)) return true;
    if (stopping_()) return false;
    clock_.sleep_for(pause, stopping_);
    pause = std::min(pause * 2, std::max(options_.visibility_retry, options_.visibility_retry_max));
  }
  return false;
}

void ReplicationSource::advance() {
  if (phase_ == Phase::stopped) start();
}

std::vector<core::OutboxEvent> ReplicationSource::begin_batch(
    std::size_t limit, std::size_t max_bytes, const std::vector<std::string>& skip_topics) {
  return guarded([&] {
    advance();
    if (phase_ == Phase::draining) {
      auto events = drain_->begin(limit, max_bytes, skip_topics);
      if (!drain_->done()) return events;
      // No row up to the bound is pending but those of skipped topics, and nothing is in
      // flight (a by-state read): the stream may begin (6 in the header); the skipped
      // topics' rows are deferred to the table (7).
      drain_.reset();
      stream_source_.start(skip_topics, skip_to_);
      phase_ = Phase::streaming;
    }
    return stream_source_.begin(limit, max_bytes, skip_topics);
  });
}

std::vector<core::OutboxEvent> ReplicationSource::read_after(
    std::int64_t after_id, std::size_t pending_upto, std::size_t limit, std::size_t max_bytes,
    const std::vector<std::string>& skip_topics) {
  return guarded([&]() -> std::vector<core::OutboxEvent> {
    switch (phase_) {
      case Phase::draining:
        return drain_->after(after_id, pending_upto, limit, max_bytes, skip_topics);
      case Phase::streaming:
        return stream_source_.after(pending_upto, limit, max_bytes, skip_topics);
      case Phase::stopped:
        break;  // only a by-state read starts again, with nothing in flight (3)
    }
    return {};
  });
}

void ReplicationSource::record_outcome(const core::BatchOutcome& outcome) {
  guarded([&] {
    table_.record_outcome(outcome);
    // Marked: now the rows are resolved (the confirmed position; the drain reads by state).
    if (phase_ == Phase::streaming) stream_source_.resolved(outcome);
  });
}

bool ReplicationSource::wait_for_rows(std::chrono::milliseconds timeout) {
  return guarded([&] {
    advance();
    if (phase_ == Phase::draining) return true;  // the drain reads by state
    return stream_source_.wait(timeout);
  });
}

void ReplicationSource::keep_alive() noexcept {
  // While draining only a stream opened early (3a) is there to keep.
  if (phase_ != Phase::stopped) stream_source_.keep_alive();
}

}  // namespace outbox::replication
