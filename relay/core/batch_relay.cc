#include "core/batch_relay.h"

#include <spdlog/spdlog.h>

#include <variant>

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

BatchReport BatchRelay::run_batch(const std::function<bool()>& give_up) {
  BatchReport report;
  std::vector<OutboxEvent> events = store_.begin_batch(options_.batch_size);
  report.read = events.size();
  if (events.empty()) {
    store_.abort_batch();
    return report;
  }

  BatchOutcome outcome;
  std::vector<Message> messages;
  std::vector<const OutboxEvent*> sent;  // sent[i] is the row of messages[i]
  messages.reserve(events.size());
  sent.reserve(events.size());
  for (const OutboxEvent& event : events) {
    auto mapped = to_message(event, options_.topic_map);
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
  } catch (...) {
    store_.abort_batch();
    throw;
  }

  report.published = outcome.published.size();
  report.retried = outcome.retry.size();
  report.dead_lettered = outcome.dead_letter.size();
  report.left_pending = outcome.left_pending;
  counters_.published += report.published;
  counters_.dead_lettered += report.dead_lettered;
  counters_.failed_attempts += report.retried + report.dead_lettered + report.left_pending;
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
      if (report.read < options_.batch_size) idle_wait(stop);
    } catch (const UnavailableError& e) {
      auto pause = backoff_.next();
      log->warn("{}; retrying in {} ms", e.what(), pause.count());
      clock_.sleep_for(pause, [&] { return stop.load(); });
    }
  }
  return abandoned;
}

}  // namespace outbox::core
