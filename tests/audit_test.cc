// Tests of the audit's accounting (AuditLedger) and its pure helpers: no PostgreSQL, no Kafka.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <stdexcept>

#include "audit/audit.h"
#include "audit/audit_ledger.h"

using namespace outbox::audit;

namespace {

// Rows first..last, all published.
AuditLedger published_rows(std::int64_t first, std::int64_t last) {
  AuditLedger ledger;
  for (std::int64_t id = first; id <= last; ++id) ledger.add_row(id, true, false);
  return ledger;
}

}  // namespace

TEST_CASE("every published row delivered once: clean report", "[audit]") {
  AuditLedger ledger = published_rows(1, 3);
  ledger.add_message("t", 0, "a", 1, 0);
  ledger.add_message("t", 1, "b", 2, 0);
  ledger.add_message("t", 0, "a", 3, 1);
  AuditReport r = ledger.report();
  CHECK(r.rows == 3);
  CHECK(r.messages == 3);
  CHECK(r.published == 3);
  CHECK(r.lost == 0);
  CHECK(r.duplicates == 0);
  CHECK(r.order_violations == 0);
  CHECK(r.unknown == 0);
  CHECK(r.first_id == 1);
  CHECK(r.last_id == 3);
  CHECK(r.ok());
}

TEST_CASE("a published row without a message is lost, pending and dead-lettered are not",
          "[audit]") {
  AuditLedger ledger;
  ledger.add_row(10, true, false);
  ledger.add_row(11, true, false);   // lost
  ledger.add_row(12, false, false);  // pending, never sent
  ledger.add_row(13, false, false);  // pending, sent but not marked yet
  ledger.add_row(14, false, true);   // dead-lettered
  ledger.add_row(15, true, false);   // lost
  ledger.add_message("t", 0, "k", 10);
  ledger.add_message("t", 0, "k", 13);
  AuditReport r = ledger.report();
  CHECK(r.rows == 6);
  CHECK(r.published == 3);
  CHECK(r.pending == 2);
  CHECK(r.dead_lettered == 1);
  CHECK(r.lost == 2);
  CHECK(r.lost_examples == std::vector<std::int64_t>{11, 15});
  CHECK_FALSE(r.ok());
}

TEST_CASE("lost ids are found across bitset words and the examples are capped", "[audit]") {
  AuditLedger ledger(3);
  for (std::int64_t id = 1; id <= 200; ++id) ledger.add_row(id, true, false);
  for (std::int64_t id = 1; id <= 200; ++id) {
    if (id != 64 && id != 65 && id != 128 && id != 200) ledger.add_message("t", 0, "k", id);
  }
  AuditReport r = ledger.report();
  CHECK(r.lost == 4);
  CHECK(r.lost_examples == std::vector<std::int64_t>{64, 65, 128});
  CHECK(r.order_violations == 0);
}

TEST_CASE("extra copies count as duplicates and do not fail the audit", "[audit]") {
  AuditLedger ledger = published_rows(1, 3);
  ledger.add_message("t", 0, "k", 1);
  ledger.add_message("t", 0, "k", 2);
  ledger.add_message("t", 0, "k", 2);
  ledger.add_message("t", 0, "k", 2);
  ledger.add_message("t", 0, "k", 3);
  ledger.add_message("t", 0, "k", 3);
  AuditReport r = ledger.report();
  CHECK(r.messages == 6);
  CHECK(r.duplicates == 3);
  CHECK(r.duplicated_rows == 2);
  CHECK(r.lost == 0);
  CHECK(r.ok());
}

TEST_CASE("a first delivery below an earlier one of the same key is an order violation",
          "[audit]") {
  AuditLedger ledger = published_rows(1, 5);
  ledger.add_message("t", 2, "k", 1, 0);
  ledger.add_message("t", 2, "k", 3, 1);
  ledger.add_message("t", 2, "k", 2, 2);  // violation: 2 after 3
  ledger.add_message("t", 2, "k", 5, 3);
  ledger.add_message("t", 2, "k", 4, 4);  // violation: 4 after 5 (not after 2)
  AuditReport r = ledger.report();
  CHECK(r.order_violations == 2);
  REQUIRE(r.order_violation_examples.size() == 2);
  const OrderViolation& v = r.order_violation_examples[0];
  CHECK(v.topic == "t");
  CHECK(v.partition == 2);
  CHECK(v.offset == 2);
  CHECK(v.key == "k");
  CHECK(v.outbox_id == 2);
  CHECK(v.after_outbox_id == 3);
  CHECK(r.order_violation_examples[1].outbox_id == 4);
  CHECK(r.order_violation_examples[1].after_outbox_id == 5);
  CHECK(r.lost == 0);
  CHECK_FALSE(r.ok());
}

TEST_CASE("a redelivery of an older id is a duplicate, not an order violation", "[audit]") {
  AuditLedger ledger = published_rows(1, 3);
  ledger.add_message("t", 0, "k", 1);
  ledger.add_message("t", 0, "k", 2);
  ledger.add_message("t", 0, "k", 1);  // the relay re-sent 1 and 2 after a crash
  ledger.add_message("t", 0, "k", 2);
  ledger.add_message("t", 0, "k", 3);
  AuditReport r = ledger.report();
  CHECK(r.duplicates == 2);
  CHECK(r.order_violations == 0);
  CHECK(r.ok());
}

TEST_CASE("order is per key and per topic-partition, keyless messages have none", "[audit]") {
  AuditLedger ledger = published_rows(1, 8);
  ledger.add_message("t", 0, "a", 2);
  ledger.add_message("t", 0, "b", 1);  // another key
  ledger.add_message("t", 1, "a", 3);
  ledger.add_message("t", 0, "", 5);
  ledger.add_message("t", 0, "", 4);  // the empty key is a key: violation
  ledger.add_message("u", 1, "a", 6);
  ledger.add_message("t", 1, "a", 7);
  ledger.add_message("t", 0, std::nullopt, 8);
  ledger.add_message("t", 0, "z", 1);  // id 1 seen already: duplicate
  AuditReport r = ledger.report();
  CHECK(r.order_violations == 1);
  REQUIRE(r.order_violation_examples.size() == 1);
  CHECK(r.order_violation_examples[0].outbox_id == 4);
  CHECK(r.duplicates == 1);
  CHECK(r.lost == 0);
}

TEST_CASE("messages of no audited row are unknown, without outbox-id foreign", "[audit]") {
  AuditLedger ledger;
  ledger.add_row(5, true, false);
  ledger.add_row(7, true, false);  // 6: a gap in the ids (rolled back)
  ledger.add_message("t", 0, "k", 5);
  ledger.add_message("t", 0, "k", 6);
  ledger.add_message("t", 0, "k", 7);
  ledger.add_message("t", 0, "k", 4);
  ledger.add_message("t", 0, "k", 9);
  ledger.add_message("t", 0, "k", std::nullopt);
  ledger.add_message("t", 0, std::nullopt, std::nullopt);
  AuditReport r = ledger.report();
  CHECK(r.messages == 7);
  CHECK(r.unknown == 3);
  CHECK(r.foreign == 2);
  CHECK(r.ignored == 0);
  CHECK(r.lost == 0);
  CHECK(r.ok());
}

TEST_CASE("messages of rows left out by --since or written after the scan are ignored", "[audit]") {
  AuditLedger ledger;
  ledger.add_row(10, true, false);
  ledger.skip_row(11);  // created before --since, inside the range
  ledger.add_row(12, true, false);
  ledger.ignore_below(10);
  ledger.ignore_above_up_to(20);
  ledger.add_message("t", 0, "k", 3);   // before the audited range
  ledger.add_message("t", 0, "k", 11);  // skipped row
  ledger.add_message("t", 0, "k", 10);
  ledger.add_message("t", 0, "k", 12);
  ledger.add_message("t", 0, "k", 15);  // a row newer than the scan
  ledger.add_message("t", 0, "k", 21);  // newer than the table at the watermarks
  AuditReport r = ledger.report();
  CHECK(r.rows == 2);
  CHECK(r.ignored == 3);
  CHECK(r.unknown == 1);
  CHECK(r.order_violations == 0);
  CHECK(r.ok());

  AuditLedger empty;
  empty.ignore_above_up_to(5);
  empty.add_message("t", 0, "k", 5);
  empty.add_message("t", 0, "k", 6);
  AuditReport e = empty.report();
  CHECK(e.rows == 0);
  CHECK(e.ignored == 1);
  CHECK(e.unknown == 1);
  CHECK_FALSE(e.first_id);
  CHECK(e.ok());
}

TEST_CASE("rows must come in increasing id order and before the messages", "[audit]") {
  AuditLedger ledger;
  ledger.add_row(5, true, false);
  CHECK_THROWS_AS(ledger.add_row(5, true, false), std::invalid_argument);
  CHECK_THROWS_AS(ledger.add_row(4, true, false), std::invalid_argument);
  ledger.add_message("t", 0, "k", 5);
  CHECK_THROWS_AS(ledger.add_row(6, true, false), std::invalid_argument);
}

TEST_CASE("the state stays at 6 bits per id plus one map entry per key", "[audit]") {
  AuditLedger ledger;
  const std::int64_t n = 1'000'000;
  ledger.reserve(n);
  for (std::int64_t id = 1; id <= n; ++id) ledger.add_row(id, true, false);
  for (std::int64_t id = 1; id <= n; ++id) {
    ledger.add_message("t", 0, "key-" + std::to_string(id % 100), id);
  }
  CHECK(ledger.report().lost == 0);
  CHECK(ledger.memory_bytes() < 6 * n / 8 + 64 * 1024);
}

TEST_CASE("outbox-id headers are decimal row ids", "[audit]") {
  CHECK(parse_outbox_id("42") == 42);
  CHECK(parse_outbox_id("9223372036854775807") == INT64_MAX);
  CHECK_FALSE(parse_outbox_id("9223372036854775808"));
  CHECK_FALSE(parse_outbox_id("99999999999999999999"));
  CHECK_FALSE(parse_outbox_id(""));
  CHECK_FALSE(parse_outbox_id("-1"));
  CHECK_FALSE(parse_outbox_id("4x"));
  CHECK_FALSE(parse_outbox_id(" 4"));
}

TEST_CASE("keys are hashed with topic and partition, and shown printable", "[audit]") {
  CHECK(key_hash("t", 0, "k") == key_hash("t", 0, "k"));
  CHECK(key_hash("t", 0, "k") != key_hash("t", 1, "k"));
  CHECK(key_hash("t", 0, "k") != key_hash("u", 0, "k"));
  CHECK(key_hash("ab", 0, "c") != key_hash("a", 0, "bc"));
  CHECK(printable("order-1") == "order-1");
  CHECK(printable(std::string_view("a\0\"\\\xff", 5)) == "a\\x00\"\\x5c\\xff");
}

TEST_CASE("a since value is an ISO timestamp or a time ago", "[audit]") {
  std::string error;
  CHECK(parse_since("90s", &error) == Since{std::int64_t{90}});
  CHECK(parse_since("30m", &error) == Since{std::int64_t{1800}});
  CHECK(parse_since("12h", &error) == Since{std::int64_t{43200}});
  CHECK(parse_since("7d", &error) == Since{std::int64_t{604800}});
  CHECK(parse_since("2024-05-01", &error) == Since{std::string("2024-05-01")});
  CHECK(parse_since("2024-05-01T12:00:00Z", &error) == Since{std::string("2024-05-01T12:00:00Z")});
  CHECK(parse_since("2024-05-01 12:00:00.123+02:00", &error));
  CHECK(parse_since("2024-05-01T12:00", &error));
  for (const char* bad :
       {"", "yesterday", "5w", "-5m", "5", "m", "2024-05", "2024-05-01T", "1e3s"}) {
    error.clear();
    CHECK_FALSE(parse_since(bad, &error));
    CHECK_THAT(error, Catch::Contains("--since"));
  }
}

TEST_CASE("producer-only kafka.properties are left out of the audit's consumer", "[audit]") {
  CHECK(is_producer_only_property("acks"));
  CHECK(is_producer_only_property("linger.ms"));
  CHECK(is_producer_only_property("enable.idempotence"));
  CHECK(is_producer_only_property("compression.type"));
  CHECK_FALSE(is_producer_only_property("fetch.min.bytes"));
  CHECK_FALSE(is_producer_only_property("isolation.level"));
  CHECK_FALSE(is_producer_only_property("security.protocol"));
  CHECK_FALSE(is_producer_only_property("client.id"));
  CHECK_FALSE(is_producer_only_property("no.such.property"));
}

TEST_CASE("the report as JSON and as text", "[audit]") {
  AuditLedger ledger = published_rows(1, 4);
  ledger.add_message("t", 0, "k", 1, 0);
  ledger.add_message("t", 0, "k", 3, 1);
  ledger.add_message("t", 0, "k", 2, 2);
  ledger.add_message("t", 0, "k", 2, 3);
  ledger.add_message("t", 0, std::nullopt, std::nullopt, 4);
  AuditReport r = ledger.report();

  auto j = nlohmann::json::parse(format_json(r));
  for (const char* key :
       {"rows", "messages", "published", "pending", "dead_lettered", "lost", "duplicates",
        "order_violations", "unknown", "foreign", "lost_examples", "order_violation_examples"}) {
    CHECK(j.contains(key));
  }
  CHECK(j["rows"] == 4);
  CHECK(j["messages"] == 5);
  CHECK(j["lost"] == 1);
  CHECK(j["lost_examples"] == nlohmann::json::array({4}));
  CHECK(j["duplicates"] == 1);
  CHECK(j["order_violations"] == 1);
  CHECK(j["foreign"] == 1);
  CHECK(j["order_violation_examples"][0]["outbox_id"] == 2);
  CHECK(j["order_violation_examples"][0]["after_outbox_id"] == 3);
  CHECK(j["order_violation_examples"][0]["offset"] == 2);
  CHECK(j["ok"] == false);

  std::string text = format_text(r);
  CHECK_THAT(text, Catch::Contains("\nlost" + std::string(25, ' ') + "1\n"));
  CHECK_THAT(text, Catch::Contains("lost ids: 4"));
  CHECK_THAT(text, Catch::Contains("outbox-id 2 first delivered after outbox-id 3"));
  CHECK_THAT(text, Catch::Contains("FAILED"));
  CHECK_THAT(format_text(published_rows(1, 0).report()), Catch::Contains("OK"));
}

TEST_CASE("rows found gone when marked are reported, and their messages are not unknown",
          "[audit]") {
  AuditLedger ledger;
  ledger.add_row(1, true, false);
  ledger.add_row(3, true, false);
  ledger.add_vanished({2, "e-2", "orders", true, "", "2026-01-01 00:00:00+00"});
  ledger.add_message("orders", 0, "k", 1);
  ledger.add_message("orders", 0, "k", 2);  // its row is gone: the relay found it so
  ledger.add_message("orders", 0, "k", 3);
  ledger.add_message("orders", 0, "k", 4);  // of no row, not a vanished one either
  AuditReport r = ledger.report();
  CHECK(r.vanished == 1);
  CHECK(r.vanished_messages == 1);
  CHECK(r.unknown == 1);
  CHECK(r.ok());  // not lost by the relay: the database let the row go
  std::string text = format_text(r);
  CHECK_THAT(text, Catch::Contains("vanished"));
  CHECK_THAT(text, Catch::Contains("row 2 (event e-2, topic orders) acknowledged by Kafka"));
  auto j = nlohmann::json::parse(format_json(r));
  CHECK(j["vanished"] == 1);
  CHECK(j["vanished_examples"][0]["event_id"] == "e-2");
  CHECK_THROWS_AS(ledger.add_vanished({5, "", "", false, "", ""}), std::invalid_argument);
}

TEST_CASE("rows another publisher sent before takeover are published, never lost", "[audit]") {
  // published_by set by `outbox-relay takeover`: Debezium's messages may carry no outbox-id.
  AuditLedger ledger;
  ledger.add_row(1, true, false, true);
  ledger.add_row(2, true, false, true);
  ledger.add_row(3, true, false);
  ledger.add_message("t", 0, "k", 2);
  ledger.add_message("t", 0, "k", 3);
  AuditReport r = ledger.report();
  CHECK(r.published == 3);
  CHECK(r.published_by_other == 2);
  CHECK(r.lost == 0);
  CHECK(r.ok());
  AuditLedger unmarked;
  unmarked.add_row(1, true, false);
  CHECK(unmarked.report().lost == 1);
}
