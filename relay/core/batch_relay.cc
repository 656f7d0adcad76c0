#include "core/batch_relay.h"

#include <spdlog/spdlog.h>

#include <set>
#include <variant>

#include "common/crash_point.h"
#include "common/logging.h"
#include "core/message_mapping.h"

namespace outbox::core {

BatchRelay::BatchRelay(OutboxStore& store, Publisher& publisher, Clock& clock,
                       BatchRelayOptions options)
    : store_(store),
      publisher_(publisher),
      clock_(clock),
      options_(std::move(options)),
      backoff_(options_.backoff_initial, options_.backoff_max) {}

namespace {
bool has_records(const BatchOutcome& o) {
  return !o.published.empty() || !o.retry.empty() || !o.dead_letter.empty();
}
std::string first_error(const std::vector<DeliveryResult>& results, FailureKind kind) {
  for (const auto& r : results) {
    if (!r.ok && r.kind == kind) return r.error;
  }
  return "";
}
}  // namespace

void BatchRelay::count(const BatchOutcome& outcome, BatchReport& report) {
  report.published += outcome.published.size();
  report.retried += outcome.retry.size();
  report.dead_lettered += outcome.dead_letter.size();
  counters_.published += outcome.published.size();
  counters_.dead_lettered += outcome.dead_letter.size();
  counters_.failed_attempts += outcome.retry.size() + outcome.dead_letter.size();
}

void BatchRelay::record_unrecorded() {
  if (!unrecorded_) return;
  auto mark_start = clock_.now();
  store_.record_outcome(*unrecorded_);  // throws UnavailableError: kept for the next try
  observer_->on_recorded(unrecorded_->published.size(), unrecorded_->retry.size(),
                         unrecorded_->dead_letter.size(), clock_.now() - mark_start);
  logging::get("core")->info(
      "recorded the outcome of {} messages after the earlier failure",
      unrecorded_->published.size() + unrecorded_->retry.size() + unrecorded_->dead_letter.size());
  BatchReport ignored;
  count(*unrecorded_, ignored);
  unrecorded_.reset();
}

BatchReport BatchRelay::run_batch(const std::function<bool()>& give_up) {
  BatchReport report;
  // Invariant 4: nothing new is read (nor anything re-sent) before the last outcome is
  // recorded; reading first would send those rows to Kafka again.
  record_unrecorded();
  // Rows of blocked topics stay where they are; the rest flows.
  std::vector<std::string> skip;
  for (const auto& [topic, block] : blocked_) {
    if (block.until > clock_.now()) skip.push_back(topic);
  }
  // Suspects are sent one row per batch until past the last one: alone, a failure is proven
  // the row's own.
  std::size_t limit = solo_through_ > 0 ? 1 : options_.batch_size;
  auto read_start = clock_.now();
  std::vector<OutboxEvent> events = store_.begin_batch(limit, options_.batch_max_bytes, skip);
  if (solo_through_ > 0 && (events.empty() || events.back().id >= solo_through_)) {
    solo_through_ = 0;  // this batch (of one) is the last of the suspects
  }
  report.read = events.size();
  std::size_t bytes = 0;
  for (const auto& e : events) bytes += event_bytes(e);
  report.full = events.size() >= limit || bytes >= options_.batch_max_bytes;
  observer_->on_read(events.size(), bytes, clock_.now() - read_start);
  if (events.empty()) {
    store_.abort_batch();
    return report;
  }

  BatchOutcome outcome;
  std::vector<Message> messages;
  std::vector<const OutboxEvent*> sent;  // sent[i] is the row of messages[i]
  std::vector<std::string> sent_topics;  // and sent_topics[i] its row topic
  messages.reserve(events.size());
  sent.reserve(events.size());
  std::set<std::string> checked;  // row topics whose Kafka topic was asked about just now
  for (OutboxEvent& event : events) {
    if (!known_good_.count(event.topic) && !checked.count(event.topic)) {
      // A topic seen for the first time, or whose backoff ran out: ask the cluster before
      // sending anything to it (a message to an unknown topic would wait in librdkafka).
      checked.insert(event.topic);
      auto mapped_topic =
          options_.topic_map.count(event.topic) ? options_.topic_map.at(event.topic) : event.topic;
      if (auto problem = publisher_.topic_problem(mapped_topic)) {
        block_topic(event.topic, *problem);
      } else {
        known_good_.insert(event.topic);
        if (auto it = blocked_.find(event.topic); it != blocked_.end()) {
          it->second.until = clock_.now();  // try it in this batch
        }
      }
    }
    if (auto it = blocked_.find(event.topic);
        it != blocked_.end() && it->second.until > clock_.now()) {
      ++outcome.left_pending;  // waits with its topic; not its fault
      ++report.topic_blocked;
      continue;
    }
    // The payload moves into the message (one copy of it in the relay); id and attempts
    // stay readable through sent[].
    std::string row_topic = event.topic;
    auto mapped = to_message(std::move(event), options_.topic_map);
    if (auto* poison = std::get_if<PoisonReason>(&mapped)) {
      observer_->on_dead_lettered(row_topic, 1);
      outcome.dead_letter.push_back({event.id, poison->text});
    } else {
      messages.push_back(std::move(std::get<Message>(mapped)));
      sent.push_back(&event);
      sent_topics.push_back(std::move(row_topic));
    }
  }

  std::vector<DeliveryResult> results;
  auto publish_start = clock_.now();
  try {
    results = publisher_.publish(messages, give_up);
    common::crash_point("after_delivery");
  } catch (...) {
    store_.abort_batch();
    throw;
  }
  if (results.size() != messages.size()) {
    store_.abort_batch();
    throw UnavailableError("publisher returned " + std::to_string(results.size()) +
                           " results for " + std::to_string(messages.size()) + " messages");
  }

  auto publish_took = clock_.now() - publish_start;
  bool any_ok = false;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const DeliveryResult& result = results[i];
    const OutboxEvent& event = *sent[i];
    observer_->on_delivery(sent_topics[i], result.ok, result.kind, publish_took);
    if (result.ok) {
      any_ok = true;
      outcome.published.push_back(event.id);
      if (blocked_.erase(sent_topics[i]) > 0) observer_->on_topic_blocked(sent_topics[i], false);
      continue;
    }
    switch (result.kind) {
      case FailureKind::permanent:
        observer_->on_dead_lettered(sent_topics[i], 1);
        outcome.dead_letter.push_back({event.id, result.error});
        break;
      case FailureKind::suspect:
        if (messages.size() == 1) {  // alone: proven its own
          observer_->on_dead_lettered(sent_topics[i], 1);
          outcome.dead_letter.push_back({event.id, result.error + " (sent alone)"});
        } else {
          solo_through_ = std::max(solo_through_, event.id);
          ++outcome.left_pending;
          ++report.suspects;
        }
        break;
      case FailureKind::topic_blocked:
        block_topic(sent_topics[i], result.error);
        ++outcome.left_pending;
        ++report.topic_blocked;
        break;
      case FailureKind::transient:
        ++outcome.left_pending;
        ++report.transient;
        break;
    }
  }
  if (report.suspects > 0) {
    logging::get("core")->warn(
        "Kafka refused a produce request of {} messages ({}); sending the rows one by one to "
        "find the one at fault (if a topic's max.message.bytes is below the producer's "
        "batch.size, lower kafka.properties batch.size)",
        messages.size(), results.empty() ? "" : first_error(results, FailureKind::suspect));
  }

  if (any_ok) observer_->on_kafka_ok();
  auto mark_start = clock_.now();
  try {
    store_.finish_batch(outcome);
    observer_->on_recorded(outcome.published.size(), outcome.retry.size(),
                           outcome.dead_letter.size(), clock_.now() - mark_start);
  } catch (const UnavailableError& e) {
    store_.abort_batch();
    if (!has_records(outcome)) throw;
    unrecorded_ = std::move(outcome);
    throw UnavailableError("cannot record the outcome of " +
                           std::to_string(unrecorded_->published.size() +
                                          unrecorded_->retry.size() +
                                          unrecorded_->dead_letter.size()) +
                           " messages Kafka answered (" + e.what() +
                           "); they are not sent again, their recording is retried");
  } catch (...) {
    store_.abort_batch();
    throw;
  }

  // Only rows of blocked topics (the replication drain returns them): wait like an idle relay
  // rather than read the same rows again at once.
  if (report.topic_blocked == report.read) report.full = false;
  count(outcome, report);
  report.left_pending = outcome.left_pending;
  counters_.failed_attempts += report.left_pending;
  ++counters_.batches;
  return report;
}

void BatchRelay::block_topic(const std::string& topic, const std::string& reason) {
  auto [it, fresh] = blocked_.try_emplace(
      topic, TopicBlock{Backoff(options_.backoff_initial, options_.backoff_max), {}});
  known_good_.erase(topic);
  if (it->second.until > clock_.now()) return;  // already blocked by this batch
  auto pause = it->second.backoff.next();
  it->second.until = clock_.now() + pause;
  if (fresh) observer_->on_topic_blocked(topic, true);
  logging::get("core")->warn(
      "topic {} cannot take messages ({}); its rows wait, asking again in {} ms; other "
      "topics keep flowing",
      topic, reason, pause.count());
}

void BatchRelay::idle_wait(const std::atomic<bool>& stop) {
  // Waits in slices so that a stop request is seen promptly however long the interval.
  constexpr std::chrono::milliseconds kSlice{200};
  auto deadline = clock_.now() + options_.interval;
  while (!stop.load()) {
    observer_->on_tick();
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_.now());
    if (left <= std::chrono::milliseconds::zero()) return;
    if (store_.wait_for_rows(std::min(left, kSlice))) return;
  }
}

std::size_t BatchRelay::run(const std::atomic<bool>& stop) {
  auto log = logging::get("core");
  std::optional<std::chrono::steady_clock::time_point> stop_seen;
  auto give_up = [&] {
    observer_->on_tick();
    store_.keep_alive();
    if (!stop.load()) return false;
    if (!stop_seen) stop_seen = clock_.now();
    return clock_.now() - *stop_seen >= options_.shutdown_timeout;
  };
  std::size_t abandoned = 0;
  // Backoff pauses tick too, in slices, so a long pause never looks like a stuck loop.
  auto pause_for = [&](std::chrono::milliseconds pause) {
    auto until = clock_.now() + pause;
    while (!stop.load() && clock_.now() < until) {
      observer_->on_tick();
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clock_.now());
      clock_.sleep_for(std::min(left, std::chrono::milliseconds(500)), [&] { return stop.load(); });
    }
  };
  while (!stop.load()) {
    observer_->on_tick();
    try {
      BatchReport report = run_batch(give_up);
      if (report.dead_lettered > 0) {
        log->warn("dead-lettered {} rows of a batch of {} (see outbox.events.last_error)",
                  report.dead_lettered, report.read);
      }
      if (stop.load()) {
        abandoned = report.left_pending;
        break;
      }
      if (report.transient > 0) {  // the cluster, not a topic or a row: everyone waits
        auto pause = backoff_.next();
        log->warn("{} of {} messages not delivered; retrying in {} ms", report.transient,
                  report.read, pause.count());
        observer_->on_failure("Kafka did not deliver " + std::to_string(report.transient) +
                              " messages");
        pause_for(pause);
        continue;
      }
      backoff_.reset();
      if (!report.full) idle_wait(stop);
    } catch (const StandbyError& e) {
      // The store already waited on the leader lock (about a second): no pause, so that a
      // standby takes over as soon as the leader's session ends. The store logs the change.
      backoff_.reset();
      observer_->on_failure(e.what());
    } catch (const UnavailableError& e) {
      auto pause = backoff_.next();
      log->warn("{}; retrying in {} ms", e.what(), pause.count());
      observer_->on_failure(e.what());
      pause_for(pause);
    }
  }
  if (unrecorded_) {  // one last try: what stays unrecorded is sent again by the next run
    try {
      record_unrecorded();
    } catch (const UnavailableError& e) {
      log->error(
          "stopping with the outcome of acknowledged messages unrecorded ({}); their "
          "rows stay pending and will be sent again",
          e.what());
      abandoned += unrecorded_->published.size();
    }
  }
  return abandoned;
}

}  // namespace outbox::core
