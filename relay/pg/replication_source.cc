#include "pg/replication_source.h"

#include <algorithm>
#include <limits>
#include <unordered_set>
#include <utility>

#include "common/logging.h"

namespace outbox::pg {

namespace {
// Rows read again by id were counted against the byte limit at decoding.
constexpr std::size_t kNoByteLimit = std::numeric_limits<std::int64_t>::max();
}  // namespace

// --- DrainSource -----------------------------------------------------------------------------

DrainSource::DrainSource(ReplicationTable& table, std::vector<std::int64_t> ids)
    : table_(table), ids_(std::move(ids)) {
  std::sort(ids_.begin(), ids_.end());
  ids_.erase(std::unique(ids_.begin(), ids_.end()), ids_.end());
}

template <typename Gone>
void DrainSource::erase_before(std::size_t end, const Gone& gone) {
  end = std::min(end, ids_.size());
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

std::vector<core::OutboxEvent> DrainSource::read_from(std::size_t from, std::size_t limit,
                                                      std::size_t max_bytes) {
  while (from < ids_.size()) {
    std::size_t w = std::min(std::max<std::size_t>(limit, 1), ids_.size() - from);
    std::size_t end = from + w;
    std::vector<std::int64_t> window(ids_.begin() + static_cast<std::ptrdiff_t>(from),
                                     ids_.begin() + static_cast<std::ptrdiff_t>(end));
    std::vector<core::OutboxEvent> events = table_.pending_rows(window, limit, max_bytes);
    // The rows come in id order while the bytes before them stay below max_bytes, and the
    // first pending one always comes: an id of the window up to the last row returned that
    // did not come is no longer pending (published, dead-lettered or deleted). Those after
    // it may only have been left out for the bytes.
    std::int64_t first = window.front();
    std::int64_t last = events.empty() ? window.back() : events.back().id;
    std::unordered_set<std::int64_t> came;
    for (const auto& e : events) came.insert(e.id);
    // Only ids of the window are removed (ascending list: those from `first` on); the ids
    // at `end` and after keep their index.
    erase_before(end,
                 [&](std::int64_t id) { return id >= first && id <= last && !came.count(id); });
    if (!events.empty()) return events;
    from = end;
  }
  return {};
}

std::vector<core::OutboxEvent> DrainSource::begin(std::size_t limit, std::size_t max_bytes) {
  return read_from(head_, limit, max_bytes);
}

std::vector<core::OutboxEvent> DrainSource::after(std::int64_t after_id, std::size_t pending_upto,
                                                  std::size_t limit, std::size_t max_bytes) {
  auto first =
      std::upper_bound(ids_.begin() + static_cast<std::ptrdiff_t>(head_), ids_.end(), after_id);
  auto from = static_cast<std::size_t>(first - ids_.begin());
  // Every row of the list up to after_id was read since the last by-state read (the list
  // is ascending, reads go up); those still in the list are unresolved. If the core has
  // fewer in flight, it left one unsent (its topic blocked): nothing may overtake it.
  if (from - head_ != pending_upto) return {};
  return read_from(from, limit, max_bytes);
}

void DrainSource::resolved(const core::BatchOutcome& outcome) {
  std::unordered_set<std::int64_t> resolved(outcome.published.begin(), outcome.published.end());
  for (const auto& f : outcome.dead_letter) resolved.insert(f.id);
  if (resolved.empty() || done()) return;
  std::int64_t highest = *std::max_element(resolved.begin(), resolved.end());
  auto end =
      std::upper_bound(ids_.begin() + static_cast<std::ptrdiff_t>(head_), ids_.end(), highest);
  // Retried rows and those left pending (transient failures) stay, in order.
  erase_before(static_cast<std::size_t>(end - ids_.begin()),
               [&](std::int64_t id) { return resolved.count(id) > 0; });
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
  held_.clear();
  at_.clear();
  out_ = 0;
  parked_ = 0;
}

std::vector<core::OutboxEvent> StreamSource::begin(std::size_t limit, std::size_t max_bytes,
                                                   const std::vector<std::string>& skip_topics) {
  // By state: nothing is in flight, so a row handed out and not resolved was not delivered
  // (or its answer not recorded): it is sent again, first, in its order (6 in the header).
  for (auto& [order, held] : held_) {
    if (held.state == Held::State::out) held.state = Held::State::unsent;
  }
  out_ = 0;
  park_limit_ = std::max<std::size_t>(limit, 1);
  return read(limit, max_bytes, skip_topics);
}

std::vector<core::OutboxEvent> StreamSource::after(std::size_t pending_upto, std::size_t limit,
                                                   std::size_t max_bytes,
                                                   const std::vector<std::string>& skip_topics) {
  // Every row handed out since the by-state read and not resolved must be in the core's
  // window; one more was left unsent by the core (its topic blocked) and must not be
  // overtaken by a later row of its topic: the next by-state read sends it first.
  if (out_ != pending_upto) return {};
  return read(limit, max_bytes, skip_topics);
}

std::vector<core::OutboxEvent> StreamSource::read(std::size_t limit, std::size_t max_bytes,
                                                  const std::vector<std::string>& skip_topics) {
  auto skipped = [&](const std::string& topic) {
    return std::find(skip_topics.begin(), skip_topics.end(), topic) != skip_topics.end();
  };
  limit = std::max<std::size_t>(limit, 1);
  std::vector<core::OutboxEvent> events;
  // Rows found already marked are dropped; the read goes on until some are to be sent or
  // nothing more is decoded (after a drain, the stream brings the drained rows again).
  while (events.empty()) {
    std::vector<std::uint64_t> picked;
    std::size_t bytes = 0;
    auto full = [&] { return picked.size() >= limit || bytes >= max_bytes; };
    // First the rows decoded before and not handed out (sent before and not resolved,
    // parked, or left by a full read), in decoded order.
    if (held_.size() > out_) {
      for (auto& [order, held] : held_) {
        if (held.state == Held::State::out) continue;
        if (skipped(held.event.topic)) {
          if (held.state != Held::State::parked) ++parked_;
          held.state = Held::State::parked;
          continue;
        }
        if (full()) break;
        if (held.state == Held::State::parked) --parked_;
        held.state = Held::State::unsent;
        picked.push_back(order);
        bytes += held.bytes;
      }
    }
    // Then newly decoded rows: the stream is read only as far as the read needs (rows and
    // bytes), and not at all while too many rows are parked (memory).
    while (!full() && parked_ < park_limit_) {
      if (queued_.empty()) {
        auto message = stream_.read(std::chrono::milliseconds(0));
        if (!message) break;
        handle(std::move(*message));
        continue;
      }
      Queued q = std::move(queued_.front());
      queued_.pop_front();
      std::uint64_t order = next_order_++;
      Held held;
      held.bytes = core::event_bytes(q.event);
      held.event = std::move(q.event);
      held.txn = q.txn;
      held.xid = q.xid;
      at_[held.event.id] = order;
      if (skipped(held.event.topic)) {
        held.state = Held::State::parked;
        ++parked_;
      } else {
        picked.push_back(order);
        bytes += held.bytes;
      }
      held_.emplace(order, std::move(held));
    }
    if (picked.empty()) break;
    events = hand_out(picked);
  }
  confirmed_ = std::max(confirmed_, Lsn{tracker_.confirmable()});
  report_if_due();
  return events;
}

void StreamSource::resolve(std::map<std::uint64_t, Held>::iterator it) {
  tracker_.resolve(it->second.txn);
  if (it->second.state == Held::State::out) --out_;
  if (it->second.state == Held::State::parked) --parked_;
  at_.erase(it->second.event.id);
  held_.erase(it);
}

std::vector<core::OutboxEvent> StreamSource::hand_out(const std::vector<std::uint64_t>& picked) {
  std::vector<std::int64_t> ids;
  std::vector<std::uint32_t> xids;
  std::unordered_set<std::uint32_t> seen;
  for (auto order : picked) {
    const Held& held = held_.at(order);
    ids.push_back(held.event.id);
    if (seen.insert(held.xid).second) xids.push_back(held.xid);
  }
  auto waiting_since = clock_.now();
  auto next_log = waiting_since + options_.visibility_log_every;
  RowCheck check;
  for (;;) {
    check = table_.check(ids, xids);
    std::size_t not_visible = 0;
    for (auto order : picked) {
      const Held& held = held_.at(order);
      if (!check.pending.count(held.event.id) && check.not_visible.count(held.xid)) ++not_visible;
    }
    if (not_visible == 0) break;
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
  std::vector<std::uint64_t> send;
  std::vector<std::int64_t> reread;
  for (auto order : picked) {
    auto it = held_.find(order);
    auto state = check.pending.find(it->second.event.id);
    if (state != check.pending.end() && state->second) {
      send.push_back(order);
      if (!it->second.has_payload) reread.push_back(it->second.event.id);
    } else {
      // Published or dead-lettered already (by the drain, or before a crash), or deleted
      // since: its transaction is visible, so the row's absence is real.
      resolve(it);
    }
  }
  if (!reread.empty()) {
    // Rows sent before: their payload is read again (the relay keeps one copy of it, in
    // the core while in flight). Their bytes were counted at decoding, so no byte limit.
    std::unordered_map<std::int64_t, core::OutboxEvent> rows;
    for (auto& e : table_.pending_rows(reread, reread.size(), kNoByteLimit)) {
      std::int64_t id = e.id;
      rows.emplace(id, std::move(e));
    }
    std::vector<std::uint64_t> kept;
    for (auto order : send) {
      auto it = held_.find(order);
      if (!it->second.has_payload) {
        auto row = rows.find(it->second.event.id);
        if (row == rows.end()) {  // deleted since the check: never comes again
          resolve(it);
          continue;
        }
        it->second.event = std::move(row->second);
        it->second.has_payload = true;
      }
      kept.push_back(order);
    }
    send = std::move(kept);
  }
  std::vector<core::OutboxEvent> events;
  events.reserve(send.size());
  for (auto order : send) {
    Held& held = held_.at(order);
    core::OutboxEvent& e = events.emplace_back(std::move(held.event));
    held.event = core::OutboxEvent{};  // what identifies the row stays; the payload moved out
    held.event.id = e.id;
    held.event.topic = e.topic;
    held.event.attempts = e.attempts;
    held.has_payload = false;
    held.state = Held::State::out;
    ++out_;
  }
  return events;
}

void StreamSource::resolved(const core::BatchOutcome& outcome) {
  // Called once the outcome is marked: only now may the confirmed position pass these rows.
  auto done = [&](std::int64_t id) {
    auto at = at_.find(id);
    if (at != at_.end()) resolve(held_.find(at->second));  // else: of an earlier session
  };
  for (auto id : outcome.published) done(id);
  for (const auto& f : outcome.dead_letter) done(f.id);
  confirmed_ = std::max(confirmed_, Lsn{tracker_.confirmable()});
  report_if_due();
}

bool StreamSource::wait(std::chrono::milliseconds timeout) {
  // Called with nothing in flight: a row handed out and not resolved is sent again.
  if (held_.size() > parked_ || !queued_.empty()) return true;
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

void ReplicationSource::advance() {
  if (phase_ == Phase::stopped) start();
  if (phase_ == Phase::draining && drain_->done()) {
    // Every row of the drain list is resolved, and nothing is in flight (a by-state read):
    // the stream may begin (6 in the header).
    drain_.reset();
    stream_source_.start();
    phase_ = Phase::streaming;
  }
}

std::vector<core::OutboxEvent> ReplicationSource::begin_batch(
    std::size_t limit, std::size_t max_bytes, const std::vector<std::string>& skip_topics) {
  return guarded([&] {
    advance();
    if (phase_ == Phase::draining) return drain_->begin(limit, max_bytes);
    return stream_source_.begin(limit, max_bytes, skip_topics);
  });
}

std::vector<core::OutboxEvent> ReplicationSource::read_after(
    std::int64_t after_id, std::size_t pending_upto, std::size_t limit, std::size_t max_bytes,
    const std::vector<std::string>& skip_topics) {
  return guarded([&]() -> std::vector<core::OutboxEvent> {
    switch (phase_) {
      case Phase::draining:
        return drain_->after(after_id, pending_upto, limit, max_bytes);
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
    // Marked: now the rows are resolved (drain list, confirmed position).
    if (phase_ == Phase::draining) drain_->resolved(outcome);
    if (phase_ == Phase::streaming) stream_source_.resolved(outcome);
  });
}

bool ReplicationSource::wait_for_rows(std::chrono::milliseconds timeout) {
  return guarded([&] {
    advance();
    if (phase_ == Phase::draining) return true;  // rows of the drain list are waiting
    return stream_source_.wait(timeout);
  });
}

void ReplicationSource::keep_alive() noexcept {
  if (phase_ == Phase::streaming) stream_source_.keep_alive();
}

}  // namespace outbox::pg
