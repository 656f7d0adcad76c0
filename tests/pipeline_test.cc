// The in-flight window of the relay loop (core/batch_relay.h), at_least_once, against the
// fakes: a store that reads ahead and a publisher that answers only when
// polled, holding back whatever its `stuck` predicate names (a partition without a leader).
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>

#include "core/batch_relay.h"
#include "fakes.h"

using namespace outbox;
using namespace outbox::core;
using outbox::testing::FakeClock;
using outbox::testing::FakePublisher;
using outbox::testing::FakeStore;
using std::chrono::milliseconds;

namespace {

constexpr std::int64_t kByState = std::numeric_limits<std::int64_t>::min();

BatchRelayOptions window(std::size_t batch, std::size_t rows, std::size_t bytes = 1 << 20) {
  BatchRelayOptions o;
  o.batch_size = batch;
  o.max_in_flight_rows = rows;
  o.max_in_flight_bytes = bytes;
  o.backoff_initial = milliseconds(100);
  o.backoff_max = milliseconds(400);
  o.shutdown_timeout = milliseconds(1000);
  return o;
}

std::int64_t id_of(const Message& m) { return std::stoll(m.headers.at(1).second); }

std::vector<std::int64_t> sent_ids(const FakePublisher& kafka) {
  std::vector<std::int64_t> ids;
  for (const auto& m : kafka.sent) ids.push_back(id_of(m));
  return ids;
}

struct Rig {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  std::atomic<bool> stop{false};
  Rig() {
    kafka.clock = &clock;                     // an unanswered poll lets time pass
    store.on_wait = [this] { stop = true; };  // idle: everything read was handled
  }
};

}  // namespace

TEST_CASE("reading overlaps the wait for answers, and marks come in groups in id order",
          "[pipeline]") {
  Rig r;
  for (int i = 0; i < 10; ++i) r.store.add("orders", "k" + std::to_string(i % 3));
  // Kafka answers nothing until all ten were handed over.
  r.kafka.stuck = [&](const Message&) { return r.kafka.sent.size() < 10; };
  BatchRelay relay(r.store, r.kafka, r.clock, window(2, 100));

  CHECK(relay.run(r.stop) == 0);

  CHECK(r.kafka.max_unanswered == 10);  // five reads in flight at once
  CHECK(r.store.reads_after >= 4);
  CHECK(r.store.read_log.front() == kByState);
  CHECK(sent_ids(r.kafka) == std::vector<std::int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
  CHECK(r.store.pending() == 0);
  std::vector<std::int64_t> marked;
  for (const auto& g : r.store.groups) marked.insert(marked.end(), g.begin(), g.end());
  CHECK(marked == std::vector<std::int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
  CHECK(r.store.groups.size() < 10);  // grouped, not one statement per row
  CHECK(relay.counters().published == 10);
}

TEST_CASE("the window bounds the rows in flight", "[pipeline]") {
  Rig r;
  for (int i = 0; i < 50; ++i) r.store.add("orders", "k");
  int polls = 0;
  r.kafka.stuck = [&](const Message&) {
    if (++polls > 20) r.stop = true;
    return true;  // nothing is ever acknowledged
  };
  BatchRelay relay(r.store, r.kafka, r.clock, window(5, 12));

  std::size_t abandoned = relay.run(r.stop);

  CHECK(r.kafka.max_unanswered == 12);  // 5 by state, 5 and 2 read ahead, then no more
  CHECK(r.kafka.sent.size() == 12);
  CHECK(r.kafka.purges == 1);  // shutdown: the rest was purged...
  CHECK(abandoned == 12);
  CHECK(r.store.pending() == 50);  // ...and stays pending
}

TEST_CASE("the window bounds the bytes in flight", "[pipeline]") {
  Rig r;
  // Each row weighs 2 ("p1".."p9" payload) + 1 (key) + 2 ("{}") = 5 bytes.
  for (int i = 0; i < 9; ++i) r.store.add("orders", "k");
  int polls = 0;
  r.kafka.stuck = [&](const Message&) {
    if (++polls > 20) r.stop = true;
    return true;
  };
  BatchRelay relay(r.store, r.kafka, r.clock, window(2, 100, 12));

  relay.run(r.stop);

  // 2 rows (10 bytes) by state, then one more read ahead (the first row always comes): 15
  // bytes unanswered reach 12, so no more.
  CHECK(r.kafka.max_unanswered == 3);
}

TEST_CASE("a stuck partition holds only its own rows: the others are acknowledged and marked",
          "[pipeline]") {
  Rig r;
  for (int i = 0; i < 20; ++i) r.store.add("orders", i % 2 == 0 ? "stuck" : "fine");
  bool stuck = true;
  r.kafka.stuck = [&](const Message& m) { return stuck && m.key == "stuck"; };
  BatchRelay relay(r.store, r.kafka, r.clock, window(4, 100));
  r.store.on_wait = nullptr;
  int fine_marked_polls = 0;
  r.kafka.on_publish = [&] {};
  // Stop a while after every "fine" row was marked, the stuck ones still unanswered.
  r.kafka.stuck = [&](const Message& m) {
    if (r.store.pending() == 10 && ++fine_marked_polls > 3) r.stop = true;
    return stuck && m.key == "stuck";
  };

  std::size_t abandoned = relay.run(r.stop);

  for (std::int64_t id = 1; id <= 20; ++id) {
    INFO("row " << id);
    CHECK(r.store.row(id).published == (id % 2 == 0));  // even ids are "fine"
  }
  CHECK(abandoned == 10);  // purged at shutdown, pending again
  CHECK(r.kafka.sent.size() == 20);
}

TEST_CASE("a stuck partition stops the read-ahead once the window is full", "[pipeline]") {
  Rig r;
  for (int i = 0; i < 40; ++i) r.store.add("orders", i % 2 == 0 ? "stuck" : "fine");
  int polls = 0;
  r.kafka.stuck = [&](const Message& m) {
    if (++polls > 200) r.stop = true;
    return m.key == "stuck";
  };
  r.store.on_wait = nullptr;
  BatchRelay relay(r.store, r.kafka, r.clock, window(4, 8));

  relay.run(r.stop);

  // The oldest unanswered row (1) holds the window's front: 8 rows at most were read past
  // it, of which the four "fine" ones were acknowledged and marked.
  CHECK(r.kafka.sent.size() == 8);
  CHECK(r.store.pending() == 40 - 4);
  for (std::int64_t id : {2, 4, 6, 8}) CHECK(r.store.row(id).published);
}

TEST_CASE("a row committing late with a smaller id is read by the next read by state",
          "[pipeline]") {
  Rig r;
  for (std::int64_t id : {1, 2, 4, 5, 6, 7, 8, 9}) r.store.add_late(id, "orders", "k");
  bool added = false;
  std::map<std::int64_t, int> polls_seen;
  r.kafka.stuck = [&](const Message& m) {
    if (!added && id_of(m) == 4) {  // row 3's transaction commits while 4 is in flight
      r.store.add_late(3, "orders", "k");
      added = true;
    }
    return ++polls_seen[id_of(m)] < 2;  // Kafka lags: answered at the second poll
  };
  BatchRelay relay(r.store, r.kafka, r.clock, window(2, 100));

  relay.run(r.stop);

  CHECK(r.store.reads_after > 0);   // read-ahead was on...
  CHECK(r.store.row(3).published);  // ...and a read by state after the drain found row 3
  CHECK(r.store.pending() == 0);
  auto ids = sent_ids(r.kafka);
  CHECK(std::count(ids.begin(), ids.end(), 3) == 1);
}

TEST_CASE("a late transaction with rows on both sides of the last id read goes in id order",
          "[pipeline]") {
  Rig r;
  for (std::int64_t id = 1; id <= 8; ++id) r.store.add_late(id * 2, "orders", "k");  // 2..16
  bool added = false;
  std::map<std::int64_t, int> polls_seen;
  r.kafka.stuck = [&](const Message& m) {
    if (!added && id_of(m) == 6) {
      // One transaction holding 5 (below the ids read so far) and 17 (above them) commits.
      r.store.add_late(5, "orders", "k");
      r.store.add_late(17, "orders", "k");
      added = true;
    }
    return ++polls_seen[id_of(m)] < 2;
  };
  BatchRelay relay(r.store, r.kafka, r.clock, window(2, 100));

  relay.run(r.stop);

  CHECK(r.store.late_refusals >= 1);  // read-ahead saw the late row below and stood back
  auto ids = sent_ids(r.kafka);
  auto five = std::find(ids.begin(), ids.end(), 5);
  auto seventeen = std::find(ids.begin(), ids.end(), 17);
  REQUIRE(five != ids.end());
  REQUIRE(seventeen != ids.end());
  CHECK(five < seventeen);  // the key's order is id order, within the late transaction too
  CHECK(std::is_sorted(ids.begin(), five));
  CHECK(r.store.pending() == 0);
}

TEST_CASE(
    "after a failed delivery, nothing is read ahead: the window drains, then a read "
    "by state from the oldest pending row",
    "[pipeline]") {
  Rig r;
  for (int i = 0; i < 10; ++i) r.store.add("orders", "k" + std::to_string(i % 2));
  r.kafka.once[3] = {false, FailureKind::transient, "Kafka: Local: Broker transport failure"};
  // Hold row 4 (key k1) for a while so that the failure of 3 arrives with 4 in flight.
  int holds = 0;
  r.kafka.stuck = [&](const Message& m) { return id_of(m) == 4 && ++holds < 5; };
  BatchRelay relay(r.store, r.kafka, r.clock, window(2, 100));

  relay.run(r.stop);

  auto ids = sent_ids(r.kafka);
  // 3 failed: nothing more was read until 4 was answered; then a pause (backoff) and a read
  // by state that starts at 3.
  auto first3 = std::find(ids.begin(), ids.end(), 3);
  auto again3 = std::find(first3 + 1, ids.end(), 3);
  REQUIRE(again3 != ids.end());
  CHECK(std::count(first3 + 1, again3, 4) == 1);
  CHECK(std::all_of(first3 + 1, again3, [](std::int64_t id) { return id <= 4; }));
  CHECK(r.clock.sleeps == std::vector<milliseconds>{milliseconds(100)});
  // The read that returned 3 again was by state.
  std::size_t state_reads_before_end = 0;
  for (auto after : r.store.read_log) state_reads_before_end += after == kByState;
  CHECK(state_reads_before_end >= 2);
  CHECK(r.store.pending() == 0);
  CHECK(r.store.row(3).event.attempts == 0);  // the cluster's fault, not the row's
}

TEST_CASE("suspects are sent alone even when reading ahead", "[pipeline]") {
  Rig r;
  std::vector<std::int64_t> ids;
  for (int i = 0; i < 8; ++i) ids.push_back(r.store.add("orders", "k"));
  r.kafka.too_large_in_company = {ids[1], ids[5]};
  r.kafka.too_large_alone = {ids[5]};
  BatchRelay relay(r.store, r.kafka, r.clock, window(4, 100));

  relay.run(r.stop);

  CHECK(r.store.row(ids[1]).published);
  CHECK(r.store.row(ids[5]).dead);
  CHECK_THAT(r.store.row(ids[5]).last_error, Catch::Contains("sent alone"));
  CHECK(r.store.pending() == 0);
}

TEST_CASE("rows committed while a short read waits for Kafka are read ahead at its answers",
          "[pipeline]") {
  // Steady traffic reads short batches. Before, a row committed just after a short read
  // waited for that read to be acknowledged and marked before it was read (a whole cycle of
  // latency); now each answer lets the relay look for new rows above the last one read.
  Rig r;
  for (int i = 0; i < 3; ++i) r.store.add("orders", i == 0 ? "a" : "slow");
  bool added = false;
  int polls = 0;  // (bounded, so that the relay without read-ahead ends too, and fails below)
  r.kafka.stuck = [&](const Message& m) {
    return m.key == "slow" && r.kafka.sent.size() < 5 && ++polls < 50;
  };
  r.kafka.on_publish = [&] {  // row 1 answered: two more rows commit
    if (added) return;
    added = true;
    r.store.add("orders", "b");
    r.store.add("orders", "c");
  };
  BatchRelay relay(r.store, r.kafka, r.clock, window(10, 100));

  relay.run(r.stop);

  CHECK(sent_ids(r.kafka) == std::vector<std::int64_t>{1, 2, 3, 4, 5});
  CHECK(r.kafka.max_unanswered == 4);  // 4 and 5 joined 2 and 3, still unanswered
  CHECK(r.store.pending() == 0);
}

TEST_CASE("answers trickling into a full window are marked in groups and not one by one",
          "[pipeline]") {
  // A drain keeps the window full; Kafka answers a few messages per poll. Before, each poll's
  // answers were marked at once (a statement and a commit each); now a group gathers up to a
  // batch while more answers are due (kGroupWait bounds it in time).
  Rig r;
  for (int i = 0; i < 20; ++i) r.store.add("orders", "k" + std::to_string(i));
  std::int64_t released = 1;
  r.kafka.stuck = [&](const Message& m) { return id_of(m) > released; };
  r.kafka.on_publish = [&] { ++released; };  // one answer per poll
  BatchRelay relay(r.store, r.kafka, r.clock, window(10, 10));

  relay.run(r.stop);

  CHECK(r.store.pending() == 0);
  CHECK(r.store.groups.size() <= 4);  // was 20
}

TEST_CASE("a suspect sent alone stays alone until Kafka answered it", "[pipeline]") {
  // Before: once the suspect was read alone, read-ahead went on while it waited for its
  // answer, so it was never alone (with a real broker: the fatal gap-less error it caused
  // purged the rows read after it, which a fresh producer id had written: duplicates), and
  // it was sent again and again instead of being dead-lettered.
  Rig r;
  std::vector<std::int64_t> ids;
  for (int i = 0; i < 8; ++i) ids.push_back(r.store.add("orders", "k" + std::to_string(i)));
  r.kafka.too_large_in_company = {ids[5]};
  r.kafka.too_large_alone = {ids[5]};
  for (int i = 6; i < 8; ++i) {  // purged with it the first time (librdkafka's fatal error)
    r.kafka.once[ids[i]] = {false, FailureKind::transient, "Kafka: purged"};
  }
  int polls_of_suspect = 0, sends_of_suspect = 0;
  r.kafka.stuck = [&](const Message& m) {  // Kafka takes two polls to answer the suspect
    return id_of(m) == ids[5] && ++polls_of_suspect % 2 == 1;
  };
  r.kafka.on_send = [&](const Message& m) {
    if (id_of(m) == ids[5] && ++sends_of_suspect > 4) r.stop = true;  // bound the bug's loop
  };
  BatchRelay relay(r.store, r.kafka, r.clock, window(4, 100));

  relay.run(r.stop);

  CHECK(sends_of_suspect == 2);  // once in company, once alone
  CHECK(r.store.row(ids[5]).dead);
  CHECK_THAT(r.store.row(ids[5]).last_error, Catch::Contains("sent alone"));
  CHECK(r.store.pending() == 0);
}

TEST_CASE("shutdown waits for what is in flight, marks the acknowledged, purges the rest",
          "[pipeline]") {
  Rig r;
  auto a = r.store.add("orders", "a");
  auto b = r.store.add("orders", "b");
  auto c = r.store.add("orders", "a");
  int polls = 0;
  r.kafka.stuck = [&](const Message& m) {
    if (++polls == 3) r.stop = true;
    return m.key == "b";
  };
  auto o = window(10, 100);
  o.shutdown_timeout = milliseconds(500);
  BatchRelay relay(r.store, r.kafka, r.clock, o);

  std::size_t abandoned = relay.run(r.stop);

  CHECK(r.store.row(a).published);
  CHECK(r.store.row(c).published);
  CHECK_FALSE(r.store.row(b).published);
  CHECK(r.store.row(b).event.attempts == 0);
  CHECK(r.kafka.purges == 1);
  CHECK(abandoned == 1);
}

TEST_CASE("an outcome that cannot be recorded is retried alone: nothing read, nothing re-sent",
          "[pipeline]") {
  Rig r;
  for (int i = 0; i < 6; ++i) r.store.add("orders", "k");
  r.store.fail_record = 3;
  BatchRelay relay(r.store, r.kafka, r.clock, window(2, 100));

  relay.run(r.stop);

  CHECK(r.store.pending() == 0);
  CHECK(r.kafka.sent.size() == 6);  // each message once
  // The failed attempts and the one that succeeded came with no read in between.
  REQUIRE(r.store.reads_at_record.size() >= 4);
  CHECK(r.store.reads_at_record[0] == r.store.reads_at_record[3]);
  CHECK(r.clock.sleeps.size() == 3);  // backing off between the attempts
  CHECK(r.clock.sleeps[1] > r.clock.sleeps[0]);
  CHECK(relay.counters().published == 6);
}

TEST_CASE("the observer ticks at least every second while Kafka keeps a message waiting",
          "[pipeline]") {
  struct Ticks : RelayObserver {
    FakeClock* clock;
    std::chrono::steady_clock::time_point last{};
    std::chrono::nanoseconds longest{0};
    std::size_t deliveries = 0, recorded = 0, reads = 0;
    void on_tick() noexcept override {
      longest = std::max(longest, clock->now() - last);
      last = clock->now();
    }
    void on_delivery(const std::string&, bool, FailureKind,
                     std::chrono::nanoseconds) noexcept override {
      ++deliveries;
    }
    void on_recorded(std::size_t p, std::size_t, std::size_t,
                     std::chrono::nanoseconds) noexcept override {
      recorded += p;
    }
    void on_read(std::size_t rows, std::size_t, std::chrono::nanoseconds) noexcept override {
      reads += rows;
    }
  } ticks;
  Rig r;
  ticks.clock = &r.clock;
  for (int i = 0; i < 3; ++i) r.store.add("orders", "k");
  int polls = 0;
  r.kafka.stuck = [&](const Message&) { return ++polls < 100; };  // 10 s of fake time
  BatchRelay relay(r.store, r.kafka, r.clock, window(10, 100));
  relay.set_observer(&ticks);

  relay.run(r.stop);

  CHECK(ticks.longest <= std::chrono::seconds(1));
  CHECK(ticks.deliveries == 3);
  CHECK(ticks.recorded == 3);
  CHECK(ticks.reads == 3);
}

// Regression: the first read asked the cluster about each unseen topic in turn (up to 10 s
// each when no broker answers) without ticking health, so many topics failed /healthz.
TEST_CASE("asking the cluster about unseen topics ticks health and is bounded per read",
          "[pipeline][regression]") {
  struct Ticks : RelayObserver {
    FakeClock* clock;
    std::chrono::steady_clock::time_point last{};
    std::chrono::nanoseconds longest{0};
    void on_tick() noexcept override {
      longest = std::max(longest, clock->now() - last);
      last = clock->now();
    }
  } ticks;
  Rig r;
  ticks.clock = &r.clock;
  r.store.on_wait = [&r] {  // an idle wait's slice, with no hint
    r.clock.advance(milliseconds(200));
    r.stop = r.store.pending() == 0;
  };
  for (int i = 0; i < 20; ++i) r.store.add("topic" + std::to_string(i), "k" + std::to_string(i));
  // No broker answers: each metadata request waits its whole bound (the publisher's, 1 s).
  std::map<std::size_t, int> asks_by_read;  // read number -> topics asked in it
  r.kafka.on_ask = [&r, &asks_by_read](const std::string&) {
    ++asks_by_read[r.store.read_log.size()];
    r.clock.advance(milliseconds(1000));
  };
  BatchRelay relay(r.store, r.kafka, r.clock, window(100, 1000));
  relay.set_observer(&ticks);

  relay.run(r.stop);

  CHECK(ticks.longest <= std::chrono::seconds(1));
  for (const auto& [read, asks] : asks_by_read) {
    INFO("read " << read);
    CHECK(asks == 1);  // the asking stops once a read's asks took TopicGate's bound (1 s)
  }
  CHECK(r.kafka.asked.size() == 20);  // each topic asked once, none skipped unasked
  CHECK(r.store.pending() == 0);      // every row sent, in the end, none dead-lettered
  for (std::int64_t id = 1; id <= 20; ++id) CHECK_FALSE(r.store.row(id).dead);
}

namespace {
struct VanishedSeen : RelayObserver {
  std::size_t vanished = 0, recorded = 0;
  void on_vanished(std::size_t n) noexcept override { vanished += n; }
  void on_recorded(std::size_t p, std::size_t, std::size_t,
                   std::chrono::nanoseconds) noexcept override {
    recorded += p;
  }
};
}  // namespace

// Regression: a row deleted between Kafka's acknowledgement and its mark wedged the relay (the
// mark matched fewer rows than given, was retried forever, nothing else was read).
TEST_CASE("a row gone before its mark is reported and the relay goes on",
          "[pipeline][regression]") {
  Rig r;
  for (int i = 0; i < 6; ++i) r.store.add("orders", "k" + std::to_string(i % 2));
  bool deleted = false;
  r.kafka.on_publish = [&] {  // Kafka acknowledged row 2; it is deleted before its mark
    if (deleted) return;
    deleted = true;
    r.store.erase(2);
    r.store.add("orders", "k0");  // written meanwhile: it must not wait on the gone row
  };
  VanishedSeen seen;
  BatchRelay relay(r.store, r.kafka, r.clock, window(3, 100));
  relay.set_observer(&seen);

  relay.run(r.stop);

  CHECK(r.store.pending() == 0);
  CHECK(r.kafka.sent.size() == 7);  // each message once, the gone row's included
  CHECK(relay.counters().vanished == 1);
  CHECK(seen.vanished == 1);
  CHECK(seen.recorded == 6);      // the gone row is not counted as marked
  CHECK(r.clock.sleeps.empty());  // no failed mark, no backoff
  auto gone = r.store.take_vanished();
  CHECK(gone.empty());  // the relay took and reported it
}

// Regression: after the id sequence rewound (a restore), a mark by id alone marked another
// event's row as published although Kafka acknowledged a different one.
TEST_CASE("an id that names another event when marked is gone for the acknowledged one",
          "[pipeline][regression]") {
  Rig r;
  for (int i = 0; i < 3; ++i) r.store.add("orders", "k");
  bool reused = false;
  r.kafka.on_publish = [&] {  // row 2 is gone and a new event took its id: it is pending
    if (!reused) r.store.reuse(2, "orders", "k");
    reused = true;
  };
  VanishedSeen seen;
  BatchRelay relay(r.store, r.kafka, r.clock, window(3, 100));
  relay.set_observer(&seen);

  relay.run(r.stop);

  CHECK(r.store.pending() == 0);
  REQUIRE(r.kafka.sent.size() == 4);  // the new event with id 2 is sent in its own right
  CHECK(id_of(r.kafka.sent[3]) == 2);
  CHECK(r.kafka.sent[3].headers.at(0).second == "evt-2-again");
  CHECK(r.kafka.sent[1].headers.at(0).second == "evt-2");
  CHECK(r.store.row(2).published);
  CHECK(seen.vanished == 1);
  CHECK(relay.counters().vanished == 1);
}
