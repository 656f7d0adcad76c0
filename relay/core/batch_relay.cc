#include "core/batch_relay.h"

#include <spdlog/spdlog.h>

#include <set>
#include <variant>

#include "common/crash_point.h"
#include "common/logging.h"
#include "core/loop_support.h"
#include "core/message_mapping.h"

namespace outbox::core {

namespace {
bool has_records(const BatchOutcome& o) {
  return !o.published.empty() || !o.retry.empty() || !o.dead_letter.empty();
}
std::size_t records(const BatchOutcome& o) {
  return o.published.size() + o.retry.size() + o.dead_letter.size();
}
// How long a step waits for answers when it has nothing else to do: short enough that the
// loop ticks, keeps its source alive and sees a stop request promptly.
constexpr std::chrono::milliseconds kAnswerWait{100};
constexpr std::chrono::milliseconds kGroupWait{50};
}  // namespace

BatchRelay::BatchRelay(OutboxStore& store, Publisher& publisher, Clock& clock,
                       BatchRelayOptions options)
    : store_(store),
      publisher_(publisher),
      clock_(clock),
      options_(std::move(options)),
      pipelined_(store.read_ahead()),
      backoff_(options_.backoff_initial, options_.backoff_max),
      topics_([&publisher](const std::string& t) { return publisher.topic_problem(t); }, clock,
              options_.topic_map, options_.format.topic_template, options_.backoff_initial,
              options_.backoff_max) {
  options_.max_in_flight_rows = std::max<std::size_t>(options_.max_in_flight_rows, 1);
  options_.max_in_flight_bytes = std::max<std::size_t>(options_.max_in_flight_bytes, 1);
}

BatchRelay::~BatchRelay() {
  if (unanswered_ == 0) return;
  observer_ = &no_observer_;  // it only outlives run()
  try {
    publisher_.purge();
    for (int i = 0; i < 100 && unanswered_ > 0; ++i) collect(kAnswerWait);  // 10 s at most
  } catch (...) {
    // Nothing more can be done here; the publisher's own destructor purges again.
  }
}

void BatchRelay::count(const BatchOutcome& outcome) {
  cycle_.published += outcome.published.size();
  cycle_.retried += outcome.retry.size();
  cycle_.dead_lettered += outcome.dead_letter.size();
  counters_.published += outcome.published.size();
  counters_.dead_lettered += outcome.dead_letter.size();
  counters_.failed_attempts += outcome.retry.size() + outcome.dead_letter.size();
}

// --- reading and sending -------------------------------------------------------------------

std::size_t BatchRelay::in_flight_rows() const {
  // Answered rows count until recorded: a crash sends at most the window again.
  return window_.size() + records(answered_);
}

bool BatchRelay::may_read_ahead() const {
  if (!pipelined_ || window_.empty()) return false;
  if (hold_ || record_failed_ || solo_through_ > 0 || solo_in_flight_) return false;
  // After a short read (it reached the end of the pending rows), look again at each answer:
  // rows committed since then go out without waiting for the window to drain.
  if (!last_read_full_ && !answered_since_read_) return false;
  if (in_flight_rows() >= options_.max_in_flight_rows) return false;
  return unanswered_bytes_ < options_.max_in_flight_bytes;
}

void BatchRelay::read(bool by_state) {
  // Rows of blocked topics stay where they are; the rest flows.
  std::vector<std::string> skip = topics_.skipped();
  // Suspects are sent one row at a time until past the last one: alone, a failure is proven
  // the row's own.
  const bool solo = solo_through_ > 0;
  std::size_t limit = solo ? 1 : options_.batch_size;
  std::size_t max_bytes = options_.batch_max_bytes;
  if (!by_state) {
    limit = std::min(limit, options_.max_in_flight_rows - in_flight_rows());
    max_bytes = std::min(max_bytes, options_.max_in_flight_bytes - unanswered_bytes_);
  }
  auto read_start = clock_.now();
  std::vector<OutboxEvent> events;
  if (by_state) {
    cycle_ = BatchReport{};
    hold_ = false;
    events = store_.begin_batch(limit, max_bytes, skip);
    batch_open_ = !pipelined_;
  } else {
    // Every pending row up to the last id read is ours (unanswered, or answered and not yet
    // recorded), or a transaction committed late below it: then nothing comes, and the
    // window drains for a read by state (per-key order within that transaction).
    events =
        store_.read_after(last_read_id_, unanswered_ + records(answered_), limit, max_bytes, skip);
  }
  if (solo_through_ > 0 && (events.empty() || events.back().id >= solo_through_)) {
    solo_through_ = 0;  // this read (of one) is the last of the suspects
  }
  std::size_t bytes = 0;
  for (const auto& e : events) bytes += event_bytes(e);
  last_read_full_ = !events.empty() && (events.size() >= limit || bytes >= max_bytes);
  if (!events.empty()) last_read_id_ = events.back().id;
  answered_since_read_ = false;
  cycle_.read += events.size();
  if (by_state) cycle_.full = last_read_full_;
  observer_->on_read(events.size(), bytes, clock_.now() - read_start);

  std::set<std::string> checked;  // row topics whose Kafka topic was asked about just now
  std::size_t blocked_rows = 0;
  for (OutboxEvent& event : events) {
    if (!topics_.admit(event.topic, checked)) {
      ++cycle_.left_pending;  // waits with its topic; not its fault
      ++cycle_.topic_blocked;
      ++blocked_rows;
      continue;
    }
    std::int64_t id = event.id;
    std::string event_id = event.event_id;
    std::string row_topic = event.topic;
    std::size_t row_bytes = event_bytes(event);
    // The payload moves into the message: one copy of it in the relay, which librdkafka
    // points into until the report.
    auto mapped = to_message(std::move(event), options_.topic_map, options_.format);
    if (auto* poison = std::get_if<PoisonReason>(&mapped)) {
      observer_->on_dead_lettered(row_topic, 1);
      answered_.dead_letter.push_back({id, poison->text});
      answered_.rows[id] = RowIdentity{std::move(event_id), std::move(row_topic)};
      continue;
    }
    std::uint64_t tag = front_tag_ + window_.size();
    InFlight& entry = window_.emplace_back();
    entry.id = id;
    entry.event_id = std::move(event_id);
    entry.row_topic = std::move(row_topic);
    entry.message = std::move(std::get<Message>(mapped));
    entry.bytes = row_bytes;
    entry.sent_at = clock_.now();
    // Invariant 5: a message is "alone" while nothing else was in flight from its send on.
    if (unanswered_ == 0) {
      alone_ = tag;
    } else {
      alone_.reset();
    }
    ++unanswered_;
    unanswered_bytes_ += row_bytes;
    publisher_.send(entry.message, tag);
    // A suspect read alone stays alone until answered: nothing is read ahead meanwhile.
    if (solo) solo_in_flight_ = true;
  }
  // Only rows of blocked topics (the replication drain returns them): wait like an idle relay
  // rather than read the same rows again at once.
  if (by_state && blocked_rows == events.size()) cycle_.full = false;
  if (by_state) wait_for_rows_ = !cycle_.full;
}

// --- answers ---------------------------------------------------------------------------------

void BatchRelay::collect(std::chrono::milliseconds timeout) {
  if (unanswered_ == 0) return;
  std::vector<Completion> done = publisher_.poll(timeout);
  if (!done.empty()) {
    common::crash_point("after_delivery");
    answered_since_read_ = true;
  }
  for (const Completion& c : done) {
    if (c.tag < front_tag_ || c.tag - front_tag_ >= window_.size()) continue;  // not ours
    InFlight& entry = window_[c.tag - front_tag_];
    if (entry.answered) continue;
    answer(entry, c.tag, c.result);
  }
  if (unanswered_ == 0) solo_in_flight_ = false;
  // The window's front moves past every answered row; a row still waiting (a stuck
  // partition) holds it, so the window (rows) bounds how far the others may run ahead.
  while (!window_.empty() && window_.front().answered) {
    window_.pop_front();
    ++front_tag_;
  }
}

void BatchRelay::answer(InFlight& entry, std::uint64_t tag, const DeliveryResult& result) {
  entry.answered = true;
  --unanswered_;
  unanswered_bytes_ -= entry.bytes;
  entry.message = Message{};  // librdkafka is done with it: give the payload back now
  observer_->on_delivery(entry.row_topic, result.ok, result.kind, clock_.now() - entry.sent_at);
  if (result.ok) {
    any_ok_ = true;
    answered_.published.push_back(entry.id);
    topics_.delivered(entry.row_topic);
    answered_.rows[entry.id] = RowIdentity{std::move(entry.event_id), entry.row_topic};
    return;
  }
  // Any failure: no read-ahead until everything in flight is answered (invariant 3); then
  // the next read starts from the oldest pending row, with the failure handled as below.
  hold_ = true;
  ++cycle_.left_pending;
  switch (result.kind) {
    case FailureKind::permanent:
      --cycle_.left_pending;
      observer_->on_dead_lettered(entry.row_topic, 1);
      answered_.dead_letter.push_back({entry.id, result.error});
      answered_.rows[entry.id] = RowIdentity{std::move(entry.event_id), entry.row_topic};
      break;
    case FailureKind::suspect:
      if (alone_ == tag) {  // alone: proven its own
        --cycle_.left_pending;
        observer_->on_dead_lettered(entry.row_topic, 1);
        answered_.dead_letter.push_back({entry.id, result.error + " (sent alone)"});
        answered_.rows[entry.id] = RowIdentity{std::move(entry.event_id), entry.row_topic};
      } else {
        if (cycle_.suspects == 0) {
          logging::get("core")->warn(
              "Kafka refused a produce request ({}); sending the rows one by one to find the "
              "one at fault (if a topic's max.message.bytes is below the producer's "
              "batch.size, lower kafka.properties batch.size)",
              result.error);
        }
        solo_through_ = std::max(solo_through_, entry.id);
        ++cycle_.suspects;
      }
      break;
    case FailureKind::topic_blocked:
      topics_.block(entry.row_topic, result.error);
      ++cycle_.topic_blocked;
      break;
    case FailureKind::transient:
      ++cycle_.transient;
      break;
  }
}

void BatchRelay::record(bool force) {
  if (!pipelined_) {
    // One batch at a time: the outcome is recorded once every message was answered.
    if (!window_.empty()) return;
    if (batch_open_) {
      batch_open_ = false;
      if (any_ok_) observer_->on_kafka_ok();
      any_ok_ = false;
      auto mark_start = clock_.now();
      try {
        store_.finish_batch(answered_);
      } catch (const UnavailableError& e) {
        store_.abort_batch();
        if (!has_records(answered_)) throw;
        record_failed_ = true;
        throw UnavailableError("cannot record the outcome of " +
                               std::to_string(records(answered_)) + " messages Kafka answered (" +
                               e.what() + "); they are not sent again, their recording is retried");
      } catch (...) {
        store_.abort_batch();
        throw;
      }
      VanishedCount gone = report_vanished(store_, *observer_);
      counters_.vanished += gone.total;
      observer_->on_recorded(answered_.published.size() - gone.acknowledged, answered_.retry.size(),
                             answered_.dead_letter.size(), clock_.now() - mark_start);
      count(answered_);
      answered_ = BatchOutcome{};
      return;
    }
    if (!record_failed_) return;
  } else {
    if (any_ok_) observer_->on_kafka_ok();
    any_ok_ = false;
    if (!has_records(answered_)) return;
    if (!group_since_) group_since_ = clock_.now();
    // Groups (one statement per kind per group): while more answers are due, wait until a
    // batch's worth was answered, or kGroupWait passed since the first of the group (a stuck
    // partition must not keep the others unmarked). Each mark has a fixed cost in PostgreSQL
    // (a statement, a commit); a drain with a full window recorded every poll's few answers.
    if (!force && !record_failed_ && records(answered_) < options_.batch_size && unanswered_ > 0 &&
        clock_.now() - *group_since_ < kGroupWait) {
      return;
    }
  }
  // Invariant 4: an outcome whose recording failed is recorded before anything else is
  // read; its messages are never sent again for that reason.
  auto mark_start = clock_.now();
  try {
    store_.record_outcome(answered_);
  } catch (const UnavailableError& e) {
    bool first = !record_failed_;
    record_failed_ = true;
    if (first) {
      throw UnavailableError("cannot record the outcome of " + std::to_string(records(answered_)) +
                             " messages Kafka answered (" + e.what() +
                             "); they are not sent again, their recording is retried");
    }
    throw;
  }
  VanishedCount gone = report_vanished(store_, *observer_);
  counters_.vanished += gone.total;
  observer_->on_recorded(answered_.published.size() - gone.acknowledged, answered_.retry.size(),
                         answered_.dead_letter.size(), clock_.now() - mark_start);
  if (record_failed_) {
    logging::get("core")->info("recorded the outcome of {} messages after the earlier failure",
                               records(answered_));
  }
  group_since_.reset();
  record_failed_ = false;
  count(answered_);
  answered_ = BatchOutcome{};
}

// --- one batch ---------------------------------------------------------------------------------

BatchReport BatchRelay::run_batch(const std::function<bool()>& give_up) {
  // Invariant 4: nothing new is read (nor anything re-sent) before the last outcome is
  // recorded; reading first would send those rows to Kafka again.
  if (record_failed_) record(true);
  read(/*by_state=*/true);
  bool purged = false;
  while (!window_.empty()) {
    collect(kAnswerWait);
    if (!window_.empty() && !purged && give_up()) {
      publisher_.purge();
      purged = true;
    }
  }
  if (pipelined_ && !has_records(answered_) && cycle_.read == 0) {
    return cycle_;
  }
  if (!pipelined_ && batch_open_ && cycle_.read == 0) {
    batch_open_ = false;
    store_.abort_batch();
    return cycle_;
  }
  record(true);
  ++counters_.batches;
  counters_.failed_attempts += cycle_.left_pending;
  return cycle_;
}

// --- the pipeline ------------------------------------------------------------------------------

void BatchRelay::end_cycle(const std::atomic<bool>& stop) {
  // Everything read since the last by-state read is answered and recorded.
  if (cycle_.read > 0) {
    ++counters_.batches;
    counters_.failed_attempts += cycle_.left_pending;
  }
  if (cycle_.dead_lettered > 0) {
    logging::get("core")->warn("dead-lettered {} rows of {} read (see outbox.events.last_error)",
                               cycle_.dead_lettered, cycle_.read);
  }
  if (cycle_.transient > 0) {  // the cluster, not a topic or a row: everyone waits
    auto pause = backoff_.next();
    logging::get("core")->warn("{} of {} messages not delivered; retrying in {} ms",
                               cycle_.transient, cycle_.read, pause.count());
    observer_->on_failure("Kafka did not deliver " + std::to_string(cycle_.transient) +
                          " messages");
    cycle_ = BatchReport{};
    wait_for_rows_ = false;
    pause_for(pause, stop);
    return;
  }
  if (cycle_.read > 0) backoff_.reset();
  cycle_ = BatchReport{};
  if (wait_for_rows_) {
    wait_for_rows_ = false;
    idle_wait(stop);
  }
}

void BatchRelay::step(const std::atomic<bool>& stop) {
  store_.keep_alive();
  if (record_failed_) record(true);  // invariant 4: before anything else (throws)
  if (window_.empty()) {
    record(true);
    end_cycle(stop);
    if (stop.load()) return;
    read(/*by_state=*/true);
    if (window_.empty()) {  // nothing sent (nothing pending, or poison and blocked rows only)
      if (!pipelined_ && batch_open_ && cycle_.read == 0) {
        batch_open_ = false;
        store_.abort_batch();
      }
      record(true);
      return;
    }
  } else if (may_read_ahead()) {
    read(/*by_state=*/false);
  }
  collect(may_read_ahead() ? std::chrono::milliseconds(0) : kAnswerWait);
  record(false);
}

void BatchRelay::idle_wait(const std::atomic<bool>& stop) {
  wait_for_rows(store_, clock_, *observer_, options_.interval, stop);
}

void BatchRelay::pause_for(std::chrono::milliseconds pause, const std::atomic<bool>& stop) {
  pause_ticking(clock_, *observer_, pause, stop);
}

std::size_t BatchRelay::shut_down() {
  auto log = logging::get("core");
  // What is in flight gets up to shutdown_timeout to be answered; the rest is purged (its
  // rows stay pending and are sent again by the next run).
  auto deadline = clock_.now() + options_.shutdown_timeout;
  bool purged = false;
  while (!window_.empty()) {
    observer_->on_tick();
    store_.keep_alive();
    if (!purged && clock_.now() >= deadline) {
      log->warn("shutdown: purging {} messages still unanswered", unanswered_);
      publisher_.purge();
      purged = true;
    }
    std::size_t before = cycle_.transient;
    collect(kAnswerWait);
    if (purged) abandoned_ += cycle_.transient - before;
  }
  std::size_t abandoned = abandoned_;
  try {
    record(true);  // one last try: what stays unrecorded is sent again by the next run
  } catch (const UnavailableError& e) {
    log->error(
        "stopping with the outcome of acknowledged messages unrecorded ({}); their rows stay "
        "pending and will be sent again",
        e.what());
    abandoned += answered_.published.size();
  }
  return abandoned;
}

std::size_t BatchRelay::run(const std::atomic<bool>& stop) {
  while (!stop.load()) {
    step_or_back_off([&] { step(stop); }, backoff_, clock_, *observer_, stop);
  }
  return shut_down();
}

}  // namespace outbox::core
