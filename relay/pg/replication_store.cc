#include "pg/replication_store.h"

#include <pqxx/pqxx>

#include <algorithm>
#include <charconv>
#include <thread>
#include <unordered_set>

#include "common/logging.h"

namespace outbox::pg {

namespace {

// How long a streamed row may take to become visible to the relay's other session before it
// is taken for deleted (see visible_row_states).
constexpr std::chrono::seconds kVisibilityWait{5};

// How long after the slot was created (or the stream re-opened) the drain keeps reading.
constexpr std::chrono::seconds kDrainSettle{1};

std::string required_text(const Relation& relation, const Insert& insert, const char* column) {
  auto value = column_text(relation, insert, column);
  if (!value) throw PgOutputError(std::string("outbox.events.") + column + " is NULL");
  return std::string(*value);
}

template <typename T>
T parse_number(std::string_view text, const char* column) {
  T value{};
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size()) {
    throw PgOutputError(std::string("outbox.events.") + column +
                        " is not a number: " + std::string(text));
  }
  return value;
}

}  // namespace

PgReplicationStore::PgReplicationStore(std::string conninfo, std::string redacted,
                                       config::ReplicationConfig options,
                                       std::function<bool()> stopping)
    : conninfo_(conninfo),
      redacted_(redacted),
      options_(std::move(options)),
      stopping_(std::move(stopping)),
      table_(std::move(conninfo), std::move(redacted)) {}

PgReplicationStore::~PgReplicationStore() {
  // A clean stop reports how far it got, so the next start re-reads as little as possible.
  try {
    if (streaming_ && confirmed_ > reported_) report(false);
  } catch (...) {
    // The position is only advice here; the slot keeps the older one safely.
  }
}

template <typename F>
auto PgReplicationStore::guarded(F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const core::UnavailableError&) {
    reset();
    throw;
  } catch (const PgOutputError& e) {
    reset();
    throw core::FatalError(std::string("cannot decode the replication stream: ") + e.what());
  } catch (const core::FatalError&) {
    reset();
    throw;
  }
}

void PgReplicationStore::reset() noexcept {
  // Everything after the confirmed position comes again through the next stream.
  stream_.reset();
  streaming_ = false;
  draining_ = true;
  drain_batch_open_ = false;
  relations_.clear();
  tracker_.reset();
  queued_.clear();
  batch_.clear();
  retained_.clear();
  parked_.clear();
}

void PgReplicationStore::prepare_publication_and_slot(bool& slot_exists) {
  auto log = logging::get("pg");
  const std::string& slot = options_.slot_name;
  const std::string& pub = options_.publication_name;
  try {
    pqxx::connection conn(conninfo_);
    pqxx::nontransaction n(conn);
    if (n.exec_params("SELECT 1 FROM pg_publication WHERE pubname = $1", pub).empty()) {
      std::string create =
          "CREATE PUBLICATION " + pub + " FOR TABLE outbox.events WITH (publish = 'insert')";
      if (!options_.create_publication) {
        throw core::FatalError("publication " + pub + " does not exist; create it with: " + create +
                               " (or set source.replication.create_publication)");
      }
      try {
        n.exec(create);
      } catch (const pqxx::sql_error& e) {
        if (std::string(e.sqlstate()) != "42710") {  // created meanwhile by someone else
          throw core::FatalError("cannot create publication " + pub + " (" + e.what() +
                                 "); a table owner can: " + create);
        }
      }
      log->info("created publication {} (inserts into outbox.events)", pub);
    }
    pqxx::result rows = n.exec_params(
        "SELECT s.plugin, s.database = current_database(), s.active, s.active_pid, "
        "s.wal_status, a.application_name = current_setting('application_name'), "
        "coalesce(nullif(a.application_name, ''), a.backend_type) "
        "FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid "
        "WHERE s.slot_name = $1",
        slot);
    slot_exists = !rows.empty();
    if (!slot_exists) {
      if (!options_.create_slot) {
        throw core::FatalError("replication slot " + slot +
                               " does not exist; create it with: SELECT "
                               "pg_create_logical_replication_slot('" +
                               slot + "', 'pgoutput') (or set source.replication.create_slot)");
      }
      return;
    }
    const auto& row = rows[0];
    if (row[0].is_null() || row[0].as<std::string>() != "pgoutput" || !row[1].as<bool>()) {
      throw core::FatalError("replication slot " + slot +
                             " exists but is not a pgoutput slot of this database");
    }
    if (!row[4].is_null() && row[4].as<std::string>() == "lost") {
      throw core::FatalError(
          "replication slot " + slot +
          " was invalidated (wal_status lost, max_slot_wal_keep_size exceeded): the WAL it "
          "needed is gone, so it cannot be trusted. The relay will not re-create it by itself. "
          "Drop it with SELECT pg_drop_replication_slot('" +
          slot +
          "') and start the relay again: it re-creates the slot and first publishes every "
          "row still pending in outbox.events, so nothing is lost");
    }
    if (row[2].as<bool>()) {
      // This relay holds the leader lock, so no other relay of this database publishes: a
      // walsender of ours on the slot (same application_name) belongs to a previous leader
      // whose session is gone or going (killed, cut off). End it now rather than wait for
      // wal_sender_timeout. Anything else is another consumer: say so and stop.
      std::string who = row[3].is_null() ? "another process" : "PID " + row[3].as<std::string>();
      if (!row[5].is_null() && row[5].as<bool>()) {
        bool ended =
            n.exec_params1("SELECT pg_terminate_backend($1)", row[3].as<int>())[0].as<bool>();
        log->warn(
            "replication slot {} was still held by {}, the walsender of a previous "
            "outbox-relay session; {}",
            slot, who, ended ? "ended it" : "it is already gone");
        throw core::UnavailableError("replication slot " + slot + " is being released by " + who);
      }
      throw core::FatalError("replication slot " + slot + " is active for " + who +
                             (row[6].is_null() ? "" : " (" + row[6].as<std::string>() + ")") +
                             "; another consumer is reading it. Stop it, or give this relay "
                             "its own source.replication.slot_name");
    }
  } catch (const core::FatalError&) {
    throw;
  } catch (const core::UnavailableError&) {
    throw;
  } catch (const std::exception& e) {
    throw core::UnavailableError(std::string("PostgreSQL: ") + e.what());
  }
}

void PgReplicationStore::ensure_started() {
  if (stream_) return;
  auto log = logging::get("pg");
  table_.row_states({});  // connects and takes the leader lock first
  bool slot_exists = false;
  prepare_publication_and_slot(slot_exists);
  stream_ = std::make_unique<ReplicationConnection>(conninfo_);
  if (!slot_exists) {
    log->info(
        "creating replication slot {}: PostgreSQL first waits for the transactions open "
        "now to end",
        options_.slot_name);
    int waited = 0;
    Lsn at = stream_->create_slot(options_.slot_name, stopping_, [&] {
      if (++waited % 10 == 0) {
        log->warn(
            "still creating replication slot {} after {} s: a transaction open since "
            "before the relay started has not ended (see pg_stat_activity)",
            options_.slot_name, waited);
      }
    });
    log->info("created replication slot {} at {}", options_.slot_name, at.to_string());
  }
  draining_ = true;
  drain_started_ = std::chrono::steady_clock::now();
  log->info("publishing rows pending in outbox.events before streaming from slot {}",
            options_.slot_name);
}

void PgReplicationStore::start_stream() {
  if (streaming_) return;
  stream_->start(options_.slot_name, options_.publication_name);
  streaming_ = true;
  last_report_ = std::chrono::steady_clock::now();
  logging::get("pg")->info("streaming from replication slot {} (publication {})",
                           options_.slot_name, options_.publication_name);
}

std::vector<core::OutboxEvent> PgReplicationStore::begin_batch(
    std::size_t limit, std::size_t max_bytes, const std::vector<std::string>& skip_topics) {
  return guarded([&] {
    ensure_started();
    if (draining_) {
      std::vector<core::OutboxEvent> events = table_.begin_batch(limit, max_bytes, skip_topics);
      drain_batch_open_ = true;
      // The slot's consistent point comes a moment before the transactions that committed
      // just ahead of it are visible to other sessions (the same window as in
      // visible_row_states): keep draining until a read started well after it.
      bool settled = std::chrono::steady_clock::now() - drain_started_ >= kDrainSettle;
      std::size_t bytes = 0;
      for (const auto& e : events) bytes += core::event_bytes(e);
      drain_done_after_batch_ = events.size() < limit && bytes < max_bytes && settled;
      drain_batch_empty_ = events.empty();
      return events;
    }
    start_stream();
    // Rows of skipped topics wait in parked_ in arrival order (their events unresolved, so
    // the confirmed position stays before them); once their topic is no longer skipped they
    // come first, before anything newer of that topic.
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
    // The stream is read only as far as the batch needs (rows and bytes), and not at all
    // while too many rows are parked: memory stays bounded whatever the size of a
    // transaction or of its rows.
    while (batch_.size() < limit && bytes < max_bytes && parked_.size() < limit) {
      if (!queued_.empty()) {
        take(std::move(queued_.front()));
        queued_.pop_front();
        continue;
      }
      auto frame = stream_->read(std::chrono::milliseconds(0));
      if (!frame) break;
      handle(*frame);
    }
    // Rows already published (by the drain, or before a crash) or dead-lettered are dropped.
    std::vector<core::OutboxEvent> events;
    if (!batch_.empty()) {
      auto states = visible_row_states();
      std::vector<Queued> kept;
      for (auto& q : batch_) {
        auto it = states.find(q.event.id);
        // Not found: deleted since (retention); the stream has the whole row, publish it.
        if (it == states.end() || it->second) {
          events.push_back(q.event);
          kept.push_back(std::move(q));
        } else {
          tracker_.resolve(q.txn);
        }
      }
      batch_ = std::move(kept);
    }
    confirmed_ = std::max(confirmed_, Lsn{tracker_.confirmable()});
    report_if_due();
    return events;
  });
}

std::unordered_map<std::int64_t, bool> PgReplicationStore::visible_row_states() {
  // The walsender may send a transaction a moment before its commit is visible to other
  // sessions (the commit record is flushed before the committing backend leaves the proc
  // array). A row that is not visible yet must not be taken for "already marked", and must
  // be visible before it is marked, so wait briefly for every row of the batch to show.
  std::vector<std::int64_t> ids;
  for (const auto& q : batch_) ids.push_back(q.event.id);
  auto states = table_.row_states(ids);
  auto deadline = std::chrono::steady_clock::now() + kVisibilityWait;
  while (states.size() < ids.size() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::vector<std::int64_t> missing;
    for (auto id : ids) {
      if (!states.count(id)) missing.push_back(id);
    }
    for (const auto& [id, pending] : table_.row_states(missing)) states[id] = pending;
  }
  return states;
}

void PgReplicationStore::finish_batch(const core::BatchOutcome& outcome) {
  guarded([&] {
    if (drain_batch_open_) {
      drain_batch_open_ = false;
      table_.finish_batch(outcome);
      if (drain_done_after_batch_) draining_ = false;
      return;
    }
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
  });
}

void PgReplicationStore::record_outcome(const core::BatchOutcome& outcome) {
  guarded([&] { table_.record_outcome(outcome); });
}

void PgReplicationStore::abort_batch() noexcept {
  if (drain_batch_open_) {
    drain_batch_open_ = false;
    table_.abort_batch();
    if (drain_batch_empty_ && drain_done_after_batch_) draining_ = false;  // drain done
    return;
  }
  for (auto& q : batch_) retained_.push_back(std::move(q));
  batch_.clear();
}

bool PgReplicationStore::wait_for_rows(std::chrono::milliseconds timeout) {
  return guarded([&] {
    ensure_started();
    if (draining_) {
      std::this_thread::sleep_for(std::min(timeout, std::chrono::milliseconds(50)));
      return true;
    }
    start_stream();
    if (!retained_.empty() || !queued_.empty()) return true;
    auto now = std::chrono::steady_clock::now();
    if (tracker_.idle() && now - last_report_ >= options_.heartbeat_interval) {
      // Heartbeat: ask for the server's position; with nothing pending it is confirmed, so
      // the slot advances (and WAL is freed) while other tables are busy and the outbox idle.
      report(/*reply=*/true);
    }
    auto frame = stream_->read(timeout);
    while (frame) {
      handle(*frame);
      if (!queued_.empty()) break;
      frame = stream_->read(std::chrono::milliseconds(0));
    }
    report_if_due();
    return !queued_.empty();
  });
}

void PgReplicationStore::keep_alive() noexcept {
  if (!streaming_ || !stream_) return;
  if (std::chrono::steady_clock::now() - last_report_ < options_.status_interval) return;
  try {
    report(false);  // no reading here: the stream waits in the socket, memory stays bounded
  } catch (...) {
    // The connection is gone; the next read says so and the stream is re-opened.
  }
}

void PgReplicationStore::handle(const std::string& frame) {
  auto decoded = decode_copy_data(frame);
  if (auto* keepalive = std::get_if<Keepalive>(&decoded)) {
    received_ = std::max(received_, keepalive->end);
    if (tracker_.idle()) confirmed_ = std::max(confirmed_, keepalive->end);
    if (keepalive->reply_requested) report(false);
    return;
  }
  const XLogData& data = std::get<XLogData>(decoded);
  received_ = std::max(received_, data.start);
  PgOutputMessage message = decode_pgoutput(data.payload);
  if (std::holds_alternative<Begin>(message)) {
    tracker_.begin();
  } else if (auto* commit = std::get_if<Commit>(&message)) {
    tracker_.commit(commit->end_lsn.value);
    received_ = std::max(received_, commit->end_lsn);
    confirmed_ = std::max(confirmed_, Lsn{tracker_.confirmable()});
  } else if (auto* relation = std::get_if<Relation>(&message)) {
    relations_.update(std::move(*relation));
  } else if (auto* insert = std::get_if<Insert>(&message)) {
    on_insert(*insert);
  } else if (auto* truncate = std::get_if<Truncate>(&message)) {
    logging::get("pg")->warn("TRUNCATE of {} published tables seen in the stream; ignored",
                             truncate->relation_oids.size());
  }
  // Origin, Type, Update, Delete and logical messages carry no outbox rows.
}

void PgReplicationStore::on_insert(const Insert& insert) {
  const Relation& relation = relations_.get(insert.relation_oid);
  if (relation.schema != "outbox" || relation.name != "events") return;
  core::OutboxEvent e;
  e.id = parse_number<std::int64_t>(required_text(relation, insert, "id"), "id");
  e.event_id = required_text(relation, insert, "event_id");
  e.topic = required_text(relation, insert, "topic");
  if (auto key = column_text(relation, insert, "key")) e.key = std::string(*key);
  if (auto payload = column_text(relation, insert, "payload")) {
    e.payload = decode_bytea_hex(*payload);
  }
  if (auto headers = column_text(relation, insert, "headers")) e.headers_json = *headers;
  if (auto attempts = column_text(relation, insert, "attempts")) {
    e.attempts = parse_number<int>(*attempts, "attempts");
  }
  queued_.push_back({std::move(e), tracker_.add_event()});
}

void PgReplicationStore::report(bool reply) {
  Lsn written = std::max(received_, confirmed_);
  stream_->send_status(written, confirmed_, reply);
  reported_ = confirmed_;
  last_report_ = std::chrono::steady_clock::now();
}

void PgReplicationStore::report_if_due() {
  if (!streaming_) return;
  auto now = std::chrono::steady_clock::now();
  if (confirmed_ > reported_ || now - last_report_ >= options_.status_interval) report(false);
}

}  // namespace outbox::pg
