#include "core/transactional_relay.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <variant>

#include "common/crash_point.h"
#include "common/logging.h"
#include "core/loop_support.h"
#include "core/message_mapping.h"

namespace outbox::core {

namespace {
constexpr std::chrono::milliseconds kAnswerWait{100};

std::size_t records(const BatchOutcome& o) {
  return o.published.size() + o.retry.size() + o.dead_letter.size();
}

bool parse_id(std::string_view text, std::int64_t& out) {
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && ptr == text.data() + text.size() && !text.empty();
}
}  // namespace

std::string encode_checkpoint(std::vector<std::int64_t> ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::string out;
  for (std::size_t i = 0; i < ids.size();) {
    std::size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(ids[i]);
    if (j > i) out += '-' + std::to_string(ids[j]);
    i = j + 1;
  }
  return out;
}

std::optional<std::vector<std::int64_t>> decode_checkpoint(const std::string& text) {
  std::vector<std::int64_t> ids;
  if (text.empty()) return ids;
  std::string_view rest(text);
  std::int64_t last = 0;
  while (!rest.empty()) {
    auto comma = rest.find(',');
    std::string_view part = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    if (comma != std::string_view::npos && rest.empty()) return std::nullopt;  // "1,"
    auto dash = part.find('-', 1);
    std::int64_t from = 0, to = 0;
    if (!parse_id(part.substr(0, dash), from)) return std::nullopt;
    to = from;
    if (dash != std::string_view::npos && !parse_id(part.substr(dash + 1), to)) return std::nullopt;
    if (to < from || (!ids.empty() && from <= last)) return std::nullopt;  // increasing only
    if (to - from > 10'000'000) return std::nullopt;                       // not one of ours
    for (std::int64_t id = from; id <= to; ++id) ids.push_back(id);
    last = to;
  }
  return ids;
}

TransactionalRelay::TransactionalRelay(OutboxStore& store, TransactionalPublisher& publisher,
                                       RecoveryMarker& marker, Clock& clock,
                                       BatchRelayOptions options)
    : store_(store),
      publisher_(publisher),
      marker_(marker),
      clock_(clock),
      options_(std::move(options)),
      pipelined_(store.read_ahead()),
      backoff_(options_.backoff_initial, options_.backoff_max),
      topics_([&publisher](const std::string& t) { return publisher.topic_problem(t); }, clock,
              options_.topic_map, options_.backoff_initial, options_.backoff_max) {
  publisher_.set_tick([this] {
    observer_->on_tick();
    store_.keep_alive();
  });
}

TransactionalRelay::~TransactionalRelay() { publisher_.set_tick({}); }

void TransactionalRelay::close_batch() noexcept {
  if (batch_open_) {
    batch_open_ = false;
    store_.abort_batch();
  }
}

void TransactionalRelay::record(BatchOutcome outcome) {
  auto mark_start = clock_.now();
  try {
    if (batch_open_) {
      batch_open_ = false;
      try {
        store_.finish_batch(outcome);
      } catch (...) {
        store_.abort_batch();
        throw;
      }
    } else {
      store_.record_outcome(outcome);
    }
  } catch (const UnavailableError& e) {
    std::size_t n = records(outcome);
    unrecorded_ = std::move(outcome);
    throw UnavailableError("cannot record the outcome of " + std::to_string(n) + " messages (" +
                           e.what() + "); they are not sent again, their recording is retried");
  }
  VanishedCount gone = report_vanished(store_, *observer_);
  counters_.vanished += gone.total;
  observer_->on_recorded(outcome.published.size() - gone.acknowledged, outcome.retry.size(),
                         outcome.dead_letter.size(), clock_.now() - mark_start);
  if (unrecorded_) {
    logging::get("core")->info("recorded the outcome of {} messages after the earlier failure",
                               records(outcome));
  }
  unrecorded_.reset();
  counters_.published += outcome.published.size();
  counters_.dead_lettered += outcome.dead_letter.size();
  counters_.failed_attempts += outcome.dead_letter.size();
}

void TransactionalRelay::recover() {
  auto log = logging::get("core");
  // init_transactions fences every older producer with our transactional.id: after it, no
  // transaction of theirs can commit, and the one they had open is aborted or completed.
  publisher_.init();
  std::string text = publisher_.last_checkpoint();
  std::size_t marked = 0;
  if (!text.empty()) {
    auto ids = decode_checkpoint(text);
    if (!ids) {
      throw FatalError(
          "the last checkpoint record of this transactional.id is not a list of "
          "outbox ids (\"" +
          text.substr(0, 80) + "\"): is delivery.checkpoint_topic used by something else?");
    }
    marked = marker_.mark_published(*ids);
  }
  recovered_rows_ += marked;
  recovery_due_ = false;
  if (marked > 0) {
    log->warn(
        "recovery: {} rows of the last committed Kafka transaction were not marked published "
        "(the previous run stopped between the commit and the mark); marked now, not sent again",
        marked);
  } else {
    log->info("exactly_once: transactions initialised; the last checkpoint is marked");
  }
}

void TransactionalRelay::await_answers(std::vector<InFlight>& sent, const std::atomic<bool>& stop) {
  std::size_t left = sent.size();
  std::optional<std::chrono::steady_clock::time_point> stop_deadline;
  bool purged = false;
  while (left > 0) {
    observer_->on_tick();
    store_.keep_alive();
    if (stop.load() && !purged) {
      if (!stop_deadline) stop_deadline = clock_.now() + options_.shutdown_timeout;
      if (clock_.now() >= *stop_deadline) {
        logging::get("core")->warn("shutdown: purging {} messages still unanswered", left);
        publisher_.purge();
        purged = true;
        abandoned_ += left;
      }
    }
    for (Completion& c : publisher_.poll(kAnswerWait)) {
      if (c.tag >= sent.size() || sent[c.tag].result) continue;
      InFlight& entry = sent[c.tag];
      entry.result = std::move(c.result);
      entry.message = Message{};
      observer_->on_delivery(entry.row_topic, entry.result->ok, entry.result->kind,
                             clock_.now() - entry.sent_at);
      --left;
    }
  }
}

void TransactionalRelay::step(const std::atomic<bool>& stop) {
  auto log = logging::get("core");
  store_.keep_alive();
  if (unrecorded_) record(*unrecorded_);  // before anything else (throws)

  std::vector<std::string> skip = topics_.skipped();
  std::size_t limit = solo_through_ > 0 ? 1 : options_.batch_size;
  auto read_start = clock_.now();
  // The read also takes the leader role (or throws StandbyError): recovery, which fences
  // the other producers of this transactional.id, happens only as the leader.
  std::vector<OutboxEvent> events = store_.begin_batch(limit, options_.batch_max_bytes, skip);
  batch_open_ = !pipelined_;
  if (recovery_due_) {
    // Rows read before recovery may be committed in Kafka already: drop them, read again.
    close_batch();
    recover();
    return;
  }
  std::size_t bytes = 0;
  for (const auto& e : events) bytes += event_bytes(e);
  observer_->on_read(events.size(), bytes, clock_.now() - read_start);
  if (solo_through_ > 0 && (events.empty() || events.back().id >= solo_through_)) {
    solo_through_ = 0;
  }
  bool full = !events.empty() && (events.size() >= limit || bytes >= options_.batch_max_bytes);
  if (events.empty()) {
    close_batch();
    idle_wait(stop);
    return;
  }

  BatchOutcome outcome;
  std::vector<InFlight> sent;
  sent.reserve(events.size());  // librdkafka points into the messages: no reallocation
  std::set<std::string> checked;
  std::size_t blocked_rows = 0;
  for (OutboxEvent& event : events) {
    if (!topics_.admit(event.topic, checked)) {
      ++blocked_rows;
      continue;
    }
    std::int64_t id = event.id;
    std::string row_topic = event.topic;
    // The event each id stands for: the mark matches both (a reused id is not marked).
    outcome.rows[id] = RowIdentity{event.event_id, row_topic};
    auto mapped = to_message(std::move(event), options_.topic_map);
    if (auto* poison = std::get_if<PoisonReason>(&mapped)) {
      observer_->on_dead_lettered(row_topic, 1);
      outcome.dead_letter.push_back({id, poison->text});
      continue;
    }
    InFlight& entry = sent.emplace_back();
    entry.id = id;
    entry.row_topic = std::move(row_topic);
    entry.message = std::move(std::get<Message>(mapped));
  }
  bool wait_after = !full || blocked_rows == events.size();
  if (sent.empty()) {
    if (outcome.dead_letter.empty()) {
      close_batch();
    } else {
      record(std::move(outcome));
    }
    if (wait_after) idle_wait(stop);
    return;
  }

  try {
    publisher_.begin();
  } catch (const UnavailableError&) {
    close_batch();
    recovery_due_ = true;
    throw;
  }
  for (std::size_t i = 0; i < sent.size(); ++i) {
    sent[i].sent_at = clock_.now();
    publisher_.send(sent[i].message, i);
  }
  await_answers(sent, stop);

  std::size_t failed = 0, transient = 0;
  for (const InFlight& entry : sent) {
    if (!entry.result->ok) ++failed;
  }
  if (failed > 0) {
    // Any failure aborts the whole transaction: nothing of it is visible to read_committed
    // consumers, every row stays pending (per-key order: the next transaction sends them
    // again in id order). Only a reason proven a row's own dead-letters it.
    if (!publisher_.abort()) recovery_due_ = true;
    for (const InFlight& entry : sent) {
      const DeliveryResult& r = *entry.result;
      if (r.ok) continue;
      switch (r.kind) {
        case FailureKind::permanent:
          observer_->on_dead_lettered(entry.row_topic, 1);
          outcome.dead_letter.push_back({entry.id, r.error});
          break;
        case FailureKind::suspect:
          if (sent.size() == 1) {
            observer_->on_dead_lettered(entry.row_topic, 1);
            outcome.dead_letter.push_back({entry.id, r.error + " (sent alone)"});
          } else {
            if (solo_through_ == 0) {
              log->warn(
                  "Kafka refused a produce request ({}); sending the rows one by one "
                  "(one transaction each) to find the one at fault",
                  r.error);
            }
            solo_through_ = std::max(solo_through_, entry.id);
          }
          break;
        case FailureKind::topic_blocked:
          topics_.block(entry.row_topic, r.error);
          break;
        case FailureKind::transient:
          ++transient;
          break;
      }
    }
    counters_.failed_attempts += failed - outcome.dead_letter.size();
    if (outcome.dead_letter.empty()) {
      close_batch();
    } else {
      record(std::move(outcome));
    }
    if (transient > 0) {
      observer_->on_failure("Kafka did not deliver " + std::to_string(transient) + " messages");
      throw UnavailableError("Kafka did not deliver " + std::to_string(transient) + " of " +
                             std::to_string(sent.size()) +
                             " messages; the transaction was aborted, its rows stay pending");
    }
    return;
  }
  observer_->on_kafka_ok();

  for (const InFlight& entry : sent) {
    outcome.published.push_back(entry.id);
    topics_.delivered(entry.row_topic);
  }
  try {
    publisher_.commit(encode_checkpoint(outcome.published));
  } catch (const FencedError& e) {
    close_batch();
    recovery_due_ = true;
    log->error("{}: this instance marks nothing of its transaction", e.what());
    throw;
  } catch (const UnavailableError& e) {
    close_batch();
    recovery_due_ = true;
    throw UnavailableError(std::string("Kafka transaction not committed: ") + e.what() +
                           "; nothing is marked, recovery (init_transactions and the last "
                           "checkpoint) decides what was committed");
  }
  common::crash_point("after_commit");
  record(std::move(outcome));
  ++counters_.batches;
  backoff_.reset();
  if (wait_after) idle_wait(stop);
}

void TransactionalRelay::idle_wait(const std::atomic<bool>& stop) {
  wait_for_rows(store_, clock_, *observer_, options_.interval, stop);
}

std::size_t TransactionalRelay::run(const std::atomic<bool>& stop) {
  auto log = logging::get("core");
  while (!stop.load()) {
    step_or_back_off([&] { step(stop); }, backoff_, clock_, *observer_, stop);
  }
  std::size_t abandoned = abandoned_;
  if (unrecorded_) {
    try {
      record(*unrecorded_);
    } catch (const UnavailableError& e) {
      // Committed in Kafka: the next run's recovery marks them (the last checkpoint).
      log->error(
          "stopping with {} committed rows unmarked ({}); the next run's recovery marks "
          "them from the checkpoint, they are not sent again",
          unrecorded_->published.size(), e.what());
    }
  }
  return abandoned;
}

}  // namespace outbox::core
