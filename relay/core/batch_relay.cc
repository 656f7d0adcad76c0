#include "core/batch_relay.h"

#include <spdlog/spdlog.h>

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
  store_.record_outcome(*unrecorded_);  // throws UnavailableError: kept for the next try
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
  std::vector<OutboxEvent> events =
      store_.begin_batch(options_.batch_size, options_.batch_max_bytes);
  report.read = events.size();
  std::size_t bytes = 0;
  for (const auto& e : events) bytes += event_bytes(e);
  report.full = events.size() >= options_.batch_size || bytes >= options_.batch_max_bytes;
  if (events.empty()) {
    store_.abort_batch();
    return report;
  }

  BatchOutcome outcome;
  std::vector<Message> messages;
  std::vector<const OutboxEvent*> sent;  // sent[i] is the row of messages[i]
  messages.reserve(events.size());
  sent.reserve(events.size());
  for (OutboxEvent& event : events) {
    // The payload moves into the message (one copy of it in the relay); id and attempts
    // stay readable through sent[].
    auto mapped = to_message(std::move(event), options_.topic_map);
    if (auto* poison = std::get_if<PoisonReason>(&mapped)) {
      outcome.dead_letter.push_back({event.id, poison->text});
    } else {
      messages.push_back(std::move(std::get<Message>(mapped)));
      sent.push_back(&event);
    }
  }

  std::vector<DeliveryResult> results;
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

  for (std::size_t i = 0; i < results.size(); ++i) {
    const DeliveryResult& result = results[i];
    const OutboxEvent& event = *sent[i];
    if (result.ok) {
      outcome.published.push_back(event.id);
      continue;
    }
    switch (result.kind) {
      case FailureKind::permanent:
        outcome.dead_letter.push_back({event.id, result.error});
        break;
      case FailureKind::row_retriable:
        if (event.attempts + 1 >= options_.max_attempts) {
          outcome.dead_letter.push_back(
              {event.id,
               result.error + " (after " + std::to_string(event.attempts + 1) + " attempts)"});
        } else {
          outcome.retry.push_back({event.id, result.error});
        }
        break;
      case FailureKind::transient:
        ++outcome.left_pending;
        break;
    }
  }

  try {
    store_.finish_batch(outcome);
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

  count(outcome, report);
  report.left_pending = outcome.left_pending;
  counters_.failed_attempts += report.left_pending;
  ++counters_.batches;
  return report;
}

void BatchRelay::idle_wait(const std::atomic<bool>& stop) {
  // Waits in slices so that a stop request is seen promptly however long the interval.
  constexpr std::chrono::milliseconds kSlice{200};
  auto deadline = clock_.now() + options_.interval;
  while (!stop.load()) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_.now());
    if (left <= std::chrono::milliseconds::zero()) return;
    if (store_.wait_for_rows(std::min(left, kSlice))) return;
  }
}

std::size_t BatchRelay::run(const std::atomic<bool>& stop) {
  auto log = logging::get("core");
  std::optional<std::chrono::steady_clock::time_point> stop_seen;
  auto give_up = [&] {
    store_.keep_alive();
    if (!stop.load()) return false;
    if (!stop_seen) stop_seen = clock_.now();
    return clock_.now() - *stop_seen >= options_.shutdown_timeout;
  };
  std::size_t abandoned = 0;
  while (!stop.load()) {
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
      if (report.left_pending > 0 || report.retried > 0) {
        auto pause = backoff_.next();
        log->warn("{} of {} messages not delivered; retrying in {} ms",
                  report.left_pending + report.retried, report.read, pause.count());
        clock_.sleep_for(pause, [&] { return stop.load(); });
        continue;
      }
      backoff_.reset();
      if (!report.full) idle_wait(stop);
    } catch (const UnavailableError& e) {
      auto pause = backoff_.next();
      log->warn("{}; retrying in {} ms", e.what(), pause.count());
      clock_.sleep_for(pause, [&] { return stop.load(); });
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
