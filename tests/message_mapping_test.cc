#include <catch2/catch.hpp>

#include <algorithm>

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

namespace {
using Header = std::pair<std::string, std::string>;

OutboxEvent created(std::string headers, std::string created_at) {
  OutboxEvent e = row(std::move(headers));
  e.created_at = std::move(created_at);
  return e;
}

MessageFormat cloudevents() {
  MessageFormat f;
  f.cloudevents = CloudEventsFormat{"/orders-service", "type", "application/octet-stream"};
  return f;
}
}  // namespace

TEST_CASE("CloudEvents binary mode: the ce_ headers and content-type, byte for byte",
          "[mapping][cloudevents]") {
  auto m = std::get<Message>(to_message(
      created(
          R"({"type": "OrderPlaced", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})",
          "2026-12-07T09:55:53.123456Z"),
      {}, cloudevents()));
  CHECK(m.payload == "{\"total\":3}");  // binary mode: the value stays the payload
  std::vector<Header> want = {
      {"outbox-event-id", "0b5c6a1e-8a3c-4a8e-9e55-2f1f5b2d7c11"},
      {"outbox-id", "42"},
      {"ce_specversion", "1.0"},
      {"ce_id", "0b5c6a1e-8a3c-4a8e-9e55-2f1f5b2d7c11"},
      {"ce_source", "/orders-service"},
      {"ce_type", "OrderPlaced"},
      {"ce_time", "2026-12-07T09:55:53.123456Z"},
      {"content-type", "application/json"},
      {"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
      {"type", "OrderPlaced"},
  };
  CHECK(m.headers == want);
}

TEST_CASE("CloudEvents: ce_type from the topic without the type header, content-type of bytes",
          "[mapping][cloudevents]") {
  OutboxEvent e = created("{}", "2026-12-07 10:00:00.5+05:30");
  e.payload = std::string("\x00\xff", 2);
  auto m = std::get<Message>(to_message(e, {}, cloudevents()));
  CHECK(std::find(m.headers.begin(), m.headers.end(), Header("ce_type", "orders")) !=
        m.headers.end());
  CHECK(std::find(m.headers.begin(), m.headers.end(),
                  Header("ce_time", "2026-12-07T10:00:00.5+05:30")) != m.headers.end());
  CHECK(std::find(m.headers.begin(), m.headers.end(),
                  Header("content-type", "application/octet-stream")) != m.headers.end());

  // A null payload has no content; a row's own content-type and ce_type win.
  e.payload.reset();
  e.headers_json = R"({"ce_type": "com.example.order.v2", "content-type": "text/plain"})";
  m = std::get<Message>(to_message(e, {}, cloudevents()));
  auto count = [&](const std::string& name) {
    return std::count_if(m.headers.begin(), m.headers.end(),
                         [&](const Header& h) { return h.first == name; });
  };
  CHECK(count("ce_type") == 1);
  CHECK(count("content-type") == 1);
  CHECK(std::find(m.headers.begin(), m.headers.end(), Header("ce_type", "com.example.order.v2")) !=
        m.headers.end());
  CHECK(std::find(m.headers.begin(), m.headers.end(), Header("content-type", "text/plain")) !=
        m.headers.end());

  // ce_id and ce_specversion are the relay's: a row setting them is refused, as outbox-id.
  auto refused = to_message(created(R"({"ce_id": "x"})", ""), {}, cloudevents());
  REQUIRE(std::holds_alternative<PoisonReason>(refused));
  CHECK_THAT(std::get<PoisonReason>(refused).text, Catch::Contains("\"ce_id\" is reserved"));
  // Without CloudEvents the same header is the row's own.
  CHECK(std::holds_alternative<Message>(to_message(created(R"({"ce_id": "x"})", ""), {})));
}

TEST_CASE("created_at as RFC 3339", "[mapping][cloudevents]") {
  CHECK(rfc3339("2026-12-07 09:55:53.123456+00") == "2026-12-07T09:55:53.123456Z");
  CHECK(rfc3339("2026-12-07 09:55:53+00") == "2026-12-07T09:55:53Z");
  CHECK(rfc3339("2026-12-07T09:55:53.100000Z") == "2026-12-07T09:55:53.100000Z");
  CHECK(rfc3339("2026-12-07 09:55:53-03") == "2026-12-07T09:55:53-03:00");
  CHECK(rfc3339("2026-12-07 09:55:53+05:45") == "2026-12-07T09:55:53+05:45");
  CHECK_FALSE(rfc3339("1890-01-01 00:00:00+00:53:28"));  // local mean time: no RFC 3339 form
  CHECK_FALSE(rfc3339("infinity"));
  CHECK_FALSE(rfc3339("0044-03-15 12:00:00+00 BC"));
  CHECK_FALSE(rfc3339(""));
  // Without a time the row still maps, without ce_time.
  auto m = std::get<Message>(to_message(created("{}", ""), {}, cloudevents()));
  CHECK(std::none_of(m.headers.begin(), m.headers.end(),
                     [](const Header& h) { return h.first == "ce_time"; }));
}

TEST_CASE("Debezium's id header beside outbox-event-id", "[mapping][debezium]") {
  MessageFormat f;
  f.id_header = true;
  auto m = std::get<Message>(to_message(row(R"({"type": "OrderPlaced"})"), {}, f));
  std::vector<Header> want = {{"outbox-event-id", row().event_id},
                              {"outbox-id", "42"},
                              {"id", row().event_id},
                              {"type", "OrderPlaced"}};
  CHECK(m.headers == want);
  auto refused = to_message(row(R"({"id": "mine"})"), {}, f);
  REQUIRE(std::holds_alternative<PoisonReason>(refused));
  CHECK_THAT(std::get<PoisonReason>(refused).text, Catch::Contains("\"id\" is reserved"));
}

TEST_CASE("the topic template: {topic} is the row topic, kafka.topic_map wins",
          "[mapping][debezium]") {
  MessageFormat f;
  f.topic_template = "outbox.event.{topic}";
  CHECK(std::get<Message>(to_message(row(), {}, f)).topic == "outbox.event.orders");
  CHECK(std::get<Message>(to_message(row(), {{"orders", "prod.orders"}}, f)).topic ==
        "prod.orders");
  CHECK(kafka_topic("orders", {}, "{topic}.{topic}-v1") == "orders.orders-v1");
  CHECK(kafka_topic("orders", {}, "all-events") == "all-events");
  CHECK(kafka_topic("orders", {}) == "orders");
  OutboxEvent long_topic = row();
  long_topic.topic = std::string(240, 't');  // valid alone, too long with the prefix
  CHECK(std::holds_alternative<PoisonReason>(to_message(long_topic, {}, f)));
}

TEST_CASE("Kafka Connect's JSON string of the key and the value", "[mapping][debezium]") {
  MessageFormat f;
  f.json_string_key = true;
  f.json_string_value = true;
  OutboxEvent e = row();
  e.payload = std::string(R"({"id": 1, "item": "a \"b\""})");
  auto m = std::get<Message>(to_message(e, {}, f));
  CHECK(m.key == "\"order-7\"");
  CHECK(m.payload == R"("{\"id\": 1, \"item\": \"a \\\"b\\\"\"}")");
  e.key.reset();
  e.payload.reset();
  m = std::get<Message>(to_message(e, {}, f));
  CHECK_FALSE(m.key);  // a null stays null (a tombstone is not the JSON text null)
  CHECK_FALSE(m.payload);
}
