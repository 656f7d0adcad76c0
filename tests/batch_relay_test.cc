#include <catch2/catch.hpp>

#include <thread>

#include "core/batch_relay.h"
#include "fakes.h"

using namespace outbox;
using namespace outbox::core;
using outbox::testing::FakeClock;
using outbox::testing::FakePublisher;
using outbox::testing::FakeStore;
using outbox::testing::run_cycle;
using std::chrono::milliseconds;

namespace {
BatchRelayOptions options(std::size_t batch = 100) {
  BatchRelayOptions o;
  o.batch_size = batch;
  o.backoff_initial = milliseconds(100);
  o.backoff_max = milliseconds(400);
  o.shutdown_timeout = milliseconds(1000);
  o.interval = milliseconds(0);  // run_cycle: no idle wait between cycles
  return o;
}
}  // namespace

TEST_CASE("acknowledged rows are marked, in id order", "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  for (int i = 0; i < 5; ++i) store.add("orders", "k" + std::to_string(i % 2));
  BatchRelay relay(store, kafka, clock, options());

  BatchReport report = run_cycle(relay);

  CHECK(report.read == 5);
  CHECK(report.published == 5);
  CHECK(store.pending() == 0);
  REQUIRE(kafka.sent.size() == 5);
  for (std::size_t i = 0; i < 5; ++i) {
    CHECK(kafka.sent[i].headers[1].second == std::to_string(i + 1));  // id order
  }
}

TEST_CASE("a row is marked only after its delivery succeeded (mark-after-ack)", "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  auto a = store.add("orders", "a");
  auto b = store.add("orders", "b");
  auto c = store.add("orders", "c");
  kafka.script[b] = {false, FailureKind::transient, "Kafka: Local: Message timed out"};
  BatchRelay relay(store, kafka, clock, options());

  BatchReport report = run_cycle(relay);

  CHECK(store.row(a).published);
  CHECK_FALSE(store.row(b).published);
  CHECK_FALSE(store.row(b).dead);
  CHECK(store.row(b).event.attempts == 0);  // the broker, not the row, was at fault
  CHECK(store.row(c).published);
  CHECK(report.left_pending == 1);
}

TEST_CASE("a permanent failure dead-letters the row with its reason", "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  auto big = store.add("orders", "a");
  auto ok = store.add("orders", "a");
  kafka.script[big] = {false, FailureKind::permanent, "Kafka: Broker: Message size too large"};
  BatchRelay relay(store, kafka, clock, options());

  run_cycle(relay);

  CHECK(store.row(big).dead);
  CHECK(store.row(big).last_error == "Kafka: Broker: Message size too large");
  CHECK(store.row(ok).published);
  CHECK(store.pending() == 0);  // nothing blocks the rest
}

TEST_CASE("a blocked topic waits with backoff, is never dead-lettered, others flow", "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  auto a1 = store.add("missing", "k");
  auto o1 = store.add("orders", "k");
  kafka.blocked_topics = {"missing"};
  BatchRelay relay(store, kafka, clock, options());  // backoff 100 ms, doubling to 400

  auto first = run_cycle(relay);
  CHECK(first.topic_blocked == 1);
  CHECK(first.transient == 0);  // no global backoff for a topic's trouble
  CHECK(store.row(o1).published);
  CHECK_FALSE(store.row(a1).dead);
  CHECK(store.row(a1).event.attempts == 0);

  auto o2 = store.add("orders", "k");
  auto a2 = store.add("missing", "k");
  run_cycle(relay);  // within the backoff: the topic's rows are not even read
  CHECK(store.last_skip == std::vector<std::string>{"missing"});
  CHECK(store.row(o2).published);
  std::size_t sent_before = kafka.sent.size();

  for (int i = 0; i < 5; ++i) {  // backoff over: asked first, still blocked, skipped again
    clock.advance(milliseconds(500));
    run_cycle(relay);
  }
  CHECK(kafka.sent.size() == sent_before);  // asked about, never sent to while blocked
  CHECK(kafka.asked.size() >= 1);
  CHECK_FALSE(store.row(a1).dead);

  kafka.blocked_topics.clear();  // the topic was created
  clock.advance(milliseconds(500));
  run_cycle(relay);
  CHECK(store.row(a1).published);
  CHECK(store.row(a2).published);
  CHECK(store.pending() == 0);
}

TEST_CASE("an error Kafka may answer for a whole request is retried alone before blame",
          "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  std::vector<std::int64_t> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(store.add("orders", "k"));
  kafka.too_large_in_company = {ids[1], ids[2]};
  kafka.too_large_alone = {ids[2]};  // ids[2] is too large on its own; ids[1] is not
  BatchRelay relay(store, kafka, clock, options());

  auto first = run_cycle(relay);
  CHECK(first.suspects == 2);
  CHECK(first.dead_lettered == 0);  // nobody blamed for a batch-level error
  for (int i = 0; i < 6 && store.pending() > 0; ++i) {
    auto report = run_cycle(relay);
    CHECK(report.read == 1);  // one row per batch through the suspects
  }
  CHECK(store.row(ids[1]).published);
  CHECK(store.row(ids[2]).dead);
  CHECK_THAT(store.row(ids[2]).last_error, Catch::Contains("sent alone"));
  CHECK(store.row(ids[3]).published);
  CHECK(store.pending() == 0);

  store.add("orders", "k");
  store.add("orders", "k");
  CHECK(run_cycle(relay).read == 2);  // past the suspects: whole batches again
}

TEST_CASE("poison rows are dead-lettered without being sent", "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  auto bad_headers = store.add("orders", "a", R"({"n": 5})");
  auto bad_topic = store.add("no spaces allowed", "a");
  auto good = store.add("orders", "a");
  BatchRelay relay(store, kafka, clock, options());

  BatchReport report = run_cycle(relay);

  CHECK(report.dead_lettered == 2);
  CHECK(store.row(bad_headers).dead);
  CHECK(store.row(bad_topic).dead);
  CHECK(store.row(good).published);
  CHECK(kafka.sent.size() == 1);
}

TEST_CASE("a publisher failure records nothing published and leaves the rows pending", "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  store.add("orders", "a");
  kafka.throw_next = true;
  BatchRelay relay(store, kafka, clock, options());

  auto report = run_cycle(relay);
  CHECK(report.transient == 1);
  CHECK(report.left_pending == 1);
  CHECK(report.published == 0);
  CHECK(store.pending() == 1);
  CHECK(store.row(1).event.attempts == 0);  // not the row's fault
}

TEST_CASE("an outcome that cannot be recorded is recorded later, never sent again", "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  store.add("orders", "a");
  store.add("orders", "b");
  store.fail_record = 4;  // the mark fails the same way several times (a trigger, a grant)
  BatchRelay relay(store, kafka, clock, options());

  CHECK_THROWS_AS(run_cycle(relay), UnavailableError);
  CHECK(store.pending() == 2);
  CHECK(relay.phase() == LoopPhase::unrecorded);
  for (int i = 0; i < 3; ++i) {
    CHECK_THROWS_AS(run_cycle(relay), UnavailableError);
    CHECK(store.begins == 1);  // nothing read, nothing re-sent while the marks fail
  }
  run_cycle(relay);
  CHECK(store.pending() == 0);
  CHECK(store.row(1).published);
  CHECK(kafka.sent.size() == 2);  // each message sent once
  CHECK(relay.counters().published == 2);
}

TEST_CASE("run() backs off while a mark keeps failing, and stops without re-sending", "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  store.add("orders", "a");
  store.fail_record = 1000;
  std::atomic<bool> stop{false};
  BatchRelay relay(store, kafka, clock, options());
  kafka.on_publish = [] {};
  std::thread stopper([&] {
    while (store.records < 5) std::this_thread::yield();
    stop = true;
  });
  CHECK(relay.run(stop) == 1);  // the acknowledged message is left unrecorded
  stopper.join();
  CHECK(kafka.sent.size() == 1);
  CHECK(clock.sleeps.size() >= 4);
  CHECK(clock.sleeps[1] > clock.sleeps[0]);  // backing off
}

TEST_CASE("an empty outbox publishes nothing", "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  BatchRelay relay(store, kafka, clock, options());
  CHECK(run_cycle(relay).read == 0);
  CHECK(kafka.calls == 0);
  CHECK(store.begins == 1);
  CHECK(store.records == 0);
}

TEST_CASE("batches hold at most batch_size rows", "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  for (int i = 0; i < 25; ++i) store.add("orders", "k");
  BatchRelay relay(store, kafka, clock, options(10));
  CHECK(run_cycle(relay).read == 10);
  CHECK(run_cycle(relay).read == 10);
  CHECK(run_cycle(relay).read == 5);
  CHECK(store.pending() == 0);
}

TEST_CASE("batches stop at the row that reaches batch_max_bytes, and count as full", "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  // Each row weighs 2 ("p1".."p9" payload) + 1 (key) + 2 ("{}") = 5 bytes.
  for (int i = 0; i < 9; ++i) store.add("orders", "k");
  auto o = options(100);
  o.batch_max_bytes = 12;  // 2 rows stay below it, the 3rd reaches it
  BatchRelay relay(store, kafka, clock, o);
  auto first = run_cycle(relay);
  CHECK(first.read == 3);
  CHECK(first.full);  // more may be waiting: no idle wait
  CHECK(kafka.sent.size() == 3);
  CHECK(*kafka.sent[0].payload == "p1");
  run_cycle(relay);
  auto last = run_cycle(relay);
  CHECK(last.read == 3);
  CHECK(last.full);
  auto empty = run_cycle(relay);
  CHECK(empty.read == 0);
  CHECK_FALSE(empty.full);

  FakeStore big;
  big.add("orders", "k");
  big.add("orders", "k");
  o.batch_max_bytes = 1;
  BatchRelay one(big, kafka, clock, o);
  CHECK(run_cycle(one).read == 1);  // a row above the budget still goes, alone
  CHECK(big.pending() == 1);
}

TEST_CASE("run() backs off with doubling pauses while PostgreSQL is down", "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  store.add("orders", "a");
  store.fail_begin = 4;
  std::atomic<bool> stop{false};
  kafka.on_publish = [&] { stop = true; };
  BatchRelay relay(store, kafka, clock, options());

  relay.run(stop);

  CHECK(store.pending() == 0);
  CHECK(clock.sleeps == std::vector<milliseconds>{milliseconds(100), milliseconds(200),
                                                  milliseconds(400), milliseconds(400)});
}

TEST_CASE("run() waits for a hint when the outbox is drained, and stops on request", "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  std::atomic<bool> stop{false};
  BatchRelayOptions o = options();
  o.interval = milliseconds(100);
  BatchRelay relay(store, kafka, clock, o);
  std::thread stopper([&] {
    while (store.waits < 3) std::this_thread::yield();
    stop = true;
  });
  relay.run(stop);
  stopper.join();
  CHECK(store.waits >= 3);
  CHECK(kafka.calls == 0);
}

TEST_CASE("on stop, the batch in flight is finished and unacknowledged rows stay pending",
          "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  auto a = store.add("orders", "a");
  auto b = store.add("orders", "b");
  kafka.script[a] = {true, FailureKind::transient, ""};
  kafka.hang = true;  // b is answered only once purged
  std::atomic<bool> stop{false};
  kafka.on_send = [&](const Message&) { stop = true; };  // a signal while the read goes out
  BatchRelayOptions o = options();
  o.shutdown_timeout = milliseconds(0);
  BatchRelay relay(store, kafka, clock, o);

  CHECK(relay.run(stop) == 1);  // b: purged, left unanswered

  CHECK(store.row(a).published);
  CHECK_FALSE(store.row(b).published);
  CHECK(store.row(b).event.attempts == 0);
  CHECK(kafka.purges == 1);
}

TEST_CASE("the source is kept alive while a batch waits for Kafka", "[relay]") {
  FakeStore store;
  FakePublisher kafka;
  FakeClock clock;
  store.add("orders", "a");
  std::atomic<bool> stop{false};
  kafka.on_publish = [&] { stop = true; };
  BatchRelay relay(store, kafka, clock, options());

  relay.run(stop);

  CHECK(store.keep_alives >= 1);  // replication: status updates before wal_sender_timeout
}

TEST_CASE("the loop's phases refuse a transition their table does not allow", "[relay][states]") {
  StateMachine<LoopPhaseTraits> phase(LoopPhase::empty, "core");
  // nothing in flight: a read-ahead cannot follow, only a read by state
  phase.set(LoopPhase::after_short_read, "a short read");
  phase.set(LoopPhase::reading, "an answer came");
  phase.set(LoopPhase::draining, "a delivery failed");
  // invariant send-in-id-order: after a failure nothing is read until the window is empty
  CHECK_THROWS_AS(phase.set(LoopPhase::reading, "test"), std::logic_error);
  CHECK_THROWS_AS(phase.set(LoopPhase::after_short_read, "test"), std::logic_error);
  CHECK(phase.is(LoopPhase::draining));
  phase.set(LoopPhase::unrecorded, "a mark failed");
  // invariant record-before-read: nothing is read before the outcome is recorded
  CHECK_THROWS_AS(phase.set(LoopPhase::reading, "test"), std::logic_error);
  phase.set(LoopPhase::draining, "recorded");
  phase.set(LoopPhase::empty, "drained");
  CHECK(phase.is(LoopPhase::empty));
}
