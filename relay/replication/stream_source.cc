#include "replication/stream_source.h"

#include <algorithm>
#include <limits>
#include <unordered_set>
#include <utility>

#include "common/logging.h"

namespace outbox::replication {

namespace {
// Rows read again by id were counted against the byte limit at decoding.
constexpr std::size_t kNoByteLimit = std::numeric_limits<std::int64_t>::max();

bool listed(const std::vector<std::string>& topics, const std::string& topic) {
  return std::find(topics.begin(), topics.end(), topic) != topics.end();
}
}  // namespace

StreamSource::StreamSource(ReplicationTable& table, ReplicationStream& stream, core::Clock& clock,
                           const ReplicationSourceOptions& options, std::function<bool()> stopping)
    : table_(table),
      stream_(stream),
      clock_(clock),
      options_(options),
      stopping_(std::move(stopping)) {}

void StreamSource::open_early(Lsn skip_to) {
  // 3a in replication_source.h: START_REPLICATION at skip_to while the drain runs; the
  // server decodes the drained transactions (without sending them) meanwhile, instead of
  // after the drain with a new row waiting behind them. Nothing is read until start();
  // keep_alive() reports the old confirmed position meanwhile, so the server keeps the
  // connection.
  reset();
  logging::get("pg")->info(
      "opening the stream at {} while the drain runs: what commits before is the drain's",
      skip_to.to_string());
  stream_.start_from(skip_to);
  opened_at_ = skip_to;
  started_ = true;
  last_report_ = clock_.now();
}

void StreamSource::start(const std::vector<std::string>& deferred, Lsn skip_to) {
  if (opened_at_.value != 0 && opened_at_ == skip_to) {
    // Opened at the drain's start (open_early) and nothing handled since (what it sent is
    // kept in early_, in order, for the first read): the drain is done,
    // so everything before skip_to is resolved and marked and may be confirmed (invariant
    // 5); the server takes a report of an older position (before PostgreSQL 17), so none
    // is sent any more.
    opened_at_ = {};
    logging::get("pg")->debug("the stream sent {} messages besides keepalives while the drain ran",
                              early_.size());
    deferred_.insert(deferred.begin(), deferred.end());
    confirmed_ = std::max(confirmed_, skip_to);
    received_ = std::max(received_, skip_to);
    logging::get("pg")->info("streaming from replication slot {}", options_.slot_name);
    return;
  }
  reset();
  deferred_.insert(deferred.begin(), deferred.end());
  if (skip_to.value != 0) {
    stream_.start_from(skip_to);
    confirmed_ = std::max(confirmed_, skip_to);
    received_ = std::max(received_, skip_to);
  } else {
    stream_.start();
  }
  started_ = true;
  last_report_ = clock_.now();
  logging::get("pg")->info("streaming from replication slot {}", options_.slot_name);
}

void StreamSource::reset() noexcept {
  // The positions are kept: confirmed_ only ever covers resolved and marked events, and
  // the next stream resumes at or before it.
  started_ = false;
  opened_at_ = {};
  tracker_.reset();
  open_xid_ = 0;
  queued_.clear();
  early_.clear();
  early_bytes_ = 0;
  early_error_ = nullptr;
  held_.clear();
  at_.clear();
  out_ = 0;
  deferred_.clear();
  table_out_.clear();
}

std::vector<core::OutboxEvent> StreamSource::begin(std::size_t limit, std::size_t max_bytes,
                                                   const std::vector<std::string>& skip_topics) {
  // By state: nothing is in flight, so a row handed out and not resolved was not delivered
  // (or its answer not recorded): it is sent again, first, in its order (6 in
  // replication_source.h).
  for (auto& [order, held] : held_) {
    if (held.state == Held::State::out) held.state = Held::State::unsent;
  }
  out_ = 0;
  table_out_.clear();
  limit = std::max<std::size_t>(limit, 1);
  std::vector<core::OutboxEvent> events = read_deferred(limit, max_bytes, skip_topics);
  std::size_t bytes = 0;
  for (const auto& e : events) bytes += core::event_bytes(e);
  if (events.size() >= limit || bytes >= max_bytes) return events;
  auto streamed = read(limit - events.size(), max_bytes - bytes, skip_topics);
  events.insert(events.end(), std::make_move_iterator(streamed.begin()),
                std::make_move_iterator(streamed.end()));
  return events;
}

std::vector<std::string> StreamSource::ready_deferred(
    const std::vector<std::string>& skip_topics) const {
  std::vector<std::string> ready;
  for (const auto& topic : deferred_) {
    if (!listed(skip_topics, topic)) ready.push_back(topic);
  }
  return ready;
}

std::vector<core::OutboxEvent> StreamSource::read_deferred(
    std::size_t limit, std::size_t max_bytes, const std::vector<std::string>& skip_topics) {
  std::vector<std::string> ready = ready_deferred(skip_topics);
  if (ready.empty()) return {};
  std::vector<core::OutboxEvent> events = table_.pending_of_topics(ready, limit, max_bytes);
  std::size_t bytes = 0;
  std::set<std::string> seen;
  for (const auto& e : events) {
    bytes += core::event_bytes(e);
    seen.insert(e.topic);
    table_out_.insert(e.id);
  }
  // A complete read (not cut by the limits) that brought no row of a topic: none of its
  // rows is pending (nothing is in flight: by state), and every row of it the stream
  // deferred was visible (7): the stream may bring its rows again.
  if (events.size() < limit && bytes < max_bytes) {
    for (const auto& topic : ready) {
      if (!seen.count(topic)) {
        deferred_.erase(topic);
        logging::get("pg")->info("topic {}: its rows come from the stream again", topic);
      }
    }
  }
  return events;
}

std::vector<core::OutboxEvent> StreamSource::after(std::size_t pending_upto, std::size_t limit,
                                                   std::size_t max_bytes,
                                                   const std::vector<std::string>& skip_topics) {
  // Every row handed out since the by-state read and not resolved must be in the core's
  // window; one more was left unsent by the core (its topic blocked) and must not be
  // overtaken by a later row of its topic: the next by-state read sends it first.
  if (out_ + table_out_.size() != pending_upto) return {};
  // A deferred topic no longer skipped is read from the table at a by-state read (7).
  if (!ready_deferred(skip_topics).empty()) return {};
  return read(std::max<std::size_t>(limit, 1), max_bytes, skip_topics);
}

std::vector<core::OutboxEvent> StreamSource::read(std::size_t limit, std::size_t max_bytes,
                                                  const std::vector<std::string>& skip_topics) {
  auto deferring = [&](const std::string& topic) {
    return deferred_.count(topic) > 0 || listed(skip_topics, topic);
  };
  std::vector<core::OutboxEvent> events;
  // Rows found already marked, deleted or deferred are dropped; the read goes on until some
  // are to be sent or nothing more is decoded (after a drain, the stream brings the drained
  // rows again), but looks at no more than a few reads' worth of rows, so that a long run
  // of deferred rows never keeps the loop from its health ticks.
  std::size_t looked = 0;
  const std::size_t look_limit = 8 * limit;
  while (events.empty() && looked < look_limit) {
    std::vector<std::uint64_t> picked;
    std::size_t sending = 0;
    std::size_t bytes = 0;
    auto full = [&] { return sending >= limit || picked.size() >= limit || bytes >= max_bytes; };
    auto pick = [&](std::uint64_t order, const Held& held) {
      picked.push_back(order);
      if (!deferring(held.event.topic)) {
        ++sending;
        bytes += held.bytes;
      }
    };
    // First the rows decoded before and not handed out (sent before and not resolved, or
    // left by a full read), in decoded order.
    if (held_.size() > out_) {
      for (auto& [order, held] : held_) {
        if (held.state == Held::State::out) continue;
        if (full()) break;
        pick(order, held);
      }
    }
    // Then newly decoded rows: the stream is read only as far as the read needs (rows and
    // bytes).
    while (!full()) {
      if (queued_.empty()) {
        auto message = next_message(std::chrono::milliseconds(0));
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
      auto [it, inserted] = held_.emplace(order, std::move(held));
      pick(order, it->second);
    }
    if (picked.empty()) break;
    looked += picked.size();
    events = hand_out(picked, skip_topics);
  }
  confirmed_ = std::max(confirmed_, Lsn{tracker_.confirmable()});
  report_if_due();
  return events;
}

void StreamSource::resolve(std::map<std::uint64_t, Held>::iterator it) {
  tracker_.resolve(it->second.txn);
  if (it->second.state == Held::State::out) --out_;
  at_.erase(it->second.event.id);
  held_.erase(it);
}

std::vector<core::OutboxEvent> StreamSource::hand_out(const std::vector<std::uint64_t>& picked,
                                                      const std::vector<std::string>& skip_topics) {
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
  auto pause = options_.visibility_retry;
  bool waited = false;
  RowCheck check;
  for (;;) {
    check = table_.check(ids, xids);
    std::size_t not_visible = 0;
    for (auto order : picked) {
      const Held& held = held_.at(order);
      if (!check.pending.count(held.event.id) && check.not_visible.count(held.xid)) ++not_visible;
    }
    if (not_visible == 0) {
      if (waited && options_.visibility_waiting) options_.visibility_waiting({});
      break;
    }
    // Committed (the stream sent its Commit) but not visible to the relay's session yet: it will
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
    if (options_.waiting) options_.waiting();
    if (options_.visibility_waiting) options_.visibility_waiting(now - waiting_since);
    waited = true;
    clock_.sleep_for(pause, stopping_);
    pause = std::min(pause * 2, std::max(options_.visibility_retry, options_.visibility_retry_max));
  }
  std::vector<std::uint64_t> send;
  std::vector<std::int64_t> reread;
  for (auto order : picked) {
    auto it = held_.find(order);
    auto state = check.pending.find(it->second.event.id);
    const std::string& topic = it->second.event.topic;
    if (deferred_.count(topic) > 0 || listed(skip_topics, topic)) {
      // Deferred (7): its transaction is visible, so the table brings the row, if still
      // pending, to the topic's next table read; nothing of it is kept here.
      if (deferred_.insert(topic).second) {
        logging::get("pg")->warn(
            "topic {} cannot take messages: its rows are left in outbox.events and read from "
            "there once it can; the stream goes on with the other topics",
            topic);
      }
      resolve(it);
      continue;
    }
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
    if (table_out_.erase(id) > 0) return;  // a deferred topic's row, read from the table
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
  if (!held_.empty() || !queued_.empty()) return true;
  if (tracker_.idle() && clock_.now() - last_report_ >= options_.heartbeat_interval) {
    // Heartbeat: ask for the server's position; with nothing pending it is confirmed, so
    // the slot advances (and WAL is freed) while other tables are busy and the outbox idle.
    report(/*reply=*/true);
  }
  auto message = next_message(timeout);
  while (message) {
    handle(std::move(*message));
    if (!queued_.empty()) break;
    message = next_message(std::chrono::milliseconds(0));
  }
  report_if_due();
  return !queued_.empty();
}

void StreamSource::keep_alive() noexcept {
  if (!started_) return;
  if (opened_at_.value != 0 && !early_error_) {
    try {
      take_early();
    } catch (...) {
      early_error_ = std::current_exception();  // thrown by the first read after the drain
      return;
    }
  }
  try {
    if (clock_.now() - last_report_ < options_.status_interval) return;
    // Outside an early stream nothing is read here: the stream waits in the socket for the
    // next read, memory stays bounded.
    report(false);
  } catch (...) {
    // The connection is gone; the next read says so and the stream is re-opened.
  }
}

void StreamSource::take_early() {
  // Invariant early-stream-read (stream_source.h): while the drain runs the socket is
  // emptied, so the server never waits on a full socket and never ends the connection for
  // it. Nothing is handled here: the kept messages are handled by the first read, in the
  // order the server sent them, exactly as if they had waited in the socket.
  while (early_bytes_ < kEarlyBytes) {
    auto message = stream_.read(std::chrono::milliseconds(0));
    if (!message) return;
    if (message->kind == StreamMessage::Kind::keepalive) {
      if (message->reply_requested) report(false);  // the unchanged position
      continue;
    }
    early_bytes_ += 256 + core::event_bytes(message->event);
    early_.push_back(std::move(*message));
  }
}

std::optional<StreamMessage> StreamSource::next_message(std::chrono::milliseconds wait) {
  if (!early_.empty()) {
    StreamMessage message = std::move(early_.front());
    early_.pop_front();
    early_bytes_ = early_.empty() ? 0 : early_bytes_;
    return message;
  }
  if (early_error_) std::rethrow_exception(std::exchange(early_error_, nullptr));
  return stream_.read(wait);
}

void StreamSource::final_report() noexcept {
  try {
    if (started_ && confirmed_ > reported_) report(false);
  } catch (...) {
    // The position is only advice here; the slot keeps the older one safely.
  }
}

void StreamSource::handle(StreamMessage message) {
  const Lsn at = message.wal;
  try {
    track(std::move(message));
  } catch (const StreamOrderError& e) {
    // Input no retry cures (the same bytes come again from the slot): the relay stops, the
    // slot still confirmed only up to what was resolved before (invariant 5).
    throw core::FatalError("replication slot " + options_.slot_name +
                           ": the stream came out of order at " + at.to_string() + " (" + e.what() +
                           "); stopping without confirming past " + confirmed_.to_string() +
                           ", where the next start streams again");
  }
}

void StreamSource::track(StreamMessage message) {
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

}  // namespace outbox::replication
