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
// While another producer's open transaction hides the checkpoint topic's end: how often the
// end is looked at again, and how often that is logged.
constexpr std::chrono::milliseconds kHiddenRecheck{1000};
constexpr std::chrono::milliseconds kHiddenLogEvery{30'000};

std::size_t records(const BatchOutcome& o) {
  return o.published.size() + o.retry.size() + o.dead_letter.size();
}

bool parse_id(std::string_view text, std::int64_t& out) {
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && ptr == text.data() + text.size() && !text.empty();
}
}  // namespace

namespace {
constexpr std::string_view kFormat2 = "v2;";

std::string encode_ranges(const std::vector<CheckpointRow>& rows) {
  std::string out;
  for (std::size_t i = 0; i < rows.size();) {
    std::size_t j = i;
    while (j + 1 < rows.size() && rows[j + 1].id == rows[j].id + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(rows[i].id);
    if (j > i) out += '-' + std::to_string(rows[j].id);
    i = j + 1;
  }
  return out;
}

std::optional<std::vector<std::int64_t>> decode_ranges(std::string_view rest) {
  std::vector<std::int64_t> ids;
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
}  // namespace

std::string encode_checkpoint(std::vector<CheckpointRow> rows) {
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  rows.erase(std::unique(rows.begin(), rows.end(),
                         [](const auto& a, const auto& b) { return a.id == b.id; }),
             rows.end());
  std::string out(kFormat2);
  out += encode_ranges(rows);
  out += ';';
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (i > 0) out += ',';
    out += rows[i].event_id;
  }
  return out;
}

std::optional<std::vector<CheckpointRow>> decode_checkpoint(const std::string& text) {
  std::string_view view(text);
  std::vector<CheckpointRow> rows;
  if (view.substr(0, kFormat2.size()) != kFormat2) {  // format 1: ids only
    auto ids = decode_ranges(view);
    if (!ids) return std::nullopt;
    for (auto id : *ids) rows.push_back({id, ""});
    return rows;
  }
  view.remove_prefix(kFormat2.size());
  auto semicolon = view.find(';');
  if (semicolon == std::string_view::npos) return std::nullopt;
  auto ids = decode_ranges(view.substr(0, semicolon));
  if (!ids) return std::nullopt;
  std::string_view events = view.substr(semicolon + 1);
  for (std::size_t i = 0; i < ids->size(); ++i) {
    auto comma = events.find(',');
    if ((comma == std::string_view::npos) != (i + 1 == ids->size())) return std::nullopt;
    std::string_view event = events.substr(0, comma);
    if (event.empty() || event.find(';') != std::string_view::npos) return std::nullopt;
    rows.push_back({(*ids)[i], std::string(event)});
    events = comma == std::string_view::npos ? std::string_view() : events.substr(comma + 1);
  }
  if (!events.empty()) return std::nullopt;
  return rows;
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
      max_rows_(options_.batch_size),
      topics_([&publisher](const std::string& t) { return publisher.topic_problem(t); }, clock,
              options_.topic_map, options_.format.topic_template, options_.backoff_initial,
              options_.backoff_max) {
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

bool TransactionalRelay::recover(const std::atomic<bool>& stop) {
  auto log = logging::get("core");
  // init_transactions fences every older producer with our transactional.id: after it, no
  // transaction of theirs can commit, and the one they had open is aborted or completed.
  publisher_.init();
  // The checkpoint of a full read must fit one record (else the commit could never succeed
  // and the same read would be sent, aborted and recovered forever).
  std::size_t max_bytes = publisher_.max_checkpoint_bytes();
  std::size_t fits = max_bytes > kCheckpointFixedBytes
                         ? (max_bytes - kCheckpointFixedBytes) / kCheckpointRowBytes
                         : 0;
  if (fits == 0) {
    throw FatalError("exactly_once: the checkpoint topic's records may have at most " +
                     std::to_string(max_bytes) +
                     " bytes, too few for the checkpoint of one row: raise kafka.properties "
                     "message.max.bytes (and the checkpoint topic's max.message.bytes)");
  }
  std::size_t rows = std::min(options_.batch_size, fits);
  if (rows < options_.batch_size && rows != max_rows_) {
    log->warn(
        "exactly_once: a transaction carries at most {} rows (source.polling.batch_size is "
        "{}): its checkpoint (up to {} bytes a row) must fit one record of at most {} bytes "
        "(kafka.properties message.max.bytes, the checkpoint topic's max.message.bytes)",
        rows, options_.batch_size, kCheckpointRowBytes, max_bytes);
  }
  max_rows_ = rows;

  // Invariant (README-eos.md, "Only the newest checkpoint is acted on"): a checkpoint is
  // marked only when no newer one of ours can be hidden from the read_committed read, i.e.
  // when the topic's last stable offset has reached the end that init left. Another
  // producer's open transaction can hold it below that end for as long as it stays open:
  // wait, however long, rather than mark an older checkpoint (its rows would be re-sent).
  CheckpointRead read = publisher_.last_checkpoint();
  auto waiting_since = clock_.now();
  auto next_log = waiting_since;
  while (!read.proven) {
    if (clock_.now() >= next_log) {
      log->warn(
          "recovery waits: another producer's open transaction hides the end of the "
          "checkpoint topic ({}) for {} s; nothing is marked or sent until it ends (it commits, "
          "aborts, or its transaction.timeout.ms passes)",
          read.hidden,
          std::chrono::duration_cast<std::chrono::seconds>(clock_.now() - waiting_since).count());
      next_log = clock_.now() + kHiddenLogEvery;
    }
    auto until = clock_.now() + kHiddenRecheck;
    while (!stop.load() && clock_.now() < until) {
      observer_->on_tick();
      store_.keep_alive();
      clock_.sleep_for(std::chrono::milliseconds(200), [&] { return stop.load(); });
    }
    if (stop.load()) return false;
    read = publisher_.last_checkpoint();
  }

  RecoveryMarker::Result marked;
  if (!read.record.empty()) {
    auto checkpoint = decode_checkpoint(read.record);
    if (!checkpoint) {
      throw FatalError(
          "the last checkpoint record of this transactional.id is not a list of "
          "outbox ids (\"" +
          read.record.substr(0, 80) + "\"): is delivery.checkpoint_topic used by something else?");
    }
    if (!checkpoint->empty() && checkpoint->front().event_id.empty()) {
      log->warn(
          "recovery: the last checkpoint has the format of an earlier version (ids without "
          "event ids): its rows are matched by id alone");
    }
    marked = marker_.mark_published(*checkpoint);
  }
  recovered_rows_ += marked.marked;
  recovery_due_ = false;
  if (marked.reused > 0) {
    log->error(
        "recovery: {} rows under ids of the last checkpoint are other events than the ones "
        "committed to Kafka (the database was rewound: a point-in-time restore or a failover "
        "to a standby that had not received them); they are sent, not marked",
        marked.reused);
  }
  if (marked.marked > 0) {
    log->warn(
        "recovery: {} rows of the last committed Kafka transaction were not marked published "
        "(the previous run stopped between the commit and the mark); marked now, not sent again",
        marked.marked);
  } else {
    log->info("exactly_once: transactions initialised; the last checkpoint is marked");
  }
  return true;
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
  std::size_t limit = solo_through_ > 0 ? 1 : max_rows_;
  auto read_start = clock_.now();
  // The read also takes the leader role (or throws StandbyError): recovery, which fences
  // the other producers of this transactional.id, happens only as the leader.
  std::vector<OutboxEvent> events = store_.begin_batch(limit, options_.batch_max_bytes, skip);
  batch_open_ = !pipelined_;
  if (recovery_due_) {
    // Rows read before recovery may be committed in Kafka already: drop them, read again.
    close_batch();
    recover(stop);
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
    std::string event_id = event.event_id;
    std::string row_topic = event.topic;
    // The event each id stands for: the mark matches both (a reused id is not marked).
    outcome.rows[id] = RowIdentity{event.event_id, row_topic};
    auto mapped = to_message(std::move(event), options_.topic_map, options_.format);
    if (auto* poison = std::get_if<PoisonReason>(&mapped)) {
      observer_->on_dead_lettered(row_topic, 1);
      outcome.dead_letter.push_back({id, poison->text});
      continue;
    }
    InFlight& entry = sent.emplace_back();
    entry.id = id;
    entry.event_id = std::move(event_id);
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

  std::vector<CheckpointRow> checkpoint;
  checkpoint.reserve(sent.size());
  for (const InFlight& entry : sent) {
    outcome.published.push_back(entry.id);
    checkpoint.push_back({entry.id, entry.event_id});
    topics_.delivered(entry.row_topic);
  }
  try {
    publisher_.commit(encode_checkpoint(std::move(checkpoint)));
  } catch (const FencedError& e) {
    close_batch();
    recovery_due_ = true;
    log->error("{}: this instance marks nothing of its transaction", e.what());
    throw;
  } catch (const FatalError&) {
    close_batch();
    recovery_due_ = true;
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
