#include <catch2/catch.hpp>

#include "core/message_mapping.h"

using namespace outbox::core;

namespace {
OutboxEvent row(std::string headers = "{}") {
  OutboxEvent e;
  e.id = 42;
  e.event_id = "0b5c6a1e-8a3c-4a8e-9e55-2f1f5b2d7c11";
  e.topic = "orders";
  e.key = "order-7";
  e.payload = std::string("{\"total\":3}");
  e.headers_json = std::move(headers);
  return e;
}
}  // namespace

TEST_CASE("a row becomes a message with the relay's headers first", "[mapping]") {
  auto m = std::get<Message>(to_message(row(R"({"type": "OrderPlaced", "trace": "abc"})"), {}));
  CHECK(m.topic == "orders");
  CHECK(m.key == "order-7");
  CHECK(m.payload == "{\"total\":3}");
  REQUIRE(m.headers.size() == 4);
  CHECK(m.headers[0] == std::pair<std::string, std::string>("outbox-event-id", row().event_id));
  CHECK(m.headers[1] == std::pair<std::string, std::string>("outbox-id", "42"));
  CHECK(m.headers[2] == std::pair<std::string, std::string>("trace", "abc"));
  CHECK(m.headers[3] == std::pair<std::string, std::string>("type", "OrderPlaced"));
}

TEST_CASE("null key and payload stay null", "[mapping]") {
  OutboxEvent e = row();
  e.key.reset();
  e.payload.reset();
  auto m = std::get<Message>(to_message(e, {}));
  CHECK_FALSE(m.key);
  CHECK_FALSE(m.payload);
}

TEST_CASE("kafka.topic_map renames topics, others pass unchanged", "[mapping]") {
  std::map<std::string, std::string> map{{"orders", "prod.orders"}};
  CHECK(std::get<Message>(to_message(row(), map)).topic == "prod.orders");
  OutboxEvent other = row();
  other.topic = "payments";
  CHECK(std::get<Message>(to_message(other, map)).topic == "payments");
}

TEST_CASE("poison rows are refused with a reason", "[mapping]") {
  auto reason = [](const OutboxEvent& e) {
    auto r = to_message(e, {});
    REQUIRE(std::holds_alternative<PoisonReason>(r));
    return std::get<PoisonReason>(r).text;
  };
  CHECK_THAT(reason(row("[1,2]")), Catch::Contains("JSON object"));
  CHECK_THAT(reason(row("not json")), Catch::Contains("JSON object"));
  CHECK_THAT(reason(row(R"({"n": 1})")), Catch::Contains("\"n\" must be a string"));
  CHECK_THAT(reason(row(R"({"outbox-id": "1"})")), Catch::Contains("reserved"));
  OutboxEvent bad_topic = row();
  bad_topic.topic = "has space";
  CHECK_THAT(reason(bad_topic), Catch::Contains("invalid Kafka topic name"));
}

TEST_CASE("Kafka's topic name rule", "[mapping]") {
  CHECK(is_valid_topic_name("orders.v1_x-y"));
  CHECK(is_valid_topic_name(std::string(249, 'a')));
  CHECK_FALSE(is_valid_topic_name(std::string(250, 'a')));
  CHECK_FALSE(is_valid_topic_name(""));
  CHECK_FALSE(is_valid_topic_name("."));
  CHECK_FALSE(is_valid_topic_name(".."));
  CHECK_FALSE(is_valid_topic_name("a/b"));
  CHECK_FALSE(is_valid_topic_name("ümlaut"));
}

TEST_CASE("a huge poison value is quoted by its start only, cut between UTF-8 characters",
          "[mapping]") {
  // Before: the whole headers text (here 2 MB) went into the reason, so into last_error.
  std::string huge =
      "[\"" + std::string(197, 'a') + "\xC3\xA9" + std::string(2'000'000, 'b') + "\"]";
  auto reason = std::get<PoisonReason>(to_message(row(huge), {})).text;
  CHECK(reason.size() < 300);
  CHECK(reason.find(std::string(197, 'a')) != std::string::npos);
  CHECK(reason.find('\xC3') == std::string::npos);  // "é" straddles the cut: left out whole
  CHECK(reason.find("(2000203 bytes)") != std::string::npos);

  auto value =
      std::get<PoisonReason>(to_message(row("{\"n\": [" + std::string(100'000, '1') + "]}"), {}));
  CHECK(value.text.size() < 300);
  OutboxEvent long_topic = row();
  long_topic.topic = std::string(100'000, 't');
  CHECK(std::get<PoisonReason>(to_message(long_topic, {})).text.size() < 300);
}
