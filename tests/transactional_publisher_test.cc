// kafka::TransactionalKafkaPublisher on librdkafka's mock cluster: the transactional calls
// and the checkpoint record read back read_committed (committed: seen; aborted: not). Fencing
// is not tested here: the mock cluster lets a fenced producer's EndTxn through; the real
// broker's fencing is proven by integration/tests/test_exactly_once.py (zombie test).
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <catch2/catch.hpp>

#include "kafka/transactional_publisher.h"

using namespace outbox;

namespace {

struct Mock {
  Mock() {
    char err[256];
    host = rd_kafka_new(RD_KAFKA_PRODUCER, rd_kafka_conf_new(), err, sizeof err);
    REQUIRE(host != nullptr);
    cluster = rd_kafka_mock_cluster_new(host, 1);
    REQUIRE(cluster != nullptr);
    rd_kafka_mock_topic_create(cluster, "orders", 2, 1);
    rd_kafka_mock_topic_create(cluster, "cp", 1, 1);
  }
  ~Mock() {
    rd_kafka_mock_cluster_destroy(cluster);
    rd_kafka_destroy(host);
  }
  std::unique_ptr<kafka::TransactionalKafkaPublisher> publisher(
      const std::string& checkpoint_topic = "cp", config::KafkaConfig k = {}) const {
    k.bootstrap_servers = rd_kafka_mock_cluster_bootstraps(cluster);
    kafka::TransactionalSettings s;
    s.transactional_id = "relay-under-test";
    s.checkpoint_topic = checkpoint_topic;
    s.transaction_timeout = std::chrono::milliseconds(10'000);
    return std::make_unique<kafka::TransactionalKafkaPublisher>(k, s);
  }
  rd_kafka_t* host = nullptr;
  rd_kafka_mock_cluster_t* cluster = nullptr;
};

// Sends `n` messages in a transaction and waits for every answer; true if all were ok.
bool send_all(core::TransactionalPublisher& p, std::vector<core::Message>& msgs) {
  for (std::size_t i = 0; i < msgs.size(); ++i) p.send(msgs[i], i);
  std::size_t answered = 0;
  bool ok = true;
  for (int i = 0; i < 200 && answered < msgs.size(); ++i) {
    for (auto& c : p.poll(std::chrono::milliseconds(50))) {
      ++answered;
      ok = ok && c.result.ok;
    }
  }
  return ok && answered == msgs.size();
}

std::vector<core::Message> messages(int n) {
  std::vector<core::Message> out;
  for (int i = 0; i < n; ++i) out.push_back({"orders", "k" + std::to_string(i), "v", {}});
  return out;
}

}  // namespace

TEST_CASE("transactional publisher: commit with a checkpoint that reads back", "[eos][kafka]") {
  Mock mock;
  auto p = mock.publisher();
  p->init();
  CHECK(p->last_checkpoint().record.empty());
  CHECK(p->last_checkpoint().proven);
  auto msgs = messages(3);
  p->begin();
  REQUIRE(send_all(*p, msgs));
  p->commit("1-3");
  p->begin();
  auto more = messages(2);
  REQUIRE(send_all(*p, more));
  p->commit("4-5");
  // a new producer (a restart) finds the newest checkpoint of its transactional.id
  auto q = mock.publisher();
  q->init();
  CHECK(q->last_checkpoint().record == "4-5");
}

TEST_CASE("transactional publisher: an aborted transaction's checkpoint is not seen",
          "[eos][kafka]") {
  Mock mock;
  auto p = mock.publisher();
  p->init();
  auto msgs = messages(2);
  p->begin();
  REQUIRE(send_all(*p, msgs));
  p->commit("1-2");
  p->begin();
  REQUIRE(send_all(*p, msgs));
  REQUIRE(p->abort());
  auto q = mock.publisher();
  q->init();
  CHECK(q->last_checkpoint().record == "1-2");
}

// Regression: a pre-created checkpoint topic with several partitions was written by key hash
// and read from partition 0 only: recovery missed the newest checkpoint and sent rows again.
TEST_CASE("transactional publisher: a checkpoint topic of several partitions is refused",
          "[eos][kafka][regression]") {
  Mock mock;
  rd_kafka_mock_topic_create(mock.cluster, "cp3", 3, 1);
  auto p = mock.publisher("cp3");
  try {
    p->init();
    FAIL("init accepted a checkpoint topic of 3 partitions");
  } catch (const core::FatalError& e) {
    std::string what = e.what();
    CHECK(what.find("has 3 partitions; exactly_once needs exactly 1") != std::string::npos);
    CHECK(what.find("delivery.checkpoint_topic") != std::string::npos);
  }
}

// Regression: a checkpoint larger than message.max.bytes failed as a transient error: the
// relay aborted, recovered and sent the same read again, forever.
TEST_CASE("transactional publisher: the largest checkpoint is known, a larger one is fatal",
          "[eos][kafka][regression]") {
  Mock mock;
  config::KafkaConfig k;
  k.properties.emplace_back("message.max.bytes", "20000");
  auto p = mock.publisher("cp", k);
  p->init();
  CHECK(p->max_checkpoint_bytes() > 19'000);
  CHECK(p->max_checkpoint_bytes() < 20'000);
  auto msgs = messages(1);
  p->begin();
  REQUIRE(send_all(*p, msgs));
  CHECK_THROWS_AS(p->commit(std::string(25'000, '1')), core::FatalError);
}

// Regression: recovery's read of the checkpoint topic ends at an empty fetch (the last offset
// is a commit marker), which the broker held for librdkafka's default fetch.wait.max.ms: half
// a second before the first message at every start of an exactly_once relay.
TEST_CASE("transactional publisher: the checkpoint read does not wait 500 ms for its end",
          "[eos][kafka][regression]") {
  for (bool committed : {true, false}) {
    auto fixed = kafka::checkpoint_consumer_fixed(committed);
    auto wait = std::find_if(fixed.begin(), fixed.end(),
                             [](const auto& p) { return p.first == "fetch.wait.max.ms"; });
    REQUIRE(wait != fixed.end());
    REQUIRE(std::stoi(wait->second) <= 10);
    auto isolation = std::find_if(fixed.begin(), fixed.end(),
                                  [](const auto& p) { return p.first == "isolation.level"; });
    REQUIRE(isolation != fixed.end());
    REQUIRE(isolation->second == (committed ? "read_committed" : "read_uncommitted"));
  }
}
