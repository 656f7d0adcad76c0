#include "pg/replication_source.h"

#include <algorithm>
#include <unordered_set>
#include <utility>

#include "common/logging.h"

namespace outbox::pg {

// --- DrainSource -----------------------------------------------------------------------------

DrainSource::DrainSource(ReplicationTable& table, std::vector<std::int64_t> ids)
    : table_(table), ids_(std::move(ids)) {
  std::sort(ids_.begin(), ids_.end());
  ids_.erase(std::unique(ids_.begin(), ids_.end()), ids_.end());
}

template <typename Gone>
void DrainSource::erase_front(std::size_t window, const Gone& gone) {
  std::size_t end = head_ + std::min(window, left());
  std::size_t write = end;
  for (std::size_t i = end; i-- > head_;) {
    if (!gone(ids_[i])) ids_[--write] = ids_[i];
  }
  head_ = write;
  if (done()) {  // the list is not needed any more: give its memory back
    ids_.clear();
    ids_.shrink_to_fit();
    head_ = 0;
  }
}

std::vector<core::OutboxEvent> DrainSource::begin(std::size_t limit, std::size_t max_bytes,
                                                  const std::vector<std::string>&) {
  window_ = 0;
  while (!done()) {
    std::size_t w = std::min(std::max<std::size_t>(limit, 1), left());
    std::vector<std::int64_t> window(ids_.begin() + static_cast<std::ptrdiff_t>(head_),
                                     ids_.begin() + static_cast<std::ptrdiff_t>(head_ + w));
    std::vector<core::OutboxEvent> events = table_.pending_rows(window, limit, max_bytes);
    // The rows come in id order while the bytes before them stay below max_bytes, and the
    // first pending one always comes: an id of the window up to the last row returned that
    // did not come is no longer pending (published, dead-lettered or deleted). Those after
    // it may only have been left out for the bytes.
    std::int64_t last = events.empty() ? window.back() : events.back().id;
    std::unordered_set<std::int64_t> came;
    for (const auto& e : events) came.insert(e.id);
    erase_front(w, [&](std::int64_t id) { return id <= last && !came.count(id); });
    if (!events.empty()) {
      window_ = w;  // the rows of this batch are among the first w ids of the list
      return events;
    }
  }
  return {};
}

void DrainSource::finish(const core::BatchOutcome& outcome) {
  table_.record_outcome(outcome);
  std::unordered_set<std::int64_t> resolved(outcome.published.begin(), outcome.published.end());
  for (const auto& f : outcome.dead_letter) resolved.insert(f.id);
  // Retried rows and those left pending (transient failures) stay, first in the list.
  erase_front(window_, [&](std::int64_t id) { return resolved.count(id) > 0; });
  window_ = 0;
}

// --- StreamSource ----------------------------------------------------------------------------

StreamSource::StreamSource(ReplicationTable& table, ReplicationStream& stream, core::Clock& clock,
                           const ReplicationSourceOptions& options, std::function<bool()> stopping)
    : table_(table),
      stream_(stream),
      clock_(clock),
      options_(options),
      stopping_(std::move(stopping)) {}

void StreamSource::start() {
  reset();
  stream_.start();
  started_ = true;
  last_report_ = clock_.now();
  logging::get("pg")->info("streaming from replication slot {}", options_.slot_name);
}

void StreamSource::reset() noexcept {
  // The positions are kept: confirmed_ only ever covers resolved and marked events, and
  // the next stream resumes at or before it.
  started_ = false;
  tracker_.reset();
  open_xid_ = 0;
  queued_.clear();
  batch_.clear();
  retained_.clear();
  parked_.clear();
}

std::vector<core::OutboxEvent> StreamSource::begin(std::size_t limit, std::size_t max_bytes,
                                                   const std::vector<std::string>& skip_topics) {
  auto skipped = [&](const Queued& q) {
    return std::find(skip_topics.begin(), skip_topics.end(), q.event.topic) != skip_topics.end();
  };
  std::vector<Queued> carried;
  for (auto* from : {&parked_, &retained_}) {
    for (auto& q : *from) carried.push_back(std::move(q));
    from->clear();
  }
  batch_.clear();
  std::size_t bytes = 0;
  auto take = [&](Queued&& q) {
    if (skipped(q)) {
      parked_.push_back(std::move(q));
    } else if (batch_.size() >= limit || bytes >= max_bytes) {
      retained_.push_back(std::move(q));  // the batch is full: first in the next one
    } else {
      bytes += core::event_bytes(q.event);
      batch_.push_back(std::move(q));
    }
  };
  for (auto& q : carried) take(std::move(q));
  // The stream is read only as far as the batch needs (rows and bytes), and not at all while
  // too many rows are parked: memory stays bounded whatever the size of a transaction.
  while (batch_.size() < limit && bytes < max_bytes && parked_.size() < limit) {
    if (!queued_.empty()) {
      take(std::move(queued_.front()));
      queued_.pop_front();
      continue;
    }
    auto message = stream_.read(std::chrono::milliseconds(0));
    if (!message) break;
    handle(std::move(*message));
  }
  std::vector<core::OutboxEvent> events = check_batch();
  confirmed_ = std::max(confirmed_, Lsn{tracker_.confirmable()});
  report_if_due();
  return events;
}

std::vector<core::OutboxEvent> StreamSource::check_batch() {
  if (batch_.empty()) return {};
  std::vector<std::int64_t> ids;
  std::vector<std::uint32_t> xids;
  std::unordered_set<std::uint32_t> seen;
  for (const auto& q : batch_) {
    ids.push_back(q.event.id);
    if (seen.insert(q.xid).second) xids.push_back(q.xid);
  }
  auto waiting_since = clock_.now();
  auto next_log = waiting_since + options_.visibility_log_every;
  for (;;) {
    RowCheck check = table_.check(ids, xids);
    std::size_t not_visible = 0;
    for (const auto& q : batch_) {
      if (!check.pending.count(q.event.id) && check.not_visible.count(q.xid)) ++not_visible;
    }
    if (not_visible == 0) {
      std::vector<core::OutboxEvent> events;
      std::vector<Queued> kept;
      for (auto& q : batch_) {
        auto it = check.pending.find(q.event.id);
        if (it != check.pending.end() && it->second) {
          events.push_back(q.event);
          kept.push_back(std::move(q));
        } else {
          // Published or dead-lettered already (by the drain, or before a crash), or
          // deleted since: its transaction is visible, so the row's absence is real.
          tracker_.resolve(q.txn);
        }
      }
      batch_ = std::move(kept);
      return events;
    }
    // Committed (the stream sent its Commit) but not visible to this session yet: it will
    // be. Ask again, keeping the walsender content with status updates meanwhile.
    if (stopping_()) {
      throw core::UnavailableError("stopping while streamed rows were not visible yet");
    }
    auto now = clock_.now();
    if (now >= next_log) {
      logging::get("pg")->warn(
          "{} streamed rows not yet visible to the relay's session {} s after their commit "
          "came through the stream (a synchronous standby's wait?); waiting for them",
          not_visible,
          std::chrono::duration_cast<std::chrono::seconds>(now - waiting_since).count());
      next_log = now + options_.visibility_log_every;
    }
    report_if_due();
    clock_.sleep_for(options_.visibility_retry, stopping_);
  }
}

void StreamSource::finish(const core::BatchOutcome& outcome) {
  table_.record_outcome(outcome);
  std::unordered_set<std::int64_t> resolved(outcome.published.begin(), outcome.published.end());
  for (const auto& f : outcome.dead_letter) resolved.insert(f.id);
  std::unordered_set<std::int64_t> retried;
  for (const auto& f : outcome.retry) retried.insert(f.id);
  for (auto& q : batch_) {
    if (resolved.count(q.event.id)) {
      tracker_.resolve(q.txn);
    } else {
      if (retried.count(q.event.id)) ++q.event.attempts;
      retained_.push_back(std::move(q));
    }
  }
  batch_.clear();
  confirmed_ = std::max(confirmed_, Lsn{tracker_.confirmable()});
  report_if_due();
}

void StreamSource::abort() noexcept {
  for (auto& q : batch_) retained_.push_back(std::move(q));
  batch_.clear();
}

bool StreamSource::wait(std::chrono::milliseconds timeout) {
  if (!retained_.empty() || !queued_.empty()) return true;
  if (tracker_.idle() && clock_.now() - last_report_ >= options_.heartbeat_interval) {
    // Heartbeat: ask for the server's position; with nothing pending it is confirmed, so
    // the slot advances (and WAL is freed) while other tables are busy and the outbox idle.
    report(/*reply=*/true);
  }
  auto message = stream_.read(timeout);
  while (message) {
    handle(std::move(*message));
    if (!queued_.empty()) break;
    message = stream_.read(std::chrono::milliseconds(0));
  }
  report_if_due();
  return !queued_.empty();
}

void StreamSource::keep_alive() noexcept {
  if (!started_) return;
  if (clock_.now() - last_report_ < options_.status_interval) return;
  try {
    report(false);  // no reading here: the stream waits in the socket, memory stays bounded
  } catch (...) {
    // The connection is gone; the next read says so and the stream is re-opened.
  }
}

void StreamSource::final_report() noexcept {
  try {
    if (started_ && confirmed_ > reported_) report(false);
  } catch (...) {
    // The position is only advice here; the slot keeps the older one safely.
  }
}

void StreamSource::handle(StreamMessage message) {
  switch (message.kind) {
    case StreamMessage::Kind::keepalive:
      received_ = std::max(received_, message.wal);
      if (tracker_.idle()) confirmed_ = std::max(confirmed_, message.wal);
      if (message.reply_requested) report(false);
      return;
    case StreamMessage::Kind::begin:
      received_ = std::max(received_, message.wal);
      tracker_.begin();
      open_xid_ = message.xid;
      return;
    case StreamMessage::Kind::row:
      received_ = std::max(received_, message.wal);
      queued_.push_back({std::move(message.event), tracker_.add_event(), open_xid_});
      return;
    case StreamMessage::Kind::commit:
      tracker_.commit(message.end_lsn.value);
      received_ = std::max({received_, message.wal, message.end_lsn});
      confirmed_ = std::max(confirmed_, Lsn{tracker_.confirmable()});
      return;
    case StreamMessage::Kind::other:
      received_ = std::max(received_, message.wal);
      return;
  }
}

void StreamSource::report(bool reply) {
  Lsn written = std::max(received_, confirmed_);
  stream_.send_status(written, confirmed_, reply);
  reported_ = confirmed_;
  last_report_ = clock_.now();
}

void StreamSource::report_if_due() {
  if (!started_) return;
  if (confirmed_ > reported_ || clock_.now() - last_report_ >= options_.status_interval) {
    report(false);
  }
}

// --- ReplicationSource -----------------------------------------------------------------------

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
  // Back to stopped: the next call takes the lock, makes a new drain list (3 in the
  // header) and then streams again from the slot's confirmed position.
  open_ = nullptr;
  drain_.reset();
  stream_source_.reset();
  stream_.close();
  phase_ = Phase::stopped;
}

void ReplicationSource::start() {
  auto log = logging::get("pg");
  table_.connect();  // the leader lock first: only the leader touches the slot
  bool slot_exists = stream_.prepare();
  std::vector<std::int64_t> ids;
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
    ReplicationTable::Listed listed = table_.pending_ids_in_snapshot(created.snapshot);
    stream_.release_snapshot();
    wait_visible(table_.not_yet_visible(listed.snapshot));
    ids = std::move(listed.ids);
  } else {
    wait_visible(table_.committed_not_visible());  // 3 in the header
    ids = table_.pending_ids();
  }
  log->info("publishing the {} rows pending in outbox.events before streaming from slot {}",
            ids.size(), options_.slot_name);
  drain_.emplace(table_, std::move(ids));
  phase_ = Phase::draining;
}

void ReplicationSource::wait_visible(const std::vector<std::uint64_t>& xids) {
  auto since = clock_.now();
  auto next_log = since + options_.visibility_log_every;
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
    clock_.sleep_for(options_.visibility_retry, stopping_);
  }
}

BatchSource& ReplicationSource::current() {
  if (phase_ == Phase::stopped) start();
  if (phase_ == Phase::draining && drain_->done()) {
    // Every row of the drain list is resolved: the stream may begin (6 in the header).
    drain_.reset();
    stream_source_.start();
    phase_ = Phase::streaming;
  }
  if (phase_ == Phase::draining) return *drain_;
  return stream_source_;
}

std::vector<core::OutboxEvent> ReplicationSource::begin_batch(
    std::size_t limit, std::size_t max_bytes, const std::vector<std::string>& skip_topics) {
  return guarded([&] {
    BatchSource& source = current();
    std::vector<core::OutboxEvent> events = source.begin(limit, max_bytes, skip_topics);
    open_ = &source;
    return events;
  });
}

void ReplicationSource::finish_batch(const core::BatchOutcome& outcome) {
  guarded([&] {
    BatchSource* source = std::exchange(open_, nullptr);
    if (source == nullptr) throw std::logic_error("finish_batch without begin_batch");
    source->finish(outcome);
  });
}

void ReplicationSource::abort_batch() noexcept {
  if (BatchSource* source = std::exchange(open_, nullptr)) source->abort();
}

void ReplicationSource::record_outcome(const core::BatchOutcome& outcome) {
  guarded([&] { table_.record_outcome(outcome); });
}

bool ReplicationSource::wait_for_rows(std::chrono::milliseconds timeout) {
  return guarded([&] {
    current();
    if (phase_ == Phase::draining) return true;  // rows of the drain list are waiting
    return stream_source_.wait(timeout);
  });
}

void ReplicationSource::keep_alive() noexcept {
  if (phase_ == Phase::streaming) stream_source_.keep_alive();
}

}  // namespace outbox::pg
