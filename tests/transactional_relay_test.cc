// The relay loop in exactly_once (core/batch_relay.h) against fakes: a Kafka cluster
// with transactions and fencing, the outbox store of fakes.h, a recovery marker. What a
// read_committed consumer would see is FakeCluster::committed: every test checks that each
// row is in it exactly once (or, dead-lettered, not at all).
#include <catch2/catch.hpp>

#include <algorithm>
#include <limits>
#include <memory>
#include <optional>

#include "core/batch_relay.h"
#include "fakes.h"

namespace {

using namespace outbox;
using testing::FakeClock;
using testing::FakeStore;

//! The broker side: committed data and checkpoints, and the current producer epoch of the
//! one transactional.id.
struct FakeCluster {
  int epoch = 0;
  std::vector<std::int64_t> committed;   //!< outbox ids of committed records, in order
  std::vector<std::string> checkpoints;  //!< committed checkpoint records
  //! Reads of the checkpoint while another producer's open transaction hides the newest
  //! one (the read then sees the one before it, not proven).
  int hidden_reads = 0;
};

class FakeTxnPublisher : public core::TransactionalPublisher {
 public:
  explicit FakeTxnPublisher(FakeCluster& cluster) : cluster_(cluster) {}

  void init() override {
    ++inits;
    if (fail_init > 0) {
      --fail_init;
      throw core::UnavailableError("Kafka: coordinator not available");
    }
    in_txn_ = false;  // the open one (if any) is aborted by the epoch bump
    open_.clear();
    sent_checkpoint_.reset();
    epoch_ = ++cluster_.epoch;
  }
  core::CheckpointRead last_checkpoint() override {
    ++checkpoint_reads;
    if (on_checkpoint_read) on_checkpoint_read();
    core::CheckpointRead read;
    const auto& cps = cluster_.checkpoints;
    if (cluster_.hidden_reads > 0) {
      --cluster_.hidden_reads;
      read.proven = false;
      read.hidden = "last stable offset 7, end 9";
      if (cps.size() >= 2) read.record = cps[cps.size() - 2];
      return read;
    }
    read.record = cps.empty() ? "" : cps.back();
    return read;
  }
  std::size_t max_checkpoint_bytes() const override { return max_bytes; }
  void begin() override {
    if (epoch_ == 0) throw std::logic_error("begin before init");
    if (in_txn_) throw std::logic_error("begin inside a transaction");
    in_txn_ = true;
    open_.clear();
    sent_checkpoint_.reset();
    ++begins;
  }
  void send(const core::Message& m, std::uint64_t tag) override {
    if (!in_txn_) throw std::logic_error("send outside a transaction");
    std::int64_t id = std::stoll(m.headers.at(1).second);
    sent.push_back(id);
    core::DeliveryResult r;
    r.ok = true;
    if (auto it = script.find(id); it != script.end()) r = it->second;
    if (r.ok) open_.push_back(id);
    answers_.push_back({tag, r});
    if (on_send) on_send();
  }
  std::vector<core::Completion> poll(std::chrono::milliseconds timeout) override {
    if (hold && hold()) {
      if (clock != nullptr) clock->advance(timeout);  // a poll that waits lets time pass
      return {};
    }
    return std::exchange(answers_, {});
  }
  void purge() override {}
  void send_checkpoint(const std::string& checkpoint) override {
    if (!in_txn_) throw std::logic_error("checkpoint outside a transaction");
    if (sent_checkpoint_) throw std::logic_error("a second checkpoint in one transaction");
    sent_checkpoint_ = checkpoint;
    early_checkpoints.push_back(checkpoint);
  }
  void commit(const std::string& checkpoint) override {
    if (!in_txn_) throw std::logic_error("commit outside a transaction");
    if (sent_checkpoint_ && *sent_checkpoint_ != checkpoint) {
      throw std::logic_error("commit with another checkpoint than the one sent");
    }
    in_txn_ = false;
    if (checkpoint.size() > max_bytes) {  // as Kafka: the checkpoint record is refused
      throw core::UnavailableError("the checkpoint record was not delivered (too large)");
    }
    if (epoch_ != cluster_.epoch) throw core::FencedError("Kafka: producer fenced");
    if (commit_fails_aborted > 0) {
      --commit_fails_aborted;
      throw core::UnavailableError("Kafka: transaction aborted");
    }
    for (auto id : open_) cluster_.committed.push_back(id);
    cluster_.checkpoints.push_back(checkpoint);
    ++commits;
    if (commit_fails_unknown > 0) {  // committed, but the answer was lost
      --commit_fails_unknown;
      throw core::UnavailableError("Kafka: commit timed out");
    }
  }
  bool abort() noexcept override {
    in_txn_ = false;
    open_.clear();
    sent_checkpoint_.reset();
    ++aborts;
    return true;
  }

  std::map<std::int64_t, core::DeliveryResult> script;
  std::vector<std::int64_t> sent;
  //! checkpoints sent ahead of commit (send_checkpoint), in order
  std::vector<std::string> early_checkpoints;
  std::function<void()> on_send;
  std::function<void()> on_checkpoint_read;
  std::function<bool()> hold;  //!< while it returns true, nothing is answered
  FakeClock* clock = nullptr;
  std::size_t max_bytes = 1'000'000;
  int checkpoint_reads = 0;
  int fail_init = 0, commit_fails_aborted = 0, commit_fails_unknown = 0;
  int inits = 0, begins = 0, commits = 0, aborts = 0;

 private:
  FakeCluster& cluster_;
  int epoch_ = 0;
  bool in_txn_ = false;
  std::vector<std::int64_t> open_;
  std::vector<core::Completion> answers_;
  std::optional<std::string> sent_checkpoint_;
};

class FakeMarker : public core::RecoveryMarker {
 public:
  explicit FakeMarker(FakeStore& store) : store_(store) {}
  Result mark_published(const std::vector<core::CheckpointRow>& rows) override {
    ++calls;
    Result result;
    for (const auto& c : rows) {
      const auto& r = store_.row(c.id);
      if (r.published || r.dead) continue;
      if (!c.event_id.empty() && c.event_id != r.event.event_id) {
        ++result.reused;
        continue;
      }
      core::BatchOutcome o;
      o.published.push_back(c.id);
      store_.apply(o);
      ++result.marked;
    }
    return result;
  }
  int calls = 0;

 private:
  FakeStore& store_;
};

core::BatchRelayOptions options(std::size_t batch = 4) {
  core::BatchRelayOptions o;
  o.batch_size = batch;
  o.interval = std::chrono::milliseconds(100);
  return o;
}

struct Rig {
  explicit Rig(std::size_t batch = 4) : publisher(cluster), marker(store) {
    publisher.clock = &clock;
    store.on_wait = [this] { clock.advance(std::chrono::milliseconds(200)); };
    relay = std::make_unique<core::BatchRelay>(store, publisher, marker, clock, options(batch));
  }
  //! Steps until nothing is pending or `max` steps, swallowing UnavailableError as run() does.
  void drain(int max = 50) {
    std::atomic<bool> stop{false};
    for (int i = 0; i < max && (store.pending() > 0 || relay->recovery_due()); ++i) {
      try {
        relay->step(stop);
      } catch (const core::UnavailableError&) {
      }
    }
  }
  std::map<std::int64_t, int> copies() const {
    std::map<std::int64_t, int> c;
    for (auto id : cluster.committed) ++c[id];
    return c;
  }
  FakeCluster cluster;
  FakeStore store;
  FakeClock clock;
  FakeTxnPublisher publisher;
  FakeMarker marker;
  std::unique_ptr<core::BatchRelay> relay;
};

void require_exactly_once(const Rig& rig, std::int64_t first, std::int64_t last) {
  auto copies = rig.copies();
  for (std::int64_t id = first; id <= last; ++id) {
    INFO("id " << id);
    REQUIRE(copies[id] == 1);
    REQUIRE(rig.store.row(id).published);
  }
  // per-key order: committed in id order (one key here per row topic)
  REQUIRE(std::is_sorted(rig.cluster.committed.begin(), rig.cluster.committed.end()));
}

}  // namespace

TEST_CASE("checkpoint text: rows with event ids round trip, the earlier format reads, junk refused",
          "[eos]") {
  using Row = core::CheckpointRow;
  std::vector<Row> rows{{7, "e7"}, {1, "e1"}, {2, "e2"},  {3, "e3"},
                        {5, "e5"}, {9, "e9"}, {10, "e10"}};
  std::string text = core::encode_checkpoint(rows);
  REQUIRE(text == "v2;1-3,5,7,9-10;e1,e2,e3,e5,e7,e9,e10");
  auto back = core::decode_checkpoint(text);
  REQUIRE(back.has_value());
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.id < b.id; });
  REQUIRE(*back == rows);
  REQUIRE(core::decode_checkpoint(core::encode_checkpoint({}))->empty());
  // format 1 (ids only, written by earlier versions): event ids empty, matched by id alone
  auto old = core::decode_checkpoint("1-3,5");
  REQUIRE(old.has_value());
  REQUIRE(*old == std::vector<Row>{{1, ""}, {2, ""}, {3, ""}, {5, ""}});
  REQUIRE(core::decode_checkpoint("")->empty());
  for (const char* bad : {"x", "1,", "3-1", "5,2", "1-2,2", "1--2", "{\"a\":1}", "v2;1-2;e1",
                          "v2;1;e1,e2", "v2;1-2;e1,", "v2;1", "v2;1;"}) {
    INFO(bad);
    REQUIRE_FALSE(core::decode_checkpoint(bad).has_value());
  }
  // the size bound the relay relies on: the largest ids and uuids
  std::vector<Row> worst;
  for (std::int64_t i = 0; i < 100; ++i) {
    worst.push_back(
        {std::numeric_limits<std::int64_t>::max() - 2 * i, "123e4567-e89b-12d3-a456-426614174000"});
  }
  REQUIRE(core::encode_checkpoint(worst).size() <=
          core::kCheckpointFixedBytes + 100 * core::kCheckpointRowBytes);
}

TEST_CASE("recovery comes first: nothing is sent before init_transactions and the checkpoint",
          "[eos]") {
  {
    Rig rig;
    for (int i = 0; i < 3; ++i) rig.store.add("t", "k");
    std::atomic<bool> stop{false};
    rig.relay->step(stop);
    REQUIRE(rig.publisher.inits == 1);
    REQUIRE(rig.publisher.sent.empty());
    REQUIRE(rig.store.pending() == 3);
    rig.drain();
    require_exactly_once(rig, 1, 3);
    REQUIRE(rig.publisher.inits == 1);
  }
}

TEST_CASE("each transaction carries the checkpoint of its ids, recorded once it committed",
          "[eos]") {
  Rig rig(4);
  for (int i = 0; i < 10; ++i) rig.store.add("t", "k");
  rig.drain();
  require_exactly_once(rig, 1, 10);
  REQUIRE(rig.publisher.commits == 3);  // Kafka answers at once: one read per transaction
  REQUIRE(rig.cluster.checkpoints == std::vector<std::string>{"v2;1-4;evt-1,evt-2,evt-3,evt-4",
                                                              "v2;5-8;evt-5,evt-6,evt-7,evt-8",
                                                              "v2;9-10;evt-9,evt-10"});
  REQUIRE(rig.store.records == 3);
  REQUIRE(rig.relay->counters().published == 10);
}

TEST_CASE("a crash between the Kafka commit and the mark: the next run marks, never re-sends",
          "[eos]") {
  {
    Rig rig(4);
    for (int i = 0; i < 6; ++i) rig.store.add("t", "k");
    rig.store.fail_record = 100;  // the mark never succeeds in this run
    rig.drain(5);
    REQUIRE(rig.publisher.commits == 1);  // the next transaction waits for the mark
    REQUIRE(rig.store.pending() == 6);
    // "crash": a new process (relay and producer) on the same cluster and table
    rig.store.fail_record = 0;
    FakeTxnPublisher publisher2(rig.cluster);
    core::BatchRelay relay2(rig.store, publisher2, rig.marker, rig.clock, options(4));
    std::atomic<bool> stop{false};
    relay2.step(stop);  // recovery
    REQUIRE(relay2.recovered_rows() == 4);
    for (int i = 0; i < 10 && rig.store.pending() > 0; ++i) relay2.step(stop);
    require_exactly_once(rig, 1, 6);
    REQUIRE(publisher2.sent == std::vector<std::int64_t>{5, 6});
  }
}

TEST_CASE("a commit of unknown outcome: recovery reads the checkpoint and decides", "[eos]") {
  SECTION("it had committed: its rows are marked, not sent again") {
    Rig rig(4);
    for (int i = 0; i < 4; ++i) rig.store.add("t", "k");
    rig.publisher.commit_fails_unknown = 1;
    rig.drain();
    require_exactly_once(rig, 1, 4);
    REQUIRE(rig.publisher.inits == 2);
    REQUIRE(rig.relay->recovered_rows() == 4);
    REQUIRE(rig.publisher.sent.size() == 4);
  }
  SECTION("it had not: the rows stay pending and go in the next transaction") {
    Rig rig(4);
    for (int i = 0; i < 4; ++i) rig.store.add("t", "k");
    rig.publisher.commit_fails_aborted = 1;
    rig.drain();
    require_exactly_once(rig, 1, 4);
    REQUIRE(rig.publisher.inits == 2);
    REQUIRE(rig.relay->recovered_rows() == 0);
    REQUIRE(rig.publisher.sent.size() == 8);  // sent twice, committed once
    REQUIRE(rig.store.records == 1);          // nothing recorded of the unknown one
  }
}

TEST_CASE("a zombie is fenced: it marks nothing, the new instance publishes everything once",
          "[eos]") {
  Rig rig(4);
  for (int i = 0; i < 8; ++i) rig.store.add("t", "k");
  std::atomic<bool> stop{false};
  rig.relay->step(stop);  // recovery of the old one
  // While the old one's first transaction is open, a new instance starts and recovers
  // (init_transactions with the same transactional.id: the old epoch is fenced).
  FakeTxnPublisher publisher2(rig.cluster);
  core::BatchRelay relay2(rig.store, publisher2, rig.marker, rig.clock, options(4));
  bool once = true;
  rig.publisher.on_send = [&] {
    if (!once) return;
    once = false;
    relay2.step(stop);  // recovery: fences the old producer
  };
  REQUIRE_THROWS_AS(rig.relay->step(stop), core::FencedError);
  REQUIRE(rig.store.pending() == 8);  // the zombie marked nothing
  REQUIRE(rig.cluster.committed.empty());
  REQUIRE(rig.relay->recovery_due());
  for (int i = 0; i < 10 && rig.store.pending() > 0; ++i) relay2.step(stop);
  require_exactly_once(rig, 1, 8);
}

TEST_CASE("failed deliveries abort the transaction, only proven rows are dead-lettered", "[eos]") {
  SECTION("transient: abort, nothing committed, sent again later in one transaction") {
    Rig rig(4);
    for (int i = 0; i < 4; ++i) rig.store.add("t", "k");
    rig.publisher.script[3] = {false, core::FailureKind::transient, "Kafka: broker down"};
    std::atomic<bool> stop{false};
    rig.relay->step(stop);  // recovery
    rig.relay->step(stop);  // sent, answered, aborted (the backoff pause is the next step's)
    REQUIRE(rig.relay->cycle().transient == 1);
    REQUIRE(rig.publisher.aborts == 1);
    REQUIRE(rig.cluster.committed.empty());  // 1, 2 and 4 were acknowledged, yet not visible
    REQUIRE(rig.store.pending() == 4);
    rig.publisher.script.clear();
    rig.drain();
    require_exactly_once(rig, 1, 4);
  }
  SECTION("permanent: that row dead-lettered with its reason, the rest committed once") {
    Rig rig(4);
    for (int i = 0; i < 4; ++i) rig.store.add("t", "k");
    rig.publisher.script[2] = {false, core::FailureKind::permanent, "Kafka: Message too large"};
    rig.drain();
    REQUIRE(rig.store.row(2).dead);
    REQUIRE(rig.store.row(2).last_error == "Kafka: Message too large");
    REQUIRE(rig.copies().count(2) == 0);
    REQUIRE(rig.copies()[1] == 1);
    REQUIRE(rig.copies()[3] == 1);
    REQUIRE(rig.copies()[4] == 1);
  }
  SECTION("suspect with others: sent alone (one transaction each) before any blame") {
    Rig rig(4);
    for (int i = 0; i < 4; ++i) rig.store.add("t", "k");
    rig.publisher.script[3] = {false, core::FailureKind::suspect, "Kafka: Invalid record"};
    rig.drain();
    REQUIRE(rig.store.row(3).dead);
    REQUIRE(rig.store.row(3).last_error == "Kafka: Invalid record (sent alone)");
    for (std::int64_t id : {1, 2, 4}) REQUIRE(rig.copies()[id] == 1);
    REQUIRE_FALSE(rig.store.row(1).dead);
  }
}

TEST_CASE("an unrecorded mark blocks the next transaction until it is recorded", "[eos]") {
  Rig rig(2);
  for (int i = 0; i < 4; ++i) rig.store.add("t", "k");
  rig.store.fail_record = 3;
  rig.drain();
  require_exactly_once(rig, 1, 4);
  REQUIRE(rig.publisher.commits == 2);
  REQUIRE(rig.relay->recovered_rows() == 0);
}

TEST_CASE("init_transactions failing is retried, nothing is sent meanwhile", "[eos]") {
  Rig rig(4);
  for (int i = 0; i < 3; ++i) rig.store.add("t", "k");
  rig.publisher.fail_init = 2;
  std::atomic<bool> stop{false};
  for (int i = 0; i < 2; ++i) {
    REQUIRE_THROWS_AS(rig.relay->step(stop), core::UnavailableError);
    REQUIRE(rig.publisher.sent.empty());
  }
  rig.drain();
  require_exactly_once(rig, 1, 3);
}

// Regression: another producer's open transaction on a shared checkpoint topic hid this
// relay's newest checkpoint; recovery marked the older one and sent the newest rows again.
TEST_CASE("recovery waits while the newest checkpoint may be hidden, never marks an older one",
          "[eos][regression]") {
  {
    Rig rig(4);
    for (int i = 0; i < 4; ++i) rig.store.add("t", "k");
    rig.drain();  // recovery, transaction 1, marked
    REQUIRE(rig.publisher.commits == 1);
    for (int i = 0; i < 4; ++i) rig.store.add("t", "k");
    rig.store.fail_record = 100;
    rig.drain(3);  // transaction 2: committed, its mark fails
    REQUIRE(rig.publisher.commits == 2);
    REQUIRE(rig.store.pending() == 4);
    // "crash"; the restart finds the topic's end held by someone else's open transaction
    rig.store.fail_record = 0;
    rig.cluster.hidden_reads = 3;
    FakeTxnPublisher publisher2(rig.cluster);
    core::BatchRelay relay2(rig.store, publisher2, rig.marker, rig.clock, options(4));
    int keep_alives = rig.store.keep_alives;
    auto before = rig.clock.now();
    std::atomic<bool> stop{false};
    relay2.step(stop);  // recovery: waits until the end is stable, then marks the newest
    REQUIRE(relay2.recovered_rows() == 4);
    REQUIRE(publisher2.checkpoint_reads == 4);
    REQUIRE(rig.clock.now() > before);             // it waited...
    REQUIRE(rig.store.keep_alives > keep_alives);  // ...keeping the leader's session alive
    REQUIRE(rig.store.pending() == 0);
    for (int i = 0; i < 5; ++i) relay2.step(stop);
    REQUIRE(publisher2.sent.empty());
    require_exactly_once(rig, 1, 8);
  }
}

TEST_CASE("a stop while recovery waits for a hidden checkpoint marks nothing, recovery stays due",
          "[eos]") {
  Rig rig(4);
  for (int i = 0; i < 4; ++i) rig.store.add("t", "k");
  rig.cluster.hidden_reads = 1'000'000;
  std::atomic<bool> stop{false};
  rig.publisher.on_checkpoint_read = [&] {
    if (rig.publisher.checkpoint_reads == 3) stop = true;
  };
  rig.relay->step(stop);
  REQUIRE(rig.publisher.checkpoint_reads == 3);
  REQUIRE(rig.marker.calls == 0);
  REQUIRE(rig.relay->recovery_due());
  REQUIRE(rig.publisher.sent.empty());
}

// Regression: checkpoints named rows by id only; after a rewind of the database (point-in-time
// restore, failover to a standby that lagged) reused ids were marked published, never sent.
TEST_CASE("recovery marks a row only if its event_id is the checkpoint's: reused ids are sent",
          "[eos][regression]") {
  {
    Rig rig(4);
    for (int i = 0; i < 4; ++i) rig.store.add("t", "k");
    rig.store.fail_record = 100;  // committed, never marked
    rig.drain(3);
    REQUIRE(rig.publisher.commits == 1);
    rig.store.fail_record = 0;
    // the database is rewound: ids 3 and 4 now name other events
    rig.store.reuse_id(3, "evt-new-3");
    rig.store.reuse_id(4, "evt-new-4");
    FakeTxnPublisher publisher2(rig.cluster);
    core::BatchRelay relay2(rig.store, publisher2, rig.marker, rig.clock, options(4));
    std::atomic<bool> stop{false};
    relay2.step(stop);  // recovery
    REQUIRE(relay2.recovered_rows() == 2);
    for (int i = 0; i < 5 && rig.store.pending() > 0; ++i) relay2.step(stop);
    REQUIRE(publisher2.sent == std::vector<std::int64_t>{3, 4});
    REQUIRE(rig.store.pending() == 0);
    REQUIRE(rig.copies()[1] == 1);
    REQUIRE(rig.copies()[3] == 2);  // the lost event once, the new one once
  }
}

// Regression: with a large batch_size the checkpoint exceeded the largest record Kafka takes;
// the commit failed, recovery read the same rows again, forever.
TEST_CASE("the rows of a transaction are bounded so that its checkpoint fits one record",
          "[eos][regression]") {
  {
    Rig rig(100);
    // room for the worst case of 2 rows; the checkpoint of all 30 (about 200 bytes) is larger
    rig.publisher.max_bytes = core::kCheckpointFixedBytes + 2 * core::kCheckpointRowBytes;
    for (int i = 0; i < 30; ++i) rig.store.add("t", "k");
    rig.drain(40);
    require_exactly_once(rig, 1, 30);
    REQUIRE(rig.relay->max_rows() == 2);
    REQUIRE(rig.publisher.commits == 15);
    for (const auto& cp : rig.cluster.checkpoints) REQUIRE(cp.size() <= rig.publisher.max_bytes);
  }
}

TEST_CASE("a largest record too small for one row's checkpoint stops the relay", "[eos]") {
  Rig rig(4);
  rig.publisher.max_bytes = core::kCheckpointFixedBytes + core::kCheckpointRowBytes - 1;
  rig.store.add("t", "k");
  std::atomic<bool> stop{false};
  REQUIRE_THROWS_AS(rig.relay->step(stop), core::FatalError);
  REQUIRE(rig.publisher.sent.empty());
}

// Regression: a row gone between the Kafka transaction's commit and its mark wedged the loop
// (the mark matched fewer rows than given and was retried forever).
TEST_CASE("exactly_once: a row gone before its mark is reported and the loop goes on",
          "[eos][regression]") {
  {
    Rig rig(4);
    for (int i = 0; i < 6; ++i) rig.store.add("t", "k");
    rig.publisher.on_send = [&] {
      if (rig.publisher.sent.size() == 2) rig.store.erase(2);  // in the first transaction
    };
    rig.drain();
    REQUIRE(rig.store.pending() == 0);
    REQUIRE(rig.copies()[2] == 1);  // its message was committed: it is in Kafka, without a row
    for (std::int64_t id : {1, 3, 4, 5, 6}) REQUIRE(rig.store.row(id).published);
    REQUIRE(rig.relay->counters().vanished == 1);
    REQUIRE(rig.publisher.commits == 2);  // nothing sent again
  }
}

TEST_CASE("exactly_once rides the in-flight window: several reads in one transaction",
          "[eos][pipeline]") {
  Rig rig(2);
  for (int i = 0; i < 10; ++i) rig.store.add("t", "k");
  // Kafka answers nothing until all ten were sent: five reads of two go out meanwhile.
  rig.publisher.hold = [&] { return rig.publisher.sent.size() < 10; };
  rig.drain();
  require_exactly_once(rig, 1, 10);
  REQUIRE(rig.store.reads_after >= 4);
  REQUIRE(rig.publisher.commits == 1);
  REQUIRE(rig.cluster.checkpoints ==
          std::vector<std::string>{"v2;1-10;evt-1,evt-2,evt-3,evt-4,evt-5,evt-6,evt-7,evt-8,evt-9,"
                                   "evt-10"});
  REQUIRE(rig.store.records == 1);  // recorded once, after the commit
}

TEST_CASE("an exactly_once transaction takes reads for a bounded time, then commits",
          "[eos][pipeline]") {
  Rig rig(2);
  for (int i = 0; i < 6; ++i) rig.store.add("t", "k");
  // Each send takes 20 ms; Kafka answers only once the transaction takes no more reads.
  rig.publisher.on_send = [&] { rig.clock.advance(std::chrono::milliseconds(20)); };
  rig.publisher.hold = [&] {
    return rig.relay->transaction_state() == core::TransactionState::open;
  };
  rig.drain();
  require_exactly_once(rig, 1, 6);
  // Reads of rows 1-2 (40 ms) and 3-4 (80 ms): past kTransactionWindow (50 ms), no more.
  REQUIRE(rig.cluster.checkpoints.front() == "v2;1-4;evt-1,evt-2,evt-3,evt-4");
  REQUIRE(rig.publisher.commits == 2);
}

TEST_CASE("exactly_once: a failed delivery while reads are ahead aborts the whole transaction",
          "[eos][pipeline]") {
  Rig rig(2);
  for (int i = 0; i < 6; ++i) rig.store.add("t", "k");
  rig.publisher.hold = [&] { return rig.publisher.sent.size() < 6; };
  rig.publisher.script[5] = {false, core::FailureKind::transient, "Kafka: broker down"};
  std::atomic<bool> stop{false};
  for (int i = 0; i < 6 && rig.publisher.aborts == 0; ++i) rig.relay->step(stop);
  REQUIRE(rig.publisher.aborts == 1);
  REQUIRE(rig.cluster.committed.empty());  // 1-4 and 6 acknowledged, none visible
  REQUIRE(rig.store.pending() == 6);       // and none marked
  rig.publisher.script.clear();
  rig.drain();
  require_exactly_once(rig, 1, 6);
}

TEST_CASE("the transaction's states refuse a transition their table does not allow",
          "[eos][states]") {
  using core::TransactionState;
  core::StateMachine<core::TransactionStateTraits> txn(TransactionState::recovery_due, "core");
  // invariant recover-before-send: nothing is sent (no transaction begins) before recovery
  REQUIRE_THROWS_AS(txn.set(TransactionState::open, "test"), std::logic_error);
  REQUIRE(txn.is(TransactionState::recovery_due));
  txn.set(TransactionState::idle, "recovered");
  REQUIRE_THROWS_AS(txn.set(TransactionState::closed, "test"), std::logic_error);
  txn.set(TransactionState::open, "begun");
  txn.set(TransactionState::closed, "full");
  // a closed transaction takes no more reads
  REQUIRE_THROWS_AS(txn.set(TransactionState::open, "test"), std::logic_error);
  txn.set(TransactionState::recovery_due, "commit of unknown outcome");
  REQUIRE_THROWS_AS(txn.set(TransactionState::closed, "test"), std::logic_error);
}

namespace {
//! Rows 1-3 pending, Kafka answering nothing until `answering`: recovery, then one short read
//! sent (the transaction closes).
struct HeldShortRead {
  explicit HeldShortRead(Rig& rig) {
    for (int i = 0; i < 3; ++i) rig.store.add("t", "k");
    rig.publisher.hold = [answering = answering] { return !*answering; };  // outlives this
    rig.relay->step(stop);                                                 // recovery
    rig.relay->step(stop);  // a short read: sent, the transaction closes
  }
  std::shared_ptr<bool> answering = std::make_shared<bool>(false);
  std::atomic<bool> stop{false};
};
}  // namespace

TEST_CASE("exactly_once: the checkpoint goes out when the transaction closes, before its answers",
          "[eos][pipeline]") {
  Rig rig(4);
  HeldShortRead held(rig);
  REQUIRE(rig.relay->transaction_state() == core::TransactionState::closed);
  // Kafka has answered nothing yet: the checkpoint of the three rows is on its way already
  // (it used to be sent only once every answer was in: one produce round trip more).
  REQUIRE(rig.publisher.early_checkpoints == std::vector<std::string>{"v2;1-3;evt-1,evt-2,evt-3"});
  REQUIRE(rig.publisher.commits == 0);
  REQUIRE(rig.store.pending() == 3);  // invariant mark-after-ack: nothing recorded yet
  *held.answering = true;
  rig.drain();
  require_exactly_once(rig, 1, 3);
  REQUIRE(rig.cluster.checkpoints == rig.publisher.early_checkpoints);
}

TEST_CASE("exactly_once: a failed answer after the checkpoint went out aborts it with the data",
          "[eos][pipeline]") {
  Rig rig(4);
  rig.publisher.script[2] = {false, core::FailureKind::transient, "Kafka: broker down"};
  HeldShortRead held(rig);
  REQUIRE(rig.publisher.early_checkpoints.size() == 1);
  *held.answering = true;
  for (int i = 0; i < 5 && rig.publisher.aborts == 0; ++i) rig.relay->step(held.stop);
  REQUIRE(rig.publisher.aborts == 1);
  REQUIRE(rig.cluster.checkpoints.empty());  // the checkpoint was aborted with the data
  REQUIRE(rig.store.pending() == 3);
  rig.publisher.script.clear();
  rig.drain();
  require_exactly_once(rig, 1, 3);
  REQUIRE(rig.cluster.checkpoints == std::vector<std::string>{"v2;1-3;evt-1,evt-2,evt-3"});
}
