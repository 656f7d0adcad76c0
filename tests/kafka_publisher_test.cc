// The publisher against librdkafka's in-process mock cluster: broker errors injected where a
// real broker cannot be made to fail on cue. The real broker is exercised in integration/.
#include <librdkafka/rdkafka.h>
#include <catch2/catch.hpp>
// clang-format off: rdkafka_mock.h must follow rdkafka.h
#include <librdkafka/rdkafka_mock.h>
// clang-format on

#include <algorithm>

#include "kafka/client_conf.h"
#include "kafka/kafka_publisher.h"

using namespace outbox;

namespace {

constexpr int kProduceApi = 0;  // Kafka protocol ApiKey of Produce

// A mock cluster lives inside a client handle; this one hosts it for the test's lifetime.
class MockCluster {
 public:
  MockCluster() {
    char err[256];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    host_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    REQUIRE(host_ != nullptr);
    cluster_ = rd_kafka_mock_cluster_new(host_, 1);
    REQUIRE(cluster_ != nullptr);
    rd_kafka_mock_topic_create(cluster_, "orders", 3, 1);
  }
  ~MockCluster() {
    rd_kafka_mock_cluster_destroy(cluster_);
    rd_kafka_destroy(host_);
  }
  std::string bootstraps() const { return rd_kafka_mock_cluster_bootstraps(cluster_); }
  rd_kafka_mock_cluster_t* get() { return cluster_; }

 private:
  rd_kafka_t* host_ = nullptr;
  rd_kafka_mock_cluster_t* cluster_ = nullptr;
};

config::KafkaConfig kafka_config(const MockCluster& cluster,
                                 std::vector<std::pair<std::string, std::string>> props = {}) {
  config::KafkaConfig c;
  c.bootstrap_servers = cluster.bootstraps();
  c.properties = std::move(props);
  return c;
}

std::vector<core::Message> messages(int n, std::size_t payload_size = 10) {
  std::vector<core::Message> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(
        {"orders",
         "key-" + std::to_string(i % 5),
         std::string(payload_size, 'x'),
         {{"outbox-event-id", "e" + std::to_string(i)}, {"outbox-id", std::to_string(i)}}});
  }
  return out;
}

const auto never = [] { return false; };

}  // namespace

TEST_CASE("every acknowledged message is reported ok", "[kafka]") {
  MockCluster cluster;
  kafka::KafkaPublisher publisher(kafka_config(cluster));
  auto results = publisher.publish(messages(200), never);
  REQUIRE(results.size() == 200);
  for (const auto& r : results) CHECK(r.ok);
}

TEST_CASE("a message larger than message.max.bytes is a permanent failure", "[kafka]") {
  MockCluster cluster;
  kafka::KafkaPublisher publisher(kafka_config(cluster, {{"message.max.bytes", "2000"}}));
  auto batch = messages(3);
  batch[1].payload = std::string(5000, 'y');
  auto results = publisher.publish(batch, never);
  CHECK(results[0].ok);
  CHECK_FALSE(results[1].ok);
  CHECK(results[1].kind == core::FailureKind::permanent);
  CHECK_THAT(results[1].error, Catch::Contains("too large"));
  CHECK(results[2].ok);
}

TEST_CASE("a broker that rejects a produce request as too large makes its messages suspects",
          "[kafka]") {
  MockCluster cluster;
  kafka::KafkaPublisher publisher(kafka_config(cluster, {{"linger.ms", "0"}}));
  REQUIRE(publisher.publish(messages(1), never)[0].ok);  // connected, producer id assigned
  rd_kafka_mock_push_request_errors(cluster.get(), kProduceApi, 1,
                                    RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
  auto results = publisher.publish(messages(1), never);
  REQUIRE_FALSE(results[0].ok);
  // The broker answered for the request, not necessarily for this message: the core sends
  // it alone before blaming it.
  CHECK(results[0].kind == core::FailureKind::suspect);
  // Gap-less guarantee: the producer stopped instead of sending later messages past the
  // gap; it is re-created and the next batch goes through.
  auto again = publisher.publish(messages(3), never);
  CHECK(std::all_of(again.begin(), again.end(), [](const auto& r) { return r.ok; }));
}

TEST_CASE("a broker that stays down times messages out as transient failures", "[kafka]") {
  MockCluster cluster;
  kafka::KafkaPublisher publisher(kafka_config(cluster, {{"message.timeout.ms", "300"}}));
  rd_kafka_mock_broker_set_down(cluster.get(), 1);
  auto results = publisher.publish(messages(5), never);
  for (const auto& r : results) {
    CHECK_FALSE(r.ok);
    CHECK(r.kind == core::FailureKind::transient);
  }
  rd_kafka_mock_broker_set_up(cluster.get(), 1);
  // The same producer recovers once the broker is back (as the relay would, by retrying:
  // reconnecting may take longer than this test's short message timeout).
  bool delivered = false;
  for (int attempt = 0; attempt < 50 && !delivered; ++attempt) {
    auto again = publisher.publish(messages(5), never);
    delivered = std::all_of(again.begin(), again.end(), [](const auto& r) { return r.ok; });
  }
  CHECK(delivered);
}

TEST_CASE("giving up purges what is left and reports it undelivered", "[kafka]") {
  MockCluster cluster;
  kafka::KafkaPublisher publisher(kafka_config(cluster));  // message.timeout.ms: 300 s
  rd_kafka_mock_broker_set_down(cluster.get(), 1);
  int polls = 0;
  auto results = publisher.publish(messages(10), [&] { return ++polls > 3; });
  REQUIRE(results.size() == 10);
  for (const auto& r : results) {
    CHECK_FALSE(r.ok);
    CHECK(r.kind == core::FailureKind::transient);
  }
}

// Regression: with no broker answering, each unseen topic held the relay loop for 10 s.
TEST_CASE("asking about a topic while no broker answers returns after its bound",
          "[kafka][regression]") {
  MockCluster cluster;
  kafka::KafkaPublisher publisher(kafka_config(cluster));
  rd_kafka_mock_broker_set_down(cluster.get(), 1);
  auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(publisher.topic_problem("orders2"));  // cannot say now: not blocked
  auto took = std::chrono::steady_clock::now() - start;
  // The bound is kTopicAskWaitMs (1 s); 10 s before. 4 s leaves a loaded machine room.
  CHECK(took < std::chrono::milliseconds(4 * kafka::KafkaPublisher::kTopicAskWaitMs));
}

TEST_CASE("librdkafka's own property check names the problem", "[kafka]") {
  CHECK_FALSE(kafka::check_property("linger.ms", "5"));
  auto unknown = kafka::check_property("no.such.thing", "1");
  REQUIRE(unknown);
  CHECK_THAT(*unknown, Catch::Contains("No such configuration property"));
  CHECK(kafka::check_property("linger.ms", "banana"));
}

TEST_CASE("a librdkafka older than 2.6.1 is refused with the reason", "[kafka]") {
  auto old = kafka::librdkafka_version_problem(0x020002ff);  // Debian 12's 2.0.2
  REQUIRE(old);
  CHECK(old->find("librdkafka 2.0.2 is too old") != std::string::npos);
  CHECK(old->find("SCRAM") != std::string::npos);
  CHECK(kafka::librdkafka_version_problem(0x020600ff));  // 2.6.0
  CHECK_FALSE(kafka::librdkafka_version_problem(0x020601ff));
  CHECK_FALSE(kafka::librdkafka_version_problem(0x020800ff));
  // The library the tests run on is one users get.
  CHECK_FALSE(kafka::librdkafka_version_problem());
}

TEST_CASE("the producer's states refuse a transition their table does not allow",
          "[kafka][states]") {
  using kafka::ProducerState;
  core::StateMachine<kafka::ProducerStateTraits> state(ProducerState::none, "kafka");
  // a producer that does not exist cannot fail
  CHECK_THROWS_AS(state.set(ProducerState::fatal, "test"), std::logic_error);
  state.set(ProducerState::ready, "created");
  // a working producer is never destroyed under the loop's messages
  CHECK_THROWS_AS(state.set(ProducerState::none, "test"), std::logic_error);
  state.set(ProducerState::fatal, "fatal error");
  // a failed producer sends nothing more: it is re-created, never revived
  CHECK_THROWS_AS(state.set(ProducerState::ready, "test"), std::logic_error);
  state.set(ProducerState::fatal_purged, "drain's deadline");
  state.set(ProducerState::none, "every message answered");
  CHECK(state.is(ProducerState::none));
}

// Regression: a fatal error first seen by send() (librdkafka answering its produce call with
// __FATAL) left the fatal drain's start unset, so the next poll purged at once the messages
// already sent: the broker had written them, and the next producer (a new producer id, no
// deduplication) wrote them again.
TEST_CASE("a fatal error seen by send keeps the messages already sent until their reports",
          "[kafka][regression]") {
  MockCluster cluster;
  kafka::KafkaPublisher publisher(kafka_config(cluster));
  auto warm = messages(1);
  REQUIRE(publisher.publish(warm, never)[0].ok);  // producer id and metadata in place
  // Kafka now answers each request 1.5 s after it came.
  rd_kafka_mock_broker_set_rtt(cluster.get(), 1, 1500);
  auto ms = messages(2);
  publisher.send(ms[0], 1);
  std::vector<core::Completion> done;
  for (int i = 0; i < 3; ++i) {  // on its way to the broker: in flight, not queued
    auto got = publisher.poll(std::chrono::milliseconds(100));
    done.insert(done.end(), got.begin(), got.end());
  }
  REQUIRE(done.empty());
  REQUIRE(rd_kafka_test_fatal_error(publisher.handle(),
                                    RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                    "injected by the test") == RD_KAFKA_RESP_ERR_NO_ERROR);
  publisher.send(ms[1], 2);  // refused at once: the producer failed
  for (int i = 0; i < 100 && done.size() < 2; ++i) {
    auto got = publisher.poll(std::chrono::milliseconds(100));
    done.insert(done.end(), got.begin(), got.end());
  }
  REQUIRE(done.size() == 2);
  for (const auto& c : done) {
    INFO("tag " << c.tag << ": " << c.result.error);
    if (c.tag == 1) CHECK(c.result.error.find("urged") == std::string::npos);  // its real report
    if (c.tag == 2) CHECK_THAT(c.result.error, Catch::Contains("atal"));       // seen first by send
  }
  CHECK(publisher.state() == kafka::ProducerState::none);  // re-created by the next send
}

TEST_CASE("one rule for every librdkafka client: defaults, kafka.properties, then its own",
          "[kafka][conf]") {
  config::KafkaConfig k;
  k.properties = {{"linger.ms", "77"},
                  {"client.id", "mine"},
                  {"isolation.level", "read_uncommitted"},
                  {"socket.timeout.ms", "12345"}};
  auto get = [](const kafka::Conf& conf, const char* name) {
    char value[256];
    std::size_t size = sizeof value;
    REQUIRE(rd_kafka_conf_get(conf.get(), name, value, &size) == RD_KAFKA_CONF_OK);
    return std::string(value);
  };
  auto consumer = kafka::client_conf(kafka::ClientKind::consumer, k, {{"client.id", "relay"}},
                                     {{"isolation.level", "read_committed"}});
  CHECK(get(consumer, "client.id") == "mine");                  // kafka.properties over defaults
  CHECK(get(consumer, "isolation.level") == "read_committed");  // the client's own over both
  CHECK(get(consumer, "socket.timeout.ms") == "12345");         // reaches the cluster as set
  CHECK(get(consumer, "linger.ms") != "77");                    // producer-only: not taken
  auto producer = kafka::client_conf(kafka::ClientKind::producer, k, {}, {});
  CHECK(get(producer, "linger.ms") == "77");
  k.properties = {{"no.such.property", "x"}};
  CHECK_THROWS_WITH(kafka::client_conf(kafka::ClientKind::consumer, k, {}, {}),
                    Catch::Contains("kafka.properties.no.such.property"));
}
