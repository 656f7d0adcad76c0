// In-memory stand-ins for the seams of core/: an outbox table, a Kafka, a clock.
#pragma once

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <set>

#include "core/ports.h"

namespace outbox::testing {

//! Rows in memory; begin/finish/abort behave like the PostgreSQL store's transaction.
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

  std::vector<core::OutboxEvent> begin_batch(std::size_t limit, std::size_t max_bytes,
                                             const std::vector<std::string>& skip) override {
    last_skip = skip;
    ++begins;
    if (fail_begin > 0) {
      --fail_begin;
      throw core::UnavailableError("PostgreSQL: connection refused");
    }
    open_ = true;
    std::vector<core::OutboxEvent> out;
    std::size_t bytes = 0;
    for (auto& [id, r] : rows_) {
      if (r.published || r.dead) continue;
      if (std::find(skip.begin(), skip.end(), r.event.topic) != skip.end()) continue;
      if (out.size() >= limit || bytes >= max_bytes) break;
      bytes += core::event_bytes(r.event);
      out.push_back(r.event);
    }
    return out;
  }

  void finish_batch(const core::BatchOutcome& outcome) override {
    REQUIRE_OPEN();
    if (fail_finish > 0) {
      --fail_finish;
      throw core::UnavailableError("PostgreSQL: server closed the connection");
    }
    apply(outcome);
    open_ = false;
    ++finishes;
  }

  void record_outcome(const core::BatchOutcome& outcome) override {
    ++records;
    if (fail_record > 0) {
      --fail_record;
      throw core::UnavailableError("PostgreSQL: permission denied for table events");
    }
    apply(outcome);
  }

  void apply(const core::BatchOutcome& outcome) {
    for (auto id : outcome.published) rows_.at(id).published = true;
    for (const auto& f : outcome.retry) {
      rows_.at(f.id).event.attempts++;
      rows_.at(f.id).last_error = f.error;
    }
    for (const auto& f : outcome.dead_letter) {
      rows_.at(f.id).event.attempts++;
      rows_.at(f.id).last_error = f.error;
      rows_.at(f.id).dead = true;
    }
  }

  void abort_batch() noexcept override {
    open_ = false;
    ++aborts;
  }

  bool wait_for_rows(std::chrono::milliseconds) override {
    ++waits;
    return false;
  }

  void keep_alive() noexcept override { ++keep_alives; }

  const Row& row(std::int64_t id) const { return rows_.at(id); }
  std::size_t pending() const {
    return std::count_if(rows_.begin(), rows_.end(),
                         [](const auto& kv) { return !kv.second.published && !kv.second.dead; });
  }

  int fail_begin = 0;
  int fail_finish = 0;
  int fail_record = 0;
  std::vector<std::string> last_skip;
  int begins = 0, finishes = 0, aborts = 0;
  std::atomic<int> records{0};
  std::atomic<int> waits{0};
  int keep_alives = 0;

 private:
  void REQUIRE_OPEN() const {
    if (!open_) throw std::logic_error("finish_batch without begin_batch");
  }
  std::map<std::int64_t, Row> rows_;
  std::int64_t next_id_ = 1;
  bool open_ = false;
};

//! Records what was sent; results come from `script` (by outbox-id header), default ok.
class FakePublisher : public core::Publisher {
 public:
  std::vector<core::DeliveryResult> publish(const std::vector<core::Message>& messages,
                                            const std::function<bool()>& give_up) override {
    ++calls;
    if (give_up) give_up();  // as the real one polls it while it waits for reports
    if (throw_next) {
      throw_next = false;
      throw core::UnavailableError("Kafka: all brokers down");
    }
    std::vector<core::DeliveryResult> out;
    for (const auto& m : messages) {
      sent.push_back(m);
      std::int64_t id = std::stoll(m.headers.at(1).second);
      if (too_large_in_company.count(id)) {  // a broker refusing the whole produce request
        out.push_back(messages.size() > 1 || too_large_alone.count(id)
                          ? core::DeliveryResult{false, core::FailureKind::suspect,
                                                 "Kafka: Broker: Message size too large"}
                          : core::DeliveryResult{true, core::FailureKind::transient, ""});
      } else if (blocked_topics.count(m.topic)) {
        out.push_back({false, core::FailureKind::topic_blocked, "Kafka: Broker: Unknown topic"});
      } else if (auto it = script.find(id); it != script.end()) {
        out.push_back(it->second);
      } else if (hang && give_up && give_up()) {
        out.push_back({false, core::FailureKind::transient, "abandoned"});
      } else {
        out.push_back({true, core::FailureKind::transient, ""});
      }
    }
    if (on_publish) on_publish();
    return out;
  }

  std::optional<std::string> topic_problem(const std::string& topic) override {
    asked.push_back(topic);
    if (blocked_topics.count(topic)) return "Kafka: Broker: Unknown topic";
    return std::nullopt;
  }

  std::map<std::int64_t, core::DeliveryResult> script;
  std::set<std::int64_t> too_large_in_company;  //!< suspect with others, ok alone...
  std::set<std::int64_t> too_large_alone;       //!< ...unless also listed here
  std::set<std::string> blocked_topics;         //!< Kafka topics that cannot take messages
  std::vector<std::string> asked;               //!< topic_problem calls
  std::vector<core::Message> sent;
  std::function<void()> on_publish;
  bool throw_next = false;
  bool hang = false;
  int calls = 0;
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

}  // namespace outbox::testing
