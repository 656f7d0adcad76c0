// In-memory stand-ins for the seams of core/: an outbox table, a Kafka, a clock.
#pragma once

#include <algorithm>
#include <atomic>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include "core/batch_relay.h"
#include "core/ports.h"

namespace outbox::testing {

//! Rows in memory, read and recorded as the PostgreSQL stores do (reads hold nothing).
class FakeStore : public core::OutboxStore {
 public:
  struct Row {
    core::OutboxEvent event;
    bool published = false;
    bool dead = false;
    std::string last_error;
  };

  std::int64_t add(std::string topic, std::string key, std::string headers = "{}") {
    Row r;
    r.event.id = next_id_++;
    r.event.event_id = "evt-" + std::to_string(r.event.id);
    r.event.topic = std::move(topic);
    r.event.key = std::move(key);
    r.event.payload = "p" + std::to_string(r.event.id);
    r.event.headers_json = std::move(headers);
    rows_[r.event.id] = r;
    return r.event.id;
  }

  //! A row whose transaction commits only now, with an id below rows already read.
  std::int64_t add_late(std::int64_t id, std::string topic, std::string key) {
    Row r;
    r.event.id = id;
    r.event.event_id = "evt-" + std::to_string(id);
    r.event.topic = std::move(topic);
    r.event.key = std::move(key);
    r.event.payload = "p" + std::to_string(id);
    r.event.headers_json = "{}";
    rows_[id] = r;
    return id;
  }

  std::vector<core::OutboxEvent> begin_batch(std::size_t limit, std::size_t max_bytes,
                                             const std::vector<std::string>& skip) override {
    ++begins;
    return read(std::numeric_limits<std::int64_t>::min(), limit, max_bytes, skip);
  }

  std::vector<core::OutboxEvent> read_after(std::int64_t after_id, std::size_t pending_upto,
                                            std::size_t limit, std::size_t max_bytes,
                                            const std::vector<std::string>& skip) override {
    ++reads_after;
    std::size_t pending = 0;
    for (const auto& [id, r] : rows_) {
      if (id <= after_id && !r.published && !r.dead &&
          std::find(skip.begin(), skip.end(), r.event.topic) == skip.end()) {
        ++pending;
      }
    }
    if (pending != pending_upto) {  // a row committed late below after_id
      ++late_refusals;
      read_log.push_back(after_id);
      return {};
    }
    return read(after_id, limit, max_bytes, skip);
  }

  std::vector<core::OutboxEvent> read(std::int64_t after_id, std::size_t limit,
                                      std::size_t max_bytes, const std::vector<std::string>& skip) {
    last_skip = skip;
    read_log.push_back(after_id);
    if (fail_begin > 0) {
      --fail_begin;
      throw core::UnavailableError("PostgreSQL: connection refused");
    }
    std::vector<core::OutboxEvent> out;
    std::size_t bytes = 0;
    for (auto& [id, r] : rows_) {
      if (id <= after_id) continue;
      if (r.published || r.dead) continue;
      if (std::find(skip.begin(), skip.end(), r.event.topic) != skip.end()) continue;
      if (out.size() >= limit || bytes >= max_bytes) break;
      bytes += core::event_bytes(r.event);
      out.push_back(r.event);
    }
    return out;
  }

  void record_outcome(const core::BatchOutcome& outcome) override {
    ++records;
    reads_at_record.push_back(read_log.size());
    if (fail_record > 0) {
      --fail_record;
      throw core::UnavailableError("PostgreSQL: permission denied for table events");
    }
    apply(outcome);
    groups.push_back(outcome.published);
  }

  //! As PgOutboxStore: a row matches by id and, where the outcome names its event, by event
  //! id; a row gone (no row, or another event has the id) is kept for take_vanished().
  void apply(const core::BatchOutcome& outcome) {
    std::vector<core::VanishedRow> gone;
    auto present = [&](std::int64_t id, bool acknowledged) -> Row* {
      auto it = rows_.find(id);
      auto known = outcome.rows.find(id);
      core::VanishedRow v;
      v.id = id;
      v.acknowledged = acknowledged;
      v.recorded = true;
      if (known != outcome.rows.end()) {
        v.event_id = known->second.event_id;
        v.topic = known->second.topic;
      }
      if (it != rows_.end() && (v.event_id.empty() || it->second.event.event_id == v.event_id)) {
        return &it->second;
      }
      if (it != rows_.end()) v.reused_by = it->second.event.event_id;
      gone.push_back(std::move(v));
      return nullptr;
    };
    for (auto id : outcome.published) {
      if (Row* r = present(id, true)) r->published = true;
    }
    for (const auto& f : outcome.retry) {
      if (Row* r = present(f.id, false)) {
        r->event.attempts++;
        r->last_error = f.error;
      }
    }
    for (const auto& f : outcome.dead_letter) {
      if (Row* r = present(f.id, false)) {
        r->event.attempts++;
        r->last_error = f.error;
        r->dead = true;
      }
    }
    for (auto& v : gone) vanished_.push_back(std::move(v));
  }

  std::vector<core::VanishedRow> take_vanished() override {
    std::vector<core::VanishedRow> out;
    out.swap(vanished_);
    return out;
  }

  //! The row is gone (deleted, or the database went back in time).
  void erase(std::int64_t id) { rows_.erase(id); }
  //! Another event takes the id (the id sequence rewound); it is pending.
  void reuse(std::int64_t id, std::string topic, std::string key) {
    erase(id);
    add_late(id, std::move(topic), std::move(key));
    rows_.at(id).event.event_id = "evt-" + std::to_string(id) + "-again";
  }

  bool wait_for_rows(std::chrono::milliseconds) override {
    ++waits;
    if (on_wait) on_wait();
    return false;
  }

  void keep_alive() noexcept override { ++keep_alives; }

  const Row& row(std::int64_t id) const { return rows_.at(id); }
  //! A rewind of the database (a point-in-time restore, a failover to a standby that lagged):
  //! id `id` now names another event, pending.
  void reuse_id(std::int64_t id, std::string event_id) {
    Row& r = rows_.at(id);
    r.event.event_id = std::move(event_id);
    r.event.payload = "reused " + std::to_string(id);
    r.published = r.dead = false;
  }
  std::size_t pending() const {
    return std::count_if(rows_.begin(), rows_.end(),
                         [](const auto& kv) { return !kv.second.published && !kv.second.dead; });
  }

  std::vector<std::vector<std::int64_t>> groups;  //!< published ids of each record_outcome
  int reads_after = 0;
  int late_refusals = 0;  //!< read_after found a row committed late below its id
  //! Every read: the id it read after (the smallest int64 for a read by state).
  std::vector<std::int64_t> read_log;
  std::vector<std::size_t> reads_at_record;  //!< read_log.size() at each record_outcome
  std::function<void()> on_wait;             //!< in wait_for_rows (the relay is idle)
  int fail_begin = 0;
  int fail_record = 0;
  std::vector<std::string> last_skip;
  int begins = 0;
  std::atomic<int> records{0};
  std::atomic<int> waits{0};
  int keep_alives = 0;

 private:
  std::map<std::int64_t, Row> rows_;
  std::vector<core::VanishedRow> vanished_;
  std::int64_t next_id_ = 1;
};

//! Time moves only when someone sleeps.
class FakeClock : public core::Clock {
 public:
  std::chrono::steady_clock::time_point now() const override { return now_; }
  void sleep_for(std::chrono::milliseconds d, const std::function<bool()>&) override {
    sleeps.push_back(d);
    now_ += d;
  }
  void advance(std::chrono::milliseconds d) { now_ += d; }
  std::vector<std::chrono::milliseconds> sleeps;

 private:
  std::chrono::steady_clock::time_point now_{};
};

//! Records what was sent; results come from `script` (by outbox-id header), default ok.
//! Answers come from poll(), in the order sent; the messages sent since the last poll form
//! one "produce request". A message for which `stuck` returns true is not answered (nor,
//! like a partition, are later ones of the same key) until `stuck` says otherwise or purge().
class FakePublisher : public core::Publisher {
 public:
  void send(const core::Message& m, std::uint64_t tag) override {
    sent.push_back(m);
    if (on_send) on_send(m);
    waiting_.push_back({tag, &m, request_});
    ++in_request_;
    max_unanswered = std::max(max_unanswered, waiting_.size());
  }

  std::vector<core::Completion> poll(std::chrono::milliseconds timeout) override {
    std::vector<core::Completion> out;
    std::size_t request_size = in_request_;
    ++request_;
    in_request_ = 0;
    std::set<std::string> stuck_keys;
    std::deque<Waiting> still;
    for (auto& w : waiting_) {
      const core::Message& m = *w.message;
      std::string key = m.key.value_or("");
      bool hangs = hang && !script.count(std::stoll(m.headers.at(1).second));
      if (!purged_ && (stuck_keys.count(key) || (stuck && stuck(m)) || hangs)) {
        stuck_keys.insert(key);
        still.push_back(w);
        continue;
      }
      out.push_back({w.tag, result_for(m, request_size)});
    }
    waiting_ = std::move(still);
    purged_ = false;
    throw_next = false;
    if (out.empty() && clock != nullptr) clock->advance(timeout);
    if (!out.empty()) {
      ++calls;
      if (on_publish) on_publish();
    }
    return out;
  }

  void purge() override {
    ++purges;
    purged_ = true;
  }

  std::optional<std::string> topic_problem(const std::string& topic) override {
    asked.push_back(topic);
    if (on_ask) on_ask(topic);
    if (blocked_topics.count(topic)) return "Kafka: Broker: Unknown topic";
    return std::nullopt;
  }

  std::map<std::int64_t, core::DeliveryResult> script;
  std::map<std::int64_t, core::DeliveryResult> once;  //!< as script, for the first answer only
  std::set<std::int64_t> too_large_in_company;        //!< suspect with others, ok alone...
  std::set<std::int64_t> too_large_alone;             //!< ...unless also listed here
  std::set<std::string> blocked_topics;               //!< Kafka topics that cannot take messages
  std::vector<std::string> asked;                     //!< topic_problem calls
  std::function<void(const std::string&)> on_ask;     //!< in each topic_problem call
  std::vector<core::Message> sent;
  std::function<void()> on_publish;  //!< after a poll that answered something
  std::function<bool(const core::Message&)> stuck;
  std::function<void(const core::Message&)> on_send;  //!< after each send
  FakeClock* clock = nullptr;  //!< a poll that answers nothing lets time pass
  bool throw_next = false;     //!< the next answers are "all brokers down" (transient)
  bool hang = false;           //!< nothing unscripted is answered before purge()
  int calls = 0;
  int purges = 0;
  std::size_t max_unanswered = 0;

 private:
  struct Waiting {
    std::uint64_t tag;
    const core::Message* message;
    std::uint64_t request;
  };
  core::DeliveryResult result_for(const core::Message& m, std::size_t request_size) {
    std::int64_t id = std::stoll(m.headers.at(1).second);
    if (purged_) return {false, core::FailureKind::transient, "Kafka: purged"};
    if (throw_next) return {false, core::FailureKind::transient, "Kafka: all brokers down"};
    if (too_large_in_company.count(id)) {  // a broker refusing the whole produce request
      return request_size > 1 || too_large_alone.count(id)
                 ? core::DeliveryResult{false, core::FailureKind::suspect,
                                        "Kafka: Broker: Message size too large"}
                 : core::DeliveryResult{true, core::FailureKind::transient, ""};
    }
    if (blocked_topics.count(m.topic)) {
      return {false, core::FailureKind::topic_blocked, "Kafka: Broker: Unknown topic"};
    }
    if (auto it = once.find(id); it != once.end()) {
      auto r = it->second;
      once.erase(it);
      return r;
    }
    if (auto it = script.find(id); it != script.end()) return it->second;
    return {true, core::FailureKind::transient, ""};
  }
  std::deque<Waiting> waiting_;
  std::uint64_t request_ = 0;
  std::size_t in_request_ = 0;
  bool purged_ = false;
};

//! One cycle of the loop, seen from outside: the step that ends the previous cycle (its idle
//! wait or pause: give the options an interval of 0, or a store whose wait lets time pass),
//! then the by-state read and the steps until nothing is in flight, unrecorded, or in an open
//! transaction. Returns what the cycle came to; throws what step() throws.
inline core::BatchReport run_cycle(core::BatchRelay& relay) {
  std::atomic<bool> stop{false};
  if (relay.settled() && relay.cycle_open()) relay.step(stop);  // ends the previous cycle
  relay.step(stop);
  for (int i = 0; i < 10'000 && !relay.settled(); ++i) relay.step(stop);
  return relay.cycle();
}

}  // namespace outbox::testing
