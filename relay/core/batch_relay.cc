#include "core/batch_relay.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>
#include <variant>

#include "common/crash_point.h"
#include "common/logging.h"
#include "core/checkpoint.h"
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
// exactly_once: while another producer's open transaction hides the checkpoint topic's end,
// how often the end is looked at again, and how often that is logged.
constexpr std::chrono::milliseconds kHiddenRecheck{1000};
constexpr std::chrono::milliseconds kHiddenLogEvery{30'000};
}  // namespace

// --- the states ----------------------------------------------------------------------------

const char* LoopPhaseTraits::name(LoopPhase s) {
  switch (s) {
    case LoopPhase::empty:
      return "empty";
    case LoopPhase::reading:
      return "reading";
    case LoopPhase::after_short_read:
      return "after_short_read";
    case LoopPhase::draining:
      return "draining";
    case LoopPhase::unrecorded:
      return "unrecorded";
  }
  return "?";
}

bool LoopPhaseTraits::allowed(LoopPhase from, LoopPhase to) {
  using P = LoopPhase;
  switch (from) {
    case P::empty:  // a read by state sent rows (or, alone, one suspect); a record failed
      return to == P::reading || to == P::after_short_read || to == P::draining ||
             to == P::unrecorded;
    case P::reading:
    case P::after_short_read:  // read ahead or not; a failure; drained and recorded
      return to == P::reading || to == P::after_short_read || to == P::draining ||
             to == P::unrecorded || to == P::empty;
    case P::draining:  // only drained and recorded, or a record failed
      return to == P::empty || to == P::unrecorded;
    case P::unrecorded:  // recorded at last: what is in flight drains first
      return to == P::draining || to == P::empty;
  }
  return false;
}

const char* TransactionStateTraits::name(TransactionState s) {
  switch (s) {
    case TransactionState::recovery_due:
      return "recovery_due";
    case TransactionState::idle:
      return "idle";
    case TransactionState::open:
      return "open";
    case TransactionState::closed:
      return "closed";
  }
  return "?";
}

bool TransactionStateTraits::allowed(TransactionState from, TransactionState to) {
  using T = TransactionState;
  switch (from) {
    case T::recovery_due:  // only recovery ends it
      return to == T::idle;
    case T::idle:  // begun; begin failed
      return to == T::open || to == T::recovery_due;
    case T::open:  // full, old or failed; settled; outcome unknown
      return to == T::closed || to == T::idle || to == T::recovery_due;
    case T::closed:  // committed or aborted; outcome unknown
      return to == T::idle || to == T::recovery_due;
  }
  return false;
}

// --- construction --------------------------------------------------------------------------

BatchRelay::BatchRelay(OutboxStore& store, Publisher& publisher, Clock& clock,
                       BatchRelayOptions options)
    : store_(store),
      publisher_(publisher),
      clock_(clock),
      options_(std::move(options)),
      backoff_(options_.backoff_initial, options_.backoff_max),
      max_rows_(std::max(options_.batch_size, options_.max_in_flight_rows)),
      topics_([&publisher](const std::string& t) { return publisher.topic_problem(t); }, clock,
              options_.topic_map, options_.format.topic_template, options_.backoff_initial,
              options_.backoff_max) {
  options_.max_in_flight_rows = std::max<std::size_t>(options_.max_in_flight_rows, 1);
  options_.max_in_flight_bytes = std::max<std::size_t>(options_.max_in_flight_bytes, 1);
}

BatchRelay::BatchRelay(OutboxStore& store, TransactionalPublisher& publisher,
                       RecoveryMarker& marker, Clock& clock, BatchRelayOptions options)
    : BatchRelay(store, static_cast<Publisher&>(publisher), clock, std::move(options)) {
  txn_publisher_ = &publisher;
  marker_ = &marker;
  txn_ = StateMachine<TransactionStateTraits>(TransactionState::recovery_due, "core");
  publisher.set_tick([this] {
    observer_->on_tick();
    store_.keep_alive();
  });
}

BatchRelay::~BatchRelay() {
  if (txn_publisher_ != nullptr) txn_publisher_->set_tick({});
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

bool BatchRelay::settled() const {
  return window_.empty() && phase_.is(LoopPhase::empty) && !has_records(answered_) &&
         !txn_.is(TransactionState::open) && !txn_.is(TransactionState::closed);
}

// --- reading and sending -------------------------------------------------------------------

std::size_t BatchRelay::in_flight_rows() const {
  // Answered rows count until recorded: a crash sends at most the window again.
  return window_.size() + records(answered_);
}

bool BatchRelay::may_read_ahead() const {
  if (window_.empty() || !phase_.is(LoopPhase::reading)) return false;
  if (solo_through_ > 0) return false;
  if (exactly_once() && !txn_.is(TransactionState::open)) return false;
  if (in_flight_rows() >= options_.max_in_flight_rows) return false;
  return unanswered_bytes_ < options_.max_in_flight_bytes;
}

void BatchRelay::close_transaction_if_due() {
  if (!exactly_once() || !txn_.is(TransactionState::open)) return;
  if (txn_rows_ >= max_rows_) {
    close_transaction("it holds max_rows rows");
  } else if (clock_.now() - txn_since_ >= kTransactionWindow) {
    close_transaction("its reads window passed");
  }
}

std::vector<CheckpointRow> BatchRelay::transaction_rows() const {
  // Every row sent in the open transaction: answered ok (answered_.published, their event
  // ids in answered_.rows) or not answered yet (the window). Poison rows were never sent.
  std::vector<CheckpointRow> rows;
  rows.reserve(answered_.published.size() + unanswered_);
  for (std::int64_t id : answered_.published) {
    auto it = answered_.rows.find(id);
    rows.push_back({id, it != answered_.rows.end() ? it->second.event_id : std::string()});
  }
  for (const InFlight& entry : window_) {
    if (!entry.answered) rows.push_back({entry.id, entry.event_id});
  }
  return rows;
}

void BatchRelay::close_transaction(const char* why) {
  to(TransactionState::closed, why);
  if (txn_failures_ > 0 || window_.empty()) return;  // aborted, or committed at once
  // Its rows are known now: the checkpoint goes out with the last messages rather than after
  // their answers (a produce round trip less per transaction). Any failed answer still aborts
  // the transaction, the checkpoint with it (invariant mark-after-ack holds: the rows are
  // recorded only after the commit).
  txn_checkpoint_ = encode_checkpoint(transaction_rows());
  txn_publisher_->send_checkpoint(*txn_checkpoint_);
}

void BatchRelay::read(bool by_state, const std::atomic<bool>& stop) {
  // Rows of blocked topics stay where they are; the rest flows.
  std::vector<std::string> skip = topics_.skipped();
  // Suspects are sent one row at a time until past the last one: alone, a failure is proven
  // the row's own.
  const bool solo = solo_through_ > 0;
  std::size_t limit = solo ? 1 : options_.batch_size;
  std::size_t max_bytes = options_.batch_max_bytes;
  if (exactly_once()) {  // invariant checkpoint-fits: the rows the open transaction may still take
    std::size_t taken = txn_.is(TransactionState::open) ? txn_rows_ : 0;
    limit = std::min(limit, max_rows_ - std::min(max_rows_, taken));
  }
  if (!by_state) {
    limit = std::min(limit, options_.max_in_flight_rows - in_flight_rows());
    max_bytes = std::min(max_bytes, options_.max_in_flight_bytes - unanswered_bytes_);
  }
  auto read_start = clock_.now();
  std::vector<OutboxEvent> events;
  if (by_state) {
    // In exactly_once this read also takes (or proves) the leader role: recovery, which
    // fences the other producers of this transactional.id, happens only as the leader.
    events = store_.begin_batch(limit, max_bytes, skip);
    if (txn_.is(TransactionState::recovery_due)) {
      // Invariant recover-before-send: rows read before recovery may be committed in Kafka already:
      // the read is dropped (it holds nothing) and the next one comes after recovery.
      recover(stop);
      return;
    }
    cycle_ = BatchReport{};
    cycle_open_ = true;
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
  const bool full = !events.empty() && (events.size() >= limit || bytes >= max_bytes);
  if (!events.empty()) last_read_id_ = events.back().id;
  cycle_.read += events.size();
  if (by_state) cycle_.full = full;
  observer_->on_read(events.size(), bytes, clock_.now() - read_start);

  std::set<std::string> checked;  // row topics whose Kafka topic was asked about just now
  std::size_t blocked_rows = 0, sent = 0;
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
    if (exactly_once() && txn_.is(TransactionState::idle)) {
      try {
        txn_publisher_->begin();
      } catch (const UnavailableError&) {
        to(TransactionState::recovery_due, "begin_transaction failed");
        throw;
      }
      to(TransactionState::open, "a read is sent");
      txn_rows_ = 0;
      txn_failures_ = 0;
      txn_since_ = clock_.now();
      txn_checkpoint_.reset();
    }
    std::uint64_t tag = front_tag_ + window_.size();
    InFlight& entry = window_.emplace_back();
    entry.id = id;
    entry.event_id = std::move(event_id);
    entry.row_topic = std::move(row_topic);
    entry.message = std::move(std::get<Message>(mapped));
    entry.bytes = row_bytes;
    entry.sent_at = clock_.now();
    // Invariant dead-letter-own-reason: a message is "alone" while nothing else was in flight from
    // its send on.
    if (unanswered_ == 0) {
      alone_ = tag;
    } else {
      alone_.reset();
    }
    ++unanswered_;
    unanswered_bytes_ += row_bytes;
    ++txn_rows_;
    ++sent;
    publisher_.send(entry.message, tag);
  }
  // Only rows of blocked topics (the replication drain returns them): wait like an idle relay
  // rather than read the same rows again at once.
  if (by_state && blocked_rows == events.size()) cycle_.full = false;
  if (window_.empty()) return;  // nothing in flight: the phase stays empty
  if (exactly_once() && txn_.is(TransactionState::open) && !full) {
    // The end of the pending rows: commit what came rather than wait for more (latency).
    close_transaction("a read reached the end of the pending rows");
  }
  if (solo && sent > 0) {
    to(LoopPhase::draining, "a suspect is sent alone: nothing joins it until it is answered");
  } else if (!phase_.is(LoopPhase::draining)) {
    to(full ? LoopPhase::reading : LoopPhase::after_short_read,
       full ? "the read was full" : "the read reached the end of the pending rows");
  }
}

// --- answers ---------------------------------------------------------------------------------

void BatchRelay::collect(std::chrono::milliseconds timeout) {
  if (unanswered_ == 0) return;
  std::vector<Completion> done = publisher_.poll(timeout);
  if (!done.empty()) common::crash_point("after_delivery");
  bool any_ok = false;
  for (const Completion& c : done) {
    if (c.tag < front_tag_ || c.tag - front_tag_ >= window_.size()) continue;  // not ours
    InFlight& entry = window_[c.tag - front_tag_];
    if (entry.answered) continue;
    any_ok = any_ok || c.result.ok;
    answer(entry, c.tag, c.result);
  }
  if (any_ok) observer_->on_kafka_ok();
  if (!done.empty() && phase_.is(LoopPhase::after_short_read)) {
    to(LoopPhase::reading, "an answer came in after a short read");
  }
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
    answered_.published.push_back(entry.id);
    topics_.delivered(entry.row_topic);
    answered_.rows[entry.id] = RowIdentity{std::move(entry.event_id), entry.row_topic};
    return;
  }
  // Any failure: no read-ahead until everything in flight is answered (invariant send-in-id-order);
  // then the next read starts from the oldest pending row, with the failure handled as below. In
  // exactly_once the transaction then takes no more reads and is aborted.
  ++txn_failures_;
  if (!phase_.is(LoopPhase::unrecorded)) to(LoopPhase::draining, "a delivery failed");
  if (exactly_once() && txn_.is(TransactionState::open)) {
    to(TransactionState::closed, "a delivery failed: it is aborted once the window is empty");
  }
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

// --- recording ----------------------------------------------------------------------------------

void BatchRelay::record(bool force) {
  if (exactly_once()) {
    // Invariant mark-after-ack: nothing of a transaction is recorded before it committed.
    if (txn_.is(TransactionState::open) || txn_.is(TransactionState::closed)) {
      if (!window_.empty()) return;
      settle_transaction();
    }
  } else {
    if (!has_records(answered_)) return;
    if (!group_since_) group_since_ = clock_.now();
    // Groups (one statement per kind per group): while more answers are due, wait until a
    // batch's worth was answered, or kGroupWait passed since the first of the group (a stuck
    // partition must not keep the others unmarked). Each mark has a fixed cost in PostgreSQL
    // (a statement, a commit); a drain with a full window recorded every poll's few answers.
    if (!force && !phase_.is(LoopPhase::unrecorded) && records(answered_) < options_.batch_size &&
        unanswered_ > 0 && clock_.now() - *group_since_ < kGroupWait) {
      return;
    }
  }
  if (!has_records(answered_)) return;
  // Invariant record-before-read: an outcome whose recording failed is recorded before anything
  // else is read; its messages are never sent again for that reason.
  auto mark_start = clock_.now();
  try {
    store_.record_outcome(answered_);
  } catch (const UnavailableError& e) {
    if (phase_.is(LoopPhase::unrecorded)) throw;
    to(LoopPhase::unrecorded, "recording an outcome failed");
    throw UnavailableError("cannot record the outcome of " + std::to_string(records(answered_)) +
                           " messages Kafka answered (" + e.what() +
                           "); they are not sent again, their recording is retried");
  }
  VanishedCount gone = report_vanished(store_, *observer_);
  counters_.vanished += gone.total;
  observer_->on_recorded(answered_.published.size() - gone.acknowledged, answered_.retry.size(),
                         answered_.dead_letter.size(), clock_.now() - mark_start);
  if (phase_.is(LoopPhase::unrecorded)) {
    logging::get("core")->info("recorded the outcome of {} messages after the earlier failure",
                               records(answered_));
    to(window_.empty() ? LoopPhase::empty : LoopPhase::draining, "the outcome was recorded");
  }
  group_since_.reset();
  count(answered_);
  answered_ = BatchOutcome{};
}

void BatchRelay::settle_transaction() {
  auto log = logging::get("core");
  if (txn_.is(TransactionState::open)) to(TransactionState::closed, "every message was answered");
  if (txn_failures_ > 0) {
    // Any failure aborts the whole transaction: nothing of it is visible to read_committed
    // consumers, every row stays pending (per-key order: the next transaction sends them
    // again in id order). Only a reason proven a row's own dead-letters it (recorded below).
    bool aborted = txn_publisher_->abort();
    for (std::int64_t id : answered_.published) {
      answered_.rows.erase(id);
      ++cycle_.left_pending;
    }
    answered_.published.clear();
    if (aborted) {
      to(TransactionState::idle, "aborted after a failed delivery");
    } else {
      to(TransactionState::recovery_due, "abort_transaction failed");
    }
    return;
  }
  // Sent when the transaction closed (the same rows: every one was answered ok), or now.
  std::string checkpoint =
      txn_checkpoint_ ? std::move(*txn_checkpoint_) : encode_checkpoint(transaction_rows());
  txn_checkpoint_.reset();
  try {
    txn_publisher_->commit(checkpoint);
  } catch (const FencedError& e) {
    answered_ = BatchOutcome{};
    to(TransactionState::recovery_due, "fenced");
    log->error("{}: this instance marks nothing of its transaction", e.what());
    throw;
  } catch (const FatalError&) {
    answered_ = BatchOutcome{};
    to(TransactionState::recovery_due, "the checkpoint record was refused");
    throw;
  } catch (const UnavailableError& e) {
    answered_ = BatchOutcome{};
    to(TransactionState::recovery_due, "commit of unknown outcome");
    throw UnavailableError(std::string("Kafka transaction not committed: ") + e.what() +
                           "; nothing is marked, recovery (init_transactions and the last "
                           "checkpoint) decides what was committed");
  }
  to(TransactionState::idle, "committed");
  common::crash_point("after_commit");
}

bool BatchRelay::recover(const std::atomic<bool>& stop) {
  auto log = logging::get("core");
  // init_transactions fences every older producer with our transactional.id: after it, no
  // transaction of theirs can commit, and the one they had open is aborted or completed.
  txn_publisher_->init();
  // Invariant checkpoint-fits: the checkpoint of a full transaction must fit one record (else the
  // commit could never succeed and the same rows would be sent, aborted and recovered forever).
  std::size_t max_bytes = txn_publisher_->max_checkpoint_bytes();
  std::size_t fits = max_bytes > kCheckpointFixedBytes
                         ? (max_bytes - kCheckpointFixedBytes) / kCheckpointRowBytes
                         : 0;
  if (fits == 0) {
    throw FatalError("exactly_once: the checkpoint topic's records may have at most " +
                     std::to_string(max_bytes) +
                     " bytes, too few for the checkpoint of one row: raise kafka.properties "
                     "message.max.bytes (and the checkpoint topic's max.message.bytes)");
  }
  // A transaction takes reads while the window allows (its rows are recorded only after its
  // commit, so they all count in the window): the window, or what its checkpoint fits.
  std::size_t wanted = std::max(options_.batch_size, options_.max_in_flight_rows);
  std::size_t rows = std::min(wanted, fits);
  if (rows < wanted && rows != max_rows_) {
    log->warn(
        "exactly_once: a transaction carries at most {} rows (source.polling.batch_size is "
        "{}, source.pipeline.max_in_flight_rows {}): its checkpoint (up to {} bytes a row) "
        "must fit one record of at most {} bytes (kafka.properties message.max.bytes, the "
        "checkpoint topic's max.message.bytes)",
        rows, options_.batch_size, options_.max_in_flight_rows, kCheckpointRowBytes, max_bytes);
  }
  max_rows_ = rows;

  // Invariant (README-eos.md, "Only the newest checkpoint is acted on"): a checkpoint is
  // marked only when no newer one of ours can be hidden from the read_committed read, i.e.
  // when the topic's last stable offset has reached the end that init left. Another
  // producer's open transaction can hold it below that end for as long as it stays open:
  // wait, however long, rather than mark an older checkpoint (its rows would be re-sent).
  CheckpointRead read = txn_publisher_->last_checkpoint();
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
    read = txn_publisher_->last_checkpoint();
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
    marked = marker_->mark_published(*checkpoint);
  }
  recovered_rows_ += marked.marked;
  to(TransactionState::idle, "recovered");
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

// --- the pipeline ------------------------------------------------------------------------------

void BatchRelay::end_cycle(const std::atomic<bool>& stop) {
  // Everything read since the last by-state read is answered and recorded.
  if (!cycle_open_) return;
  cycle_open_ = false;
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
    logging::get("core")->warn(
        "{} of {} messages not delivered{}; retrying in {} ms", cycle_.transient, cycle_.read,
        exactly_once() ? " (the transaction was aborted)" : "", pause.count());
    observer_->on_failure("Kafka did not deliver " + std::to_string(cycle_.transient) +
                          " messages");
    pause_ticking(clock_, *observer_, pause, stop);
    return;
  }
  if (cycle_.read > 0) backoff_.reset();
  if (!cycle_.full) wait_for_rows(store_, clock_, *observer_, options_.interval, stop);
}

void BatchRelay::step(const std::atomic<bool>& stop) {
  store_.keep_alive();
  if (phase_.is(LoopPhase::unrecorded))
    record(true);  // invariant record-before-read: first (throws)
  if (window_.empty()) {
    record(true);  // exactly_once: settles the transaction first
    if (!phase_.is(LoopPhase::empty)) to(LoopPhase::empty, "the window drained");
    if (cycle_open_) {  // its end (an idle wait, a pause) is a step of its own
      end_cycle(stop);
      return;
    }
    if (stop.load()) return;
    read(/*by_state=*/true, stop);
    if (window_.empty()) {  // nothing sent (nothing pending, or poison and blocked rows only)
      record(true);
      return;
    }
  } else {
    close_transaction_if_due();
    if (may_read_ahead()) read(/*by_state=*/false, stop);
  }
  close_transaction_if_due();
  collect(may_read_ahead() ? std::chrono::milliseconds(0) : kAnswerWait);
  record(false);
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
    // One last try (exactly_once: the transaction is committed or aborted first): what stays
    // unrecorded is sent again by the next run (exactly_once: marked by its recovery).
    record(true);
  } catch (const UnavailableError& e) {
    if (exactly_once() && txn_.is(TransactionState::recovery_due)) {
      log->error(
          "stopping with the last Kafka transaction's outcome not known ({}); the next run's "
          "recovery finds it from the checkpoint",
          e.what());
    } else if (exactly_once()) {
      log->error(
          "stopping with {} committed rows unmarked ({}); the next run's recovery marks "
          "them from the checkpoint, they are not sent again",
          answered_.published.size(), e.what());
    } else {
      log->error(
          "stopping with the outcome of acknowledged messages unrecorded ({}); their rows stay "
          "pending and will be sent again",
          e.what());
      abandoned += answered_.published.size();
    }
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
