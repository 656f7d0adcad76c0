// The replication hand-over and confirmation rules (replication_source.h) against a fake
// PostgreSQL: one FakeServer holds the table, the transactions in commit order, the slot
// and the stream, seen through the two ports the state machine uses.
#include <catch2/catch.hpp>

#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "core/batch_relay.h"
#include "fakes.h"
#include "replication/replication_source.h"
#include "replication/stream_source.h"

using namespace outbox;
using outbox::replication::Lsn;
using outbox::replication::ReplicationSource;
using outbox::replication::StreamMessage;
using outbox::testing::FakeClock;
using outbox::testing::FakePublisher;
using std::chrono::milliseconds;

namespace {

using Phase = ReplicationSource::Phase;

//! PostgreSQL as the state machine sees it.
struct FakeServer {
  struct Row {
    core::OutboxEvent event;
    std::uint32_t xid = 0;
    std::uint64_t commit_end = 0;
    bool published = false;
    bool dead = false;
    bool deleted = false;
  };
  struct Txn {
    std::uint32_t xid;
    std::vector<std::int64_t> ids;
    std::uint64_t end;
  };

  std::map<std::int64_t, Row> rows;
  std::vector<Txn> txns;              // commit order
  std::set<std::uint32_t> invisible;  // committed, not visible to other sessions yet
  std::uint64_t lsn = 1000;
  std::int64_t next_id = 1;
  std::uint32_t next_xid = 700;
  std::string topic = "orders";  //!< of the rows commit() inserts

  bool slot_exists = false;
  std::uint64_t slot_confirmed = 0;
  std::uint64_t consistent_point = 0;
  bool snapshot_alive = false;
  bool connected = false;
  bool streaming = false;
  std::deque<StreamMessage> wire;
  std::vector<std::uint64_t> flushed;  // each status update's confirmed position
  std::vector<std::string> calls;      // create, import, release, start, close
  bool fail_next_read = false;
  bool fail_next_mark = false;
  //! Rows a mark finds gone (deleted, or another event has the id): reported, not marked.
  std::set<std::int64_t> gone_on_mark;
  std::vector<core::VanishedRow> vanished;

  std::function<void()> on_create;                 // runs while the slot is being created
  std::function<void(int)> on_check;               // after the n-th row check
  std::function<void(int)> on_visible;             // after the n-th visibility poll
  std::function<void(milliseconds)> on_idle_read;  // a read that waited for nothing
  int checks = 0;
  int visible_polls = 0;
  int range_reads = 0;  // drain reads (pending_range)
  int topic_reads = 0;  // deferred topics' reads (pending_of_topics)

  //! A transaction that inserts one row per key (ids given or the next ones), committed.
  std::vector<std::int64_t> commit(const std::vector<std::string>& keys, bool visible = true,
                                   std::vector<std::int64_t> ids = {}) {
    Txn t{next_xid++, {}, 0};
    lsn += 100;
    t.end = lsn;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      Row r;
      r.event.id = i < ids.size() ? ids[i] : next_id++;
      r.event.event_id = "evt-" + std::to_string(r.event.id);
      r.event.topic = topic;
      r.event.key = keys[i];
      r.event.payload = "p" + std::to_string(r.event.id);
      r.event.headers_json = "{}";
      r.xid = t.xid;
      r.commit_end = t.end;
      t.ids.push_back(r.event.id);
      rows[r.event.id] = r;
    }
    if (!visible) invisible.insert(t.xid);
    txns.push_back(t);
    if (streaming) send(t);
    return t.ids;
  }
  //! A transaction of another table: the stream carries it, without outbox rows.
  void commit_other_table() {
    Txn t{next_xid++, {}, lsn += 100};
    txns.push_back(t);
    if (streaming) send(t);
  }

  void send(const Txn& t) {
    StreamMessage b;
    b.kind = StreamMessage::Kind::begin;
    b.xid = t.xid;
    b.wal = Lsn{t.end - 90};
    wire.push_back(b);
    std::uint64_t at = t.end - 80;
    for (auto id : t.ids) {
      StreamMessage r;
      r.kind = StreamMessage::Kind::row;
      r.event = rows.at(id).event;
      r.event.attempts = 0;  // as inserted
      r.wal = Lsn{at++};
      wire.push_back(r);
    }
    StreamMessage c;
    c.kind = StreamMessage::Kind::commit;
    c.wal = Lsn{t.end - 10};
    c.end_lsn = Lsn{t.end};
    wire.push_back(c);
  }
  void keepalive(bool reply = false) {
    StreamMessage k;
    k.kind = StreamMessage::Kind::keepalive;
    k.wal = Lsn{lsn};
    k.reply_requested = reply;
    wire.push_back(k);
  }

  bool visible(const Row& r) const { return !r.deleted && !invisible.count(r.xid); }
  static bool pending(const Row& r) { return !r.published && !r.dead; }
  const Row& row(std::int64_t id) const { return rows.at(id); }
  std::size_t pending_count() const {
    return std::count_if(rows.begin(), rows.end(),
                         [](const auto& kv) { return pending(kv.second) && !kv.second.deleted; });
  }
};

class FakeStream : public replication::ReplicationStream {
 public:
  explicit FakeStream(FakeServer& s) : s_(s) {}
  bool prepare() override {
    s_.connected = true;
    return s_.slot_exists;
  }
  Created create_slot() override {
    REQUIRE(s_.connected);
    s_.calls.push_back("create");
    s_.slot_exists = true;
    s_.consistent_point = s_.slot_confirmed = s_.lsn;
    s_.snapshot_alive = true;
    if (s_.on_create) s_.on_create();
    return {Lsn{s_.consistent_point}, "snap-1"};
  }
  void release_snapshot() override {
    s_.calls.push_back("release");
    s_.snapshot_alive = false;
  }
  void start() override {
    REQUIRE(s_.connected);
    REQUIRE_FALSE(s_.snapshot_alive);
    s_.calls.push_back("start");
    s_.streaming = true;
    s_.wire.clear();
    for (const auto& t : s_.txns) {
      if (t.end > s_.slot_confirmed) s_.send(t);  // everything after the confirmed position
    }
  }
  std::optional<StreamMessage> read(milliseconds wait) override {
    REQUIRE(s_.streaming);
    if (s_.fail_next_read) {
      s_.fail_next_read = false;
      throw core::UnavailableError("replication stream: server closed the connection");
    }
    if (s_.wire.empty()) {
      if (s_.on_idle_read) s_.on_idle_read(wait);
      return std::nullopt;
    }
    StreamMessage m = s_.wire.front();
    s_.wire.pop_front();
    return m;
  }
  void send_status(Lsn, Lsn flushed, bool reply) override {
    REQUIRE(s_.streaming);
    s_.flushed.push_back(flushed.value);
    REQUIRE(flushed.value <= s_.lsn);
    s_.slot_confirmed = std::max(s_.slot_confirmed, flushed.value);
    if (reply) s_.keepalive();
  }
  void close() noexcept override {
    s_.calls.push_back("close");
    s_.connected = s_.streaming = s_.snapshot_alive = false;
    s_.wire.clear();
  }

 private:
  FakeServer& s_;
};

class FakeTable : public replication::ReplicationTable {
 public:
  explicit FakeTable(FakeServer& s) : s_(s) {}
  void connect() override {}
  Bound pending_bound_in_snapshot(const std::string& name) override {
    REQUIRE(s_.snapshot_alive);  // only while the replication connection is idle
    REQUIRE(name == "snap-1");
    s_.calls.push_back("import");
    Bound bound;  // exactly what committed before the consistent point, visible or not
    bound.snapshot = "S";
    for (const auto& [id, r] : s_.rows) {
      if (r.commit_end <= s_.consistent_point && !r.deleted && FakeServer::pending(r)) {
        bound.upto = std::max(bound.upto, id);
      }
    }
    return bound;
  }
  std::vector<std::uint64_t> not_yet_visible(const std::string& snapshot) override {
    REQUIRE(snapshot == "S");
    std::vector<std::uint64_t> xids;  // committed before the consistent point, not visible
    for (const auto& t : s_.txns) {
      if (t.end <= s_.consistent_point && s_.invisible.count(t.xid)) xids.push_back(t.xid);
    }
    return xids;
  }
  std::vector<std::uint64_t> committed_not_visible() override {
    return {s_.invisible.begin(), s_.invisible.end()};
  }
  bool visible(const std::vector<std::uint64_t>& xids) override {
    ++s_.visible_polls;
    if (s_.on_visible) s_.on_visible(s_.visible_polls);
    return std::none_of(xids.begin(), xids.end(), [&](std::uint64_t x) {
      return s_.invisible.count(static_cast<std::uint32_t>(x)) > 0;
    });
  }
  std::int64_t pending_bound() override {
    std::int64_t upto = 0;
    for (const auto& [id, r] : s_.rows) {
      if (s_.visible(r) && FakeServer::pending(r)) upto = std::max(upto, id);
    }
    return upto;
  }
  std::vector<core::OutboxEvent> pending_range(std::int64_t after_id, std::int64_t upto,
                                               std::optional<std::size_t> pending_upto,
                                               std::size_t limit, std::size_t max_bytes,
                                               const std::vector<std::string>& skip) override {
    ++s_.range_reads;
    auto skipped = [&](const std::string& t) {
      return std::find(skip.begin(), skip.end(), t) != skip.end();
    };
    if (pending_upto) {  // the read-ahead guard: exactly the relay's own up to after_id
      std::size_t n = 0;
      for (const auto& [id, r] : s_.rows) {
        if (id <= after_id && s_.visible(r) && FakeServer::pending(r) && !skipped(r.event.topic)) {
          ++n;
        }
      }
      if (n != *pending_upto) return {};
    }
    std::vector<core::OutboxEvent> out;
    std::size_t bytes = 0;
    for (const auto& [id, r] : s_.rows) {
      if (id <= after_id || id > upto || skipped(r.event.topic)) continue;
      if (!s_.visible(r) || !FakeServer::pending(r)) continue;
      if (out.size() >= limit || bytes >= max_bytes) break;
      bytes += core::event_bytes(r.event);
      out.push_back(r.event);
    }
    return out;
  }
  std::vector<core::OutboxEvent> pending_of_topics(const std::vector<std::string>& topics,
                                                   std::size_t limit,
                                                   std::size_t max_bytes) override {
    ++s_.topic_reads;
    std::vector<core::OutboxEvent> out;
    std::size_t bytes = 0;
    for (const auto& [id, r] : s_.rows) {
      if (std::find(topics.begin(), topics.end(), r.event.topic) == topics.end()) continue;
      if (!s_.visible(r) || !FakeServer::pending(r)) continue;
      if (out.size() >= limit || bytes >= max_bytes) break;
      bytes += core::event_bytes(r.event);
      out.push_back(r.event);
    }
    return out;
  }
  std::vector<core::OutboxEvent> pending_rows(const std::vector<std::int64_t>& ids,
                                              std::size_t limit, std::size_t max_bytes) override {
    std::vector<core::OutboxEvent> out;
    std::size_t bytes = 0;
    for (const auto& [id, r] : s_.rows) {
      if (std::find(ids.begin(), ids.end(), id) == ids.end()) continue;
      if (!s_.visible(r) || !FakeServer::pending(r)) continue;
      if (out.size() >= limit || bytes >= max_bytes) break;
      bytes += core::event_bytes(r.event);
      out.push_back(r.event);
    }
    return out;
  }
  replication::RowCheck check(const std::vector<std::int64_t>& ids,
                              const std::vector<std::uint32_t>& xids) override {
    ++s_.checks;
    if (s_.on_check) s_.on_check(s_.checks);
    replication::RowCheck c;
    for (auto id : ids) {
      auto it = s_.rows.find(id);
      if (it != s_.rows.end() && s_.visible(it->second)) {
        c.pending[id] = FakeServer::pending(it->second);
      }
    }
    for (auto x : xids) {
      if (s_.invisible.count(x)) c.not_visible.insert(x);
    }
    return c;
  }
  void record_outcome(const core::BatchOutcome& outcome) override {
    if (s_.fail_next_mark) {
      s_.fail_next_mark = false;
      throw core::UnavailableError("PostgreSQL: server closed the connection");
    }
    // As pg::OutboxRows: every id must match a visible row, or nothing is recorded; a row
    // gone is reported instead (invariant gone-row-reported).
    for (auto id : outcome.published) {
      if (s_.gone_on_mark.count(id)) continue;
      auto it = s_.rows.find(id);
      if (it == s_.rows.end() || !s_.visible(it->second) || it->second.dead) {
        throw core::UnavailableError("marking published matched fewer rows");
      }
    }
    for (auto id : outcome.published) {
      if (!s_.gone_on_mark.count(id)) {
        s_.rows.at(id).published = true;
        continue;
      }
      core::VanishedRow v;
      v.id = id;
      v.acknowledged = true;
      s_.vanished.push_back(v);
    }
    for (const auto& f : outcome.retry) s_.rows.at(f.id).event.attempts++;
    for (const auto& f : outcome.dead_letter) {
      s_.rows.at(f.id).event.attempts++;
      s_.rows.at(f.id).dead = true;
    }
  }
  std::vector<core::VanishedRow> take_vanished() override {
    std::vector<core::VanishedRow> out;
    out.swap(s_.vanished);
    return out;
  }

 private:
  FakeServer& s_;
};

struct Rig {
  FakeServer server;
  FakeTable table{server};
  FakeStream stream{server};
  FakeClock clock;
  bool stop = false;
  replication::ReplicationSourceOptions options;
  std::unique_ptr<ReplicationSource> source;

  Rig() {
    options.status_interval = milliseconds(1000);
    options.heartbeat_interval = milliseconds(1000);
    options.visibility_retry = milliseconds(2);
    server.on_idle_read = [this](milliseconds wait) { clock.advance(wait); };
  }
  ReplicationSource& make() {
    source =
        std::make_unique<ReplicationSource>(table, stream, clock, options, [this] { return stop; });
    return *source;
  }
  //! A batch published in full and recorded.
  std::vector<std::int64_t> publish(std::size_t limit = 100) {
    auto events = source->begin_batch(limit, 1 << 20, {});
    core::BatchOutcome o;
    for (const auto& e : events) o.published.push_back(e.id);
    if (!events.empty()) source->record_outcome(o);
    return o.published;
  }
};

std::vector<std::int64_t> ids_of(const std::vector<core::OutboxEvent>& events) {
  std::vector<std::int64_t> ids;
  for (const auto& e : events) ids.push_back(e.id);
  return ids;
}

using Ids = std::vector<std::int64_t>;

}  // namespace

TEST_CASE("first start: the snapshot's pending rows are drained, then the stream follows",
          "[replication][handover]") {
  Rig rig;
  auto before = rig.server.commit({"a", "b", "c"});
  rig.server.rows.at(before[1]).published = true;  // already published by polling mode
  Ids during;
  // A writer commits right after the consistent point, before the drain reads its list.
  rig.server.on_create = [&] { during = rig.server.commit({"a"}); };
  auto& source = rig.make();

  CHECK(rig.publish() == Ids{before[0], before[2]});
  CHECK(source.phase() == Phase::draining);
  // The ids were read while the exported snapshot lived, then it was released; no stream.
  CHECK(rig.server.calls == std::vector<std::string>{"create", "import", "release"});

  auto after = rig.server.commit({"b"});
  CHECK(rig.publish() == Ids{during[0], after[0]});  // the drain ended: the stream's rows
  CHECK(source.phase() == Phase::streaming);
  CHECK(rig.server.pending_count() == 0);
  CHECK(rig.server.calls.back() == "start");
  CHECK(source.confirmed().value == rig.server.txns.back().end);
}

TEST_CASE("first start: a row the slot's snapshot shows, not yet visible, is waited for",
          "[replication][handover][visibility]") {
  Rig rig;
  auto before = rig.server.commit({"a"});
  // Committed just before the consistent point, still in the proc array (a synchronous
  // standby's wait): the exported snapshot shows it, new snapshots do not yet.
  auto late = rig.server.commit({"b"}, /*visible=*/false);
  std::uint32_t xid = rig.server.row(late[0]).xid;
  rig.server.on_visible = [&](int n) {
    if (n == 30) rig.server.invisible.erase(xid);
  };
  auto& source = rig.make();

  CHECK(rig.publish() == Ids{before[0], late[0]});  // not dropped from the list
  CHECK(rig.server.visible_polls == 30);
  CHECK(rig.clock.sleeps.size() == 29);
  CHECK(rig.publish().empty());
  CHECK(source.phase() == Phase::streaming);
  CHECK(rig.server.pending_count() == 0);
}

TEST_CASE("the drain does not end while one of its rows is unresolved", "[replication][handover]") {
  Rig rig;
  auto old = rig.server.commit({"a", "b", "c"});
  auto& source = rig.make();

  auto batch = source.begin_batch(100, 1 << 20, {});
  REQUIRE(ids_of(batch) == old);
  core::BatchOutcome o;  // Kafka timed out on the second row
  o.published = {old[0], old[2]};
  o.left_pending = 1;
  source.record_outcome(o);
  CHECK(source.phase() == Phase::draining);
  CHECK(source.drain_upto() == old[2]);

  auto newer = rig.server.commit({"b"});  // a newer row of the same key meanwhile
  CHECK(source.wait_for_rows(milliseconds(100)));
  batch = source.begin_batch(100, 1 << 20, {});
  REQUIRE(ids_of(batch) == Ids{old[1]});  // not the newer row: the stream is not read yet
  o = {};
  o.retry = {{old[1], "Kafka: Broker: Unknown topic or partition"}};
  source.record_outcome(o);
  CHECK(source.phase() == Phase::draining);
  CHECK(rig.server.row(old[1]).event.attempts == 1);

  batch = source.begin_batch(100, 1 << 20, {});
  REQUIRE(ids_of(batch) == Ids{old[1]});
  CHECK(batch[0].attempts == 1);
  o = {};
  o.dead_letter = {{old[1], "too many attempts"}};
  source.record_outcome(o);
  CHECK(source.phase() == Phase::draining);
  CHECK(std::count(rig.server.calls.begin(), rig.server.calls.end(), "start") == 0);

  CHECK(rig.publish() == newer);  // now the stream
  CHECK(source.phase() == Phase::streaming);
}

TEST_CASE("the drain reads by state up to its bound, rows left out for their bytes come next",
          "[replication][handover]") {
  Rig rig;
  auto old = rig.server.commit({"a", "b", "c", "d", "e"});
  rig.server.rows.at(old[1]).published = true;  // not pending
  Ids newer;  // committed right after the consistent point, above the bound: the stream's
  rig.server.on_create = [&] { newer = rig.server.commit({"f"}); };
  auto& source = rig.make();

  // Two rows per batch, bytes for one row only: the first pending row always comes, the
  // second comes with the next read.
  auto batch = source.begin_batch(2, 1, {});
  CHECK(ids_of(batch) == Ids{old[0]});  // not recorded: taken as not delivered
  CHECK(source.drain_upto() == old[4]);
  rig.server.rows.at(old[0]).published = true;  // marked meanwhile (a recorded outcome)
  batch = source.begin_batch(2, 1 << 20, {});
  CHECK(ids_of(batch) == Ids{old[2], old[3]});
  core::BatchOutcome o;
  o.published = ids_of(batch);
  source.record_outcome(o);
  CHECK(rig.publish(2) == Ids{old[4]});
  CHECK(source.phase() == Phase::draining);
  CHECK(rig.publish(2) == newer);  // the drain found nothing more: the stream
  CHECK(source.phase() == Phase::streaming);
}

TEST_CASE("the confirmed position never passes an unresolved event", "[replication][confirm]") {
  Rig rig;
  auto& source = rig.make();
  CHECK(rig.publish().empty());  // nothing to drain; streaming
  REQUIRE(source.phase() == Phase::streaming);
  auto first = rig.server.commit({"a"});
  std::uint64_t first_end = rig.server.lsn;
  auto second = rig.server.commit({"b"});
  std::uint64_t second_end = rig.server.lsn;

  auto batch = source.begin_batch(100, 1 << 20, {});
  REQUIRE(ids_of(batch) == Ids{first[0], second[0]});
  core::BatchOutcome o;
  o.published = {second[0]};
  o.retry = {{first[0], "Kafka: Broker: Unknown topic or partition"}};
  source.record_outcome(o);
  CHECK(source.confirmed().value < first_end);
  rig.server.keepalive();  // the server's position is not confirmed while a row is retried
  CHECK(source.wait_for_rows(milliseconds(0)));
  CHECK(source.confirmed().value < first_end);

  batch = source.begin_batch(100, 1 << 20, {});
  REQUIRE(ids_of(batch) == Ids{first[0]});
  CHECK(batch[0].attempts == 1);
  o = {};
  o.published = {first[0]};
  source.record_outcome(o);
  CHECK(source.confirmed().value == second_end);
  CHECK(rig.server.slot_confirmed == second_end);  // reported at once
  for (auto f : rig.server.flushed) CHECK((f < first_end || f >= second_end));
}

TEST_CASE("a keepalive's position is confirmed only when nothing is pending",
          "[replication][confirm]") {
  Rig rig;
  auto& source = rig.make();
  rig.publish();
  rig.server.commit_other_table();
  rig.server.keepalive();
  CHECK_FALSE(source.wait_for_rows(milliseconds(0)));
  CHECK(source.confirmed().value == rig.server.lsn);

  auto row = rig.server.commit({"a"});
  std::uint64_t row_end = rig.server.lsn;
  auto batch = source.begin_batch(100, 1 << 20, {});  // open batch, not yet acknowledged
  rig.server.commit_other_table();
  rig.server.keepalive();
  // Nothing recorded for the row (not delivered): the next by-state read sends it again.
  CHECK(source.wait_for_rows(milliseconds(0)));  // the unrecorded row is still there
  CHECK(source.confirmed().value < row_end);
  CHECK(rig.publish() == row);
  CHECK(source.confirmed().value >= row_end);
}

TEST_CASE("while Kafka keeps a batch waiting, the position is reported every status_interval",
          "[replication][confirm]") {
  Rig rig;
  auto& source = rig.make();
  rig.publish();
  rig.server.commit({"a"});
  auto batch = source.begin_batch(100, 1 << 20, {});
  REQUIRE(batch.size() == 1);
  auto reports = rig.server.flushed.size();
  rig.clock.advance(milliseconds(500));
  source.keep_alive();
  CHECK(rig.server.flushed.size() == reports);  // not due yet
  rig.clock.advance(milliseconds(600));
  source.keep_alive();
  CHECK(rig.server.flushed.size() == reports + 1);
  CHECK(rig.server.wire.empty());  // nothing read meanwhile
}

TEST_CASE("a streamed row not yet visible is waited for, never taken for marked",
          "[replication][visibility]") {
  Rig rig;
  rig.options.status_interval = milliseconds(10);
  auto& source = rig.make();
  rig.publish();
  auto row = rig.server.commit({"a"}, /*visible=*/false);
  std::uint32_t xid = rig.server.row(row[0]).xid;
  // It becomes visible only after many looks (a synchronous standby's wait, say).
  rig.server.on_check = [&](int n) {
    if (n == 400) rig.server.invisible.erase(xid);
  };
  auto reports = rig.server.flushed.size();

  auto batch = source.begin_batch(100, 1 << 20, {});

  CHECK(ids_of(batch) == row);  // published, not dropped
  CHECK(rig.server.checks == 400);
  CHECK(rig.clock.sleeps.size() == 399);
  CHECK(rig.server.flushed.size() > reports);  // the walsender was kept content meanwhile
  core::BatchOutcome o;
  o.published = row;
  source.record_outcome(o);  // visible now: the mark matches
  CHECK(rig.server.row(row[0]).published);
}

TEST_CASE("a wait for visibility ends when the relay stops", "[replication][visibility]") {
  Rig rig;
  auto& source = rig.make();
  rig.publish();
  rig.server.commit({"a"}, /*visible=*/false);
  rig.server.on_check = [&](int n) { rig.stop = n == 3; };
  CHECK_THROWS_AS(source.begin_batch(100, 1 << 20, {}), core::UnavailableError);
  CHECK(source.phase() == Phase::stopped);
  CHECK(rig.server.pending_count() == 1);
}

TEST_CASE("streamed rows already marked, or deleted, are dropped and confirmed past",
          "[replication][visibility]") {
  Rig rig;
  auto& source = rig.make();
  rig.publish();
  auto rows = rig.server.commit({"a", "b", "c"});
  rig.server.rows.at(rows[0]).published = true;
  rig.server.rows.at(rows[1]).deleted = true;

  CHECK(rig.publish() == Ids{rows[2]});
  CHECK(source.confirmed().value == rig.server.lsn);
}

TEST_CASE(
    "restart: the stream resumes at the confirmed position, what it re-sends that is "
    "marked is dropped, and pending rows before it are drained first",
    "[replication][restart]") {
  Rig rig;
  auto& source = rig.make();
  rig.publish();
  auto a = rig.server.commit({"a"});
  auto b = rig.server.commit({"b"});
  auto c = rig.server.commit({"c"});
  std::uint64_t a_end = rig.server.txns[0].end;

  auto batch = source.begin_batch(100, 1 << 20, {});
  REQUIRE(ids_of(batch) == Ids{a[0], b[0], c[0]});
  core::BatchOutcome o;
  o.published = {b[0], c[0]};  // a's delivery timed out: it holds the position
  o.left_pending = 1;
  source.record_outcome(o);
  CHECK(rig.server.slot_confirmed < a_end);

  rig.server.fail_next_read = true;  // the connection drops
  auto d = rig.server.commit({"a"});
  CHECK_THROWS_AS(source.begin_batch(100, 1 << 20, {}), core::UnavailableError);
  CHECK(source.phase() == Phase::stopped);

  // The restart drains every row pending now (a and d), then streams a, b, c, d again:
  // all marked by then, so nothing comes twice.
  std::vector<std::int64_t> published;
  for (int i = 0; i < 5; ++i) {
    for (auto id : rig.publish()) published.push_back(id);
  }
  CHECK(published == Ids{a[0], d[0]});
  CHECK(source.phase() == Phase::streaming);
  CHECK(rig.server.pending_count() == 0);
  CHECK(source.confirmed().value == rig.server.lsn);
}

TEST_CASE("restart after an interrupted first-start drain publishes the rest before the stream",
          "[replication][restart]") {
  Rig rig;
  auto old = rig.server.commit({"a", "b", "c", "d"});
  auto& source = rig.make();
  CHECK(rig.publish(2) == Ids{old[0], old[1]});
  auto newer = rig.server.commit({"c"});

  auto batch = source.begin_batch(1, 1 << 20, {});
  REQUIRE(ids_of(batch) == Ids{old[2]});
  rig.server.fail_next_mark = true;  // recording fails: everything is reset
  core::BatchOutcome o;
  o.published = ids_of(batch);
  CHECK_THROWS_AS(source.record_outcome(o), core::UnavailableError);
  CHECK(source.phase() == Phase::stopped);
  source.record_outcome(o);  // as BatchRelay does before reading anything else
  CHECK(rig.server.row(old[2]).published);

  // The slot exists now: its confirmed position is the consistent point; old[3] committed
  // before it is drained, the newer row (after it) also (it is pending now), and the
  // stream then brings the newer row again, marked: dropped.
  CHECK(rig.publish() == Ids{old[3], newer[0]});
  CHECK(source.phase() == Phase::draining);
  CHECK(rig.publish().empty());
  CHECK(source.phase() == Phase::streaming);
  CHECK(rig.server.pending_count() == 0);
  CHECK(std::count(rig.server.calls.begin(), rig.server.calls.end(), "create") == 1);
}

TEST_CASE("restart waits until committed transactions are visible before listing the rows",
          "[replication][restart]") {
  Rig rig;
  rig.server.slot_exists = true;  // e.g. made by hand, or an earlier session's
  auto late = rig.server.commit({"a"}, /*visible=*/false);  // still in the proc array
  rig.server.slot_confirmed = rig.server.lsn;               // the stream will not bring it
  std::uint32_t xid = rig.server.row(late[0]).xid;
  rig.server.on_visible = [&](int n) {
    if (n == 50) rig.server.invisible.erase(xid);
  };
  auto& source = rig.make();

  CHECK(rig.publish() == late);
  CHECK(rig.server.visible_polls == 50);
  CHECK(rig.clock.sleeps.size() == 49);
  CHECK(source.phase() == Phase::draining);
  CHECK(rig.publish().empty());
  CHECK(source.phase() == Phase::streaming);
}

TEST_CASE("with the relay: rows pending at the first start go out first, whatever Kafka does",
          "[replication][handover]") {
  Rig rig;
  std::vector<std::string> keys{"k0", "k1", "k2"};
  std::vector<std::string> keys12;
  for (int i = 0; i < 12; ++i) keys12.push_back(keys[i % 3]);
  auto old = rig.server.commit(keys12);
  auto& source = rig.make();
  FakePublisher kafka;
  for (auto id : old) kafka.script[id] = {false, core::FailureKind::transient, "timed out"};
  core::BatchRelayOptions o;
  o.batch_size = 5;
  o.interval = std::chrono::milliseconds(0);  // no idle wait between the cycles
  core::BatchRelay relay(source, kafka, rig.clock, o);

  // Kafka down: every batch of the drain fails, for a while.
  for (int i = 0; i < 6; ++i) {
    auto report = outbox::testing::run_cycle(relay);
    CHECK(report.left_pending == report.read);
    if (i == 2) rig.server.commit({"k0", "k1"});  // newer rows of the same keys
  }
  CHECK(source.phase() == Phase::draining);
  CHECK(rig.server.pending_count() == 14);
  kafka.script.clear();  // Kafka is back
  for (int i = 0; i < 10 && rig.server.pending_count() > 0; ++i) outbox::testing::run_cycle(relay);

  CHECK(rig.server.pending_count() == 0);
  std::map<std::string, std::vector<std::int64_t>> per_key;
  for (const auto& m : kafka.sent) per_key[*m.key].push_back(std::stoll(m.headers.at(1).second));
  for (const auto& [key, ids] : per_key) {  // first deliveries in id order, old before newer
    std::vector<std::int64_t> firsts;
    for (auto id : ids) {
      if (std::find(firsts.begin(), firsts.end(), id) == firsts.end()) firsts.push_back(id);
    }
    CHECK(std::is_sorted(firsts.begin(), firsts.end()));
  }
}

// --- pipelined (several reads in flight) -------------------------------------------------------

namespace {

void record(ReplicationSource& source, const Ids& published) {
  core::BatchOutcome o;
  o.published = published;
  source.record_outcome(o);
}

Ids cat(std::initializer_list<Ids> parts) {
  Ids all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

}  // namespace

TEST_CASE("a row gone when marked reaches the core through the source and holds nothing back",
          "[replication][confirm]") {
  Rig rig;
  auto& source = rig.make();
  rig.publish();
  auto rows = rig.server.commit({"a", "b"});
  auto batch = source.begin_batch(100, 1 << 20, {});
  REQUIRE(ids_of(batch) == rows);
  rig.server.gone_on_mark.insert(rows[0]);  // deleted between its send and its mark
  core::BatchOutcome o;
  o.published = rows;
  source.record_outcome(o);
  auto gone = source.take_vanished();
  REQUIRE(gone.size() == 1);
  CHECK(gone[0].id == rows[0]);
  CHECK(source.take_vanished().empty());
  CHECK(rig.server.row(rows[1]).published);
  CHECK(rig.publish().empty());
  CHECK(source.confirmed().value == rig.server.lsn);  // resolved with the rest
}

TEST_CASE(
    "drain: reads ahead above the last id read, groups recorded in any order, hand-over only "
    "at a by-state read once the list is empty",
    "[replication][pipeline][handover]") {
  Rig rig;
  auto old = rig.server.commit({"a", "b", "c", "d", "e", "f"});
  auto& source = rig.make();

  auto first = source.begin_batch(2, 1 << 20, {});
  REQUIRE(ids_of(first) == Ids{old[0], old[1]});
  auto later = rig.server.commit({"a"});  // after the consistent point: the stream's
  auto second = source.read_after(old[1], 2, 2, 1 << 20, {});
  REQUIRE(ids_of(second) == Ids{old[2], old[3]});
  // The core has one row fewer in flight than the list up to old[3] (it left one unsent,
  // its topic blocked): nothing may overtake it.
  CHECK(source.read_after(old[3], 3, 2, 1 << 20, {}).empty());
  auto third = source.read_after(old[3], 4, 2, 1 << 20, {});
  REQUIRE(ids_of(third) == Ids{old[4], old[5]});
  // The end of the list: a read-ahead returns nothing and never hands over.
  CHECK(source.read_after(old[5], 6, 2, 1 << 20, {}).empty());
  CHECK(source.phase() == Phase::draining);

  // Answers recorded out of read order; old[1]'s delivery failed (not recorded).
  record(source, {old[4], old[5]});
  record(source, {old[3], old[0]});
  record(source, {old[2]});
  CHECK(source.phase() == Phase::draining);

  // The next by-state read (the window drained) sends the failed row again, first.
  auto again = source.begin_batch(10, 1 << 20, {});
  REQUIRE(ids_of(again) == Ids{old[1]});
  CHECK(source.read_after(old[1], 1, 10, 1 << 20, {}).empty());
  record(source, {old[1]});
  CHECK(source.phase() == Phase::draining);  // rows may still be in flight: no stream yet
  CHECK(std::count(rig.server.calls.begin(), rig.server.calls.end(), "start") == 0);

  CHECK(ids_of(source.begin_batch(10, 1 << 20, {})) == later);  // by state: the stream
  CHECK(source.phase() == Phase::streaming);
}

TEST_CASE("drain: a read-ahead window of ids no longer pending is passed over",
          "[replication][pipeline][handover]") {
  Rig rig;
  auto old = rig.server.commit({"a", "b", "c", "d", "e", "f", "g"});
  auto& source = rig.make();
  REQUIRE(ids_of(source.begin_batch(1, 1 << 20, {})) == Ids{old[0]});
  for (int i = 1; i <= 4; ++i) rig.server.rows.at(old[i]).published = true;  // resolved
  // Windows of two ids: old[1..4] are no longer pending and leave the list.
  CHECK(ids_of(source.read_after(old[0], 1, 2, 1 << 20, {})) == Ids{old[5], old[6]});
}

TEST_CASE(
    "stream: reads ahead in commit order, groups recorded out of order never confirm past an "
    "unacknowledged row",
    "[replication][pipeline][confirm]") {
  Rig rig;
  auto& source = rig.make();
  rig.publish();
  REQUIRE(source.phase() == Phase::streaming);
  auto t1 = rig.server.commit({"a", "b"});
  std::uint64_t end1 = rig.server.lsn;
  auto t2 = rig.server.commit({"c"});
  auto t3 = rig.server.commit({"d", "e"});
  std::uint64_t end3 = rig.server.lsn;

  REQUIRE(ids_of(source.begin_batch(2, 1 << 20, {})) == t1);
  REQUIRE(ids_of(source.read_after(t1[1], 2, 2, 1 << 20, {})) == Ids{t2[0], t3[0]});
  CHECK(source.read_after(t3[0], 3, 2, 1 << 20, {}).empty());  // the core left one unsent
  REQUIRE(ids_of(source.read_after(t3[0], 4, 2, 1 << 20, {})) == Ids{t3[1]});
  rig.server.keepalive();  // with rows in flight, the server's position is not confirmed
  CHECK(source.read_after(t3[1], 5, 2, 1 << 20, {}).empty());

  record(source, {t3[1], t3[0]});
  CHECK(source.confirmed().value < end1);
  record(source, {t2[0]});
  record(source, {t1[1]});
  CHECK(source.confirmed().value < end1);  // t1[0] is still unacknowledged
  CHECK(rig.server.slot_confirmed < end1);
  record(source, {t1[0]});
  CHECK(source.confirmed().value >= end3);
  CHECK(rig.server.slot_confirmed >= end3);
  for (auto f : rig.server.flushed) CHECK((f < end1 || f >= end3));
}

TEST_CASE(
    "stream: rows of a failed delivery are sent again first, in their order, read again from "
    "the table",
    "[replication][pipeline][confirm]") {
  Rig rig;
  auto& source = rig.make();
  rig.publish();
  auto t1 = rig.server.commit({"k", "k"});
  std::uint64_t end1 = rig.server.lsn;
  auto t2 = rig.server.commit({"k"});
  auto t3 = rig.server.commit({"m"});

  REQUIRE(ids_of(source.begin_batch(2, 1 << 20, {})) == t1);
  REQUIRE(ids_of(source.read_after(t1[1], 2, 2, 1 << 20, {})) == Ids{t2[0], t3[0]});
  // t1[1] timed out, and t2[0] after it in its partition; the others were acknowledged.
  core::BatchOutcome o;
  o.published = {t3[0], t1[0]};
  o.retry = {{t1[1], "Kafka: timed out"}};
  source.record_outcome(o);
  CHECK(rig.server.row(t1[1]).event.attempts == 1);
  CHECK(source.confirmed().value < end1);
  auto t4 = rig.server.commit({"k"});

  // The window drained: by state, the unresolved rows first, in decoded order, then newer.
  auto again = source.begin_batch(100, 1 << 20, {});
  REQUIRE(ids_of(again) == Ids{t1[1], t2[0], t4[0]});
  for (const auto& e : again) {
    CHECK(e.payload == rig.server.row(e.id).event.payload);  // read again, whole
    CHECK(e.key == rig.server.row(e.id).event.key);
    CHECK(e.attempts == rig.server.row(e.id).event.attempts);
  }
  record(source, ids_of(again));
  CHECK(rig.server.pending_count() == 0);
  CHECK(source.confirmed().value == rig.server.lsn);
}

TEST_CASE(
    "stream: a by-state read recorded in groups, without read_after, is a complete use (one "
    "Kafka transaction per read)",
    "[replication][pipeline]") {
  Rig rig;
  auto old = rig.server.commit({"a", "b"});
  auto& source = rig.make();
  REQUIRE(ids_of(source.begin_batch(100, 1 << 20, {})) == old);  // the drain
  record(source, {old[1]});
  record(source, {old[0]});
  auto t1 = rig.server.commit({"a", "b", "c"});
  REQUIRE(ids_of(source.begin_batch(100, 1 << 20, {})) == t1);  // the stream
  record(source, {t1[2]});
  record(source, {t1[0], t1[1]});
  CHECK(source.confirmed().value == rig.server.lsn);
  // An aborted transaction records nothing: the next read sends its rows again.
  auto t2 = rig.server.commit({"d"});
  REQUIRE(ids_of(source.begin_batch(100, 1 << 20, {})) == t2);
  CHECK(ids_of(source.begin_batch(100, 1 << 20, {})) == t2);
  record(source, t2);
  CHECK(rig.server.pending_count() == 0);
  CHECK(source.confirmed().value == rig.server.lsn);
}

TEST_CASE(
    "stream: rows of a skipped topic are deferred to the table, confirmed past, and come in id "
    "order before later rows of their topic, a row the core left unsent is not overtaken",
    "[replication][pipeline][skip]") {
  Rig rig;
  auto& source = rig.make();
  rig.publish();
  rig.server.topic = "audit";
  auto a1 = rig.server.commit({"x"});
  rig.server.topic = "orders";
  auto o1 = rig.server.commit({"y"});
  std::uint64_t end_o1 = rig.server.lsn;

  REQUIRE(ids_of(source.begin_batch(100, 1 << 20, {"audit"})) == o1);  // a1 deferred
  CHECK(source.deferred_topics() == std::set<std::string>{"audit"});
  CHECK(source.unresolved() == 1);  // o1 only: nothing of a1 is held
  rig.server.topic = "audit";
  auto a2 = rig.server.commit({"x"});
  rig.server.topic = "orders";
  auto o2 = rig.server.commit({"y"});
  record(source, o1);
  CHECK(source.confirmed().value >= end_o1);  // past a1: it waits in the table, not the slot
  // "audit" is no longer skipped: its rows come from the table first, at a by-state read.
  CHECK(source.read_after(o1[0], 0, 100, 1 << 20, {}).empty());
  REQUIRE(ids_of(source.begin_batch(100, 1 << 20, {})) == cat({a1, a2, o2}));
  record(source, cat({a1, a2, o2}));
  CHECK(source.confirmed().value == rig.server.lsn);
  CHECK(source.begin_batch(100, 1 << 20, {}).empty());  // none of audit's left: streamed again
  CHECK(source.deferred_topics().empty());

  // The core leaves a3 unsent (it finds "audit" blocked while sending this read): one row
  // fewer in flight than handed out, so no read-ahead, and a3 comes first by state.
  rig.server.topic = "audit";
  auto a3 = rig.server.commit({"x"});
  rig.server.topic = "orders";
  auto o3 = rig.server.commit({"y"});
  REQUIRE(ids_of(source.begin_batch(100, 1 << 20, {})) == cat({a3, o3}));
  rig.server.topic = "audit";
  rig.server.commit({"x"});
  CHECK(source.read_after(o3[0], 1, 100, 1 << 20, {}).empty());
  record(source, o3);
  CHECK(ids_of(source.begin_batch(100, 1 << 20, {}))[0] == a3[0]);
}

namespace {

//! Runs the relay over `rig`'s source with a publisher on which key "stuck" never answers,
//! until every other row is marked (plus a few polls); returns what was sent.
std::vector<std::int64_t> run_with_a_stuck_partition(Rig& rig, FakePublisher& kafka,
                                                     std::size_t stuck_rows) {
  core::BatchRelayOptions o;
  o.batch_size = 4;
  o.max_in_flight_rows = 100;
  o.shutdown_timeout = milliseconds(1000);
  kafka.clock = &rig.clock;
  std::atomic<bool> stop{false};
  int polls_after = 0;
  kafka.stuck = [&](const core::Message& m) {
    if (rig.server.pending_count() == stuck_rows && ++polls_after > 5) stop = true;
    return m.key == "stuck";
  };
  core::BatchRelay relay(*rig.source, kafka, rig.clock, o);
  relay.run(stop);
  std::vector<std::int64_t> sent;
  for (const auto& m : kafka.sent) sent.push_back(std::stoll(m.headers.at(1).second));
  return sent;
}

}  // namespace

TEST_CASE("with the relay: a partition that never answers holds only its own rows, draining",
          "[replication][pipeline][stuck]") {
  Rig rig;
  std::vector<std::string> keys;
  for (int i = 0; i < 20; ++i) keys.push_back(i % 2 == 0 ? "stuck" : "fine");
  auto old = rig.server.commit(keys);
  auto& source = rig.make();
  FakePublisher kafka;

  auto sent = run_with_a_stuck_partition(rig, kafka, 10);

  for (std::size_t i = 0; i < old.size(); ++i) {
    INFO("row " << old[i]);
    CHECK(rig.server.row(old[i]).published == (keys[i] == "fine"));
  }
  CHECK(sent.size() == 20);  // read ahead past the stuck rows
  CHECK(kafka.max_unanswered > 4);
  CHECK(source.phase() == Phase::draining);  // the stuck rows hold the hand-over
  CHECK(std::count(rig.server.calls.begin(), rig.server.calls.end(), "start") == 0);
}

TEST_CASE(
    "with the relay: a partition that never answers holds only its own rows, streaming, the "
    "confirmed position stays before them, and they follow in order once it answers",
    "[replication][pipeline][stuck]") {
  Rig rig;
  auto& source = rig.make();
  rig.publish();
  REQUIRE(source.phase() == Phase::streaming);
  std::uint64_t first_stuck_end = 0;
  for (int i = 0; i < 20; ++i) {
    rig.server.commit({i % 2 == 0 ? "stuck" : "fine"});
    if (i == 0) first_stuck_end = rig.server.lsn;
  }
  FakePublisher kafka;

  auto sent = run_with_a_stuck_partition(rig, kafka, 10);

  for (const auto& [id, row] : rig.server.rows) {
    INFO("row " << id);
    CHECK(row.published == (row.event.key == "fine"));
  }
  CHECK(sent.size() == 20);
  CHECK(source.confirmed().value < first_stuck_end);
  CHECK(rig.server.slot_confirmed < first_stuck_end);

  // The partition answers again: a new run sends the stuck rows again, in order.
  FakePublisher healed;
  healed.clock = &rig.clock;
  std::atomic<bool> stop{false};
  rig.server.on_idle_read = [&](milliseconds wait) {  // idle: everything was handled
    rig.clock.advance(wait);
    if (rig.server.pending_count() == 0) stop = true;
  };
  core::BatchRelayOptions o;
  o.batch_size = 4;
  core::BatchRelay relay(source, healed, rig.clock, o);
  relay.run(stop);
  CHECK(rig.server.pending_count() == 0);
  std::vector<std::int64_t> again;
  for (const auto& m : healed.sent) again.push_back(std::stoll(m.headers.at(1).second));
  CHECK(again.size() == 10);
  CHECK(std::is_sorted(again.begin(), again.end()));
  CHECK(source.confirmed().value == rig.server.lsn);
}

// Regression: one topic Kafka refuses stopped every topic in replication mode once batch_size
// of its rows were parked (the stream was no longer read, the loop spun, the slot held WAL),
// and after a restart the drain read the refused rows again every turn.
TEST_CASE(
    "with the relay: a refused topic with 10x batch_size rows holds none of the others, "
    "draining and streaming, across a restart, its rows follow in id order once it is back",
    "[replication][skip][regression]") {
  Rig rig;
  const std::size_t batch = 4;
  auto commit_mix = [&](int n) {
    std::vector<std::int64_t> refused;
    for (int i = 0; i < n; ++i) {
      rig.server.topic = "refused";
      auto r = rig.server.commit({"r" + std::to_string(i % 3)});
      refused.insert(refused.end(), r.begin(), r.end());
      rig.server.topic = "orders";
      rig.server.commit({"o" + std::to_string(i % 3)});
    }
    return refused;
  };
  auto refused = commit_mix(10 * batch);  // pending at the first start: the drain's
  FakePublisher kafka;
  kafka.clock = &rig.clock;
  kafka.blocked_topics = {"refused"};
  core::BatchRelayOptions o;
  o.batch_size = batch;
  o.max_in_flight_rows = 3 * batch;
  auto orders_pending = [&] {
    return std::count_if(rig.server.rows.begin(), rig.server.rows.end(), [](const auto& kv) {
      return kv.second.event.topic == "orders" && FakeServer::pending(kv.second);
    });
  };
  auto run = [&](const std::function<bool()>& done) {
    std::atomic<bool> stop{false};
    int idle = 0;
    rig.server.on_idle_read = [&](milliseconds wait) {
      rig.clock.advance(wait);
      if (done() && ++idle > 3) stop = true;
    };
    int reads_before = rig.server.range_reads + rig.server.topic_reads;
    core::BatchRelay relay(*rig.source, kafka, rig.clock, o);
    relay.run(stop);
    return rig.server.range_reads + rig.server.topic_reads - reads_before;
  };

  auto& source = rig.make();
  run([&] { return orders_pending() == 0; });  // the drain, then the hand-over
  CHECK(source.phase() == Phase::streaming);
  CHECK(source.deferred_topics() == std::set<std::string>{"refused"});
  auto more = commit_mix(10 * batch);  // while streaming
  refused.insert(refused.end(), more.begin(), more.end());
  run([&] { return orders_pending() == 0; });
  CHECK(orders_pending() == 0);
  CHECK(source.deferred_topics() == std::set<std::string>{"refused"});
  CHECK(source.unresolved() == 0);  // nothing of the refused rows is held in memory
  CHECK(source.confirmed().value == rig.server.lsn);  // and the slot holds no WAL for them
  for (auto id : refused) CHECK_FALSE(rig.server.row(id).published);
  for (const auto& m : kafka.sent) CHECK(m.topic != "refused");

  // A restart, the topic still refused: the drain leaves its rows alone (reads bounded).
  auto later = commit_mix(2 * batch);
  refused.insert(refused.end(), later.begin(), later.end());
  rig.make();
  int reads = run([&] { return orders_pending() == 0; });
  CHECK(orders_pending() == 0);
  CHECK(reads < 40);
  CHECK(rig.source->deferred_topics() == std::set<std::string>{"refused"});

  // The topic is back: its rows follow, each once, in id order; the stream takes it again.
  kafka.blocked_topics.clear();
  kafka.sent.clear();
  rig.clock.advance(std::chrono::minutes(10));  // past the topic's backoff
  run([&] { return rig.server.pending_count() == 0; });
  CHECK(rig.server.pending_count() == 0);
  std::vector<std::int64_t> sent;
  for (const auto& m : kafka.sent) sent.push_back(std::stoll(m.headers.at(1).second));
  CHECK(sent == refused);
  CHECK(rig.source->deferred_topics().empty());
}

// Regression: a transaction waiting for a synchronous standby held the stream's visibility
// wait polling PostgreSQL every 2 ms, without a health tick.
TEST_CASE("a long wait for visibility backs off and ticks the relay's health",
          "[replication][visibility][regression]") {
  Rig rig;
  int ticks = 0;
  rig.options.visibility_retry = milliseconds(2);
  rig.options.visibility_retry_max = milliseconds(100);
  rig.options.waiting = [&] { ++ticks; };
  std::vector<std::chrono::nanoseconds> waits;
  rig.options.visibility_waiting = [&](std::chrono::nanoseconds w) { waits.push_back(w); };
  auto& source = rig.make();
  rig.publish();
  REQUIRE(source.phase() == Phase::streaming);
  auto late = rig.server.commit({"a"}, /*visible=*/false);
  std::uint32_t xid = rig.server.row(late[0]).xid;
  rig.server.on_check = [&](int n) {
    if (n == 200) rig.server.invisible.erase(xid);
  };
  CHECK(ids_of(source.begin_batch(10, 1 << 20, {})) == late);
  CHECK(ticks == 199);
  REQUIRE(waits.size() == 200);  // each pause, then 0 once visible (the metric's gauge)
  CHECK(waits[198] > std::chrono::seconds(10));
  CHECK(waits.back() == std::chrono::nanoseconds(0));
  CHECK(rig.clock.sleeps.front() == milliseconds(2));
  CHECK(*std::max_element(rig.clock.sleeps.begin(), rig.clock.sleeps.end()) == milliseconds(100));
  CHECK(std::is_sorted(rig.clock.sleeps.begin(), rig.clock.sleeps.end()));
  CHECK(rig.clock.sleeps.size() < 250);  // about 20 s of waiting in 199 polls, not 10,000
}

// Regression: a stream whose messages come out of order (a row or a Commit without its Begin,
// a Begin inside a transaction) threw std::logic_error from ConfirmTracker, which no caller
// handled: it is input, and must stop the relay with a clear error, confirming nothing past it.
TEST_CASE("a stream out of order stops the relay with a clear error, confirming nothing past it",
          "[replication][confirm][regression]") {
  enum class Fault { row_without_begin, commit_without_begin, begin_inside_transaction };
  auto fault = GENERATE(Fault::row_without_begin, Fault::commit_without_begin,
                        Fault::begin_inside_transaction);
  Rig rig;
  auto& source = rig.make();
  CHECK(rig.publish().empty());  // nothing pending: the stream at once
  REQUIRE(source.phase() == Phase::streaming);
  auto first = rig.server.commit({"a"});
  CHECK(rig.publish() == first);
  const Lsn confirmed = source.confirmed();

  auto later = rig.server.commit({"b"});
  // The transaction's messages on the wire: Begin, row, Commit.
  REQUIRE(rig.server.wire.size() == 3);
  switch (fault) {
    case Fault::row_without_begin:
      rig.server.wire.pop_front();
      break;
    case Fault::commit_without_begin:
      rig.server.wire.erase(rig.server.wire.begin(), rig.server.wire.begin() + 2);
      break;
    case Fault::begin_inside_transaction:
      rig.server.wire.insert(rig.server.wire.begin() + 1, rig.server.wire.front());
      break;
  }
  try {
    source.begin_batch(100, 1 << 20, {});
    FAIL("no error");
  } catch (const core::FatalError& e) {
    CHECK_THAT(e.what(),
               Catch::Contains("replication slot outbox_relay") && Catch::Contains("out of order"));
  }
  CHECK(source.phase() == Phase::stopped);  // the connection closed
  CHECK(source.confirmed() == confirmed);   // nothing confirmed past the bad message
  CHECK(rig.server.slot_confirmed <= confirmed.value);
  CHECK(rig.server.row(later[0]).published == false);  // still pending: nothing lost
}

// Regression: a stream opened for a restart's drain was read only once the drain ended; the
// server's messages filled the socket, the server ended the connection (its tcp_user_timeout),
// and the next stream decoded again all the WAL since the slot's restart position.
TEST_CASE(
    "a stream opened for the drain is emptied while it runs, what it sent comes after, "
    "in order, and its failure is not lost",
    "[replication][regression]") {
  Rig rig;
  rig.server.slot_exists = rig.server.connected = true;
  rig.server.slot_confirmed = rig.server.lsn;
  replication::StreamSource src(rig.table, rig.stream, rig.clock, rig.options,
                                [] { return false; });
  const Lsn opened{rig.server.lsn};
  src.open_early(opened);
  rig.server.keepalive(/*reply=*/true);
  Ids written = rig.server.commit({"a", "b"});  // written while the drain runs
  rig.server.keepalive();

  SECTION("kept in order, keepalives answered with the unchanged position") {
    src.keep_alive();
    CHECK(rig.server.wire.empty());  // the socket is emptied
    REQUIRE(rig.server.flushed.size() == 1);
    CHECK(rig.server.flushed[0] <= opened.value);  // nothing confirmed for the drain's sake
    src.start({}, opened);                         // the drain is done
    CHECK(ids_of(src.begin(10, 1 << 20, {})) == written);
  }
  SECTION("a failed read while the drain runs is thrown by the first read after it") {
    rig.server.fail_next_read = true;
    src.keep_alive();  // never throws
    src.start({}, opened);
    CHECK_THROWS_AS(src.begin(10, 1 << 20, {}), core::UnavailableError);
  }
}
