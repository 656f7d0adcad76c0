// The decisions of `outbox-relay takeover` (replication/takeover.h): when it must refuse, which
// event ids the stopped publisher had not confirmed. On a server:
// integration/tests/test_cutover.py.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "replication/takeover.h"

using namespace outbox::replication;

namespace {

std::string be16(std::uint16_t v) {
  return {static_cast<char>(v >> 8), static_cast<char>(v & 0xff)};
}
std::string be32(std::uint32_t v) {
  return be16(static_cast<std::uint16_t>(v >> 16)) + be16(v & 0xffff);
}
std::string be64(std::uint64_t v) {
  return be32(static_cast<std::uint32_t>(v >> 32)) + be32(static_cast<std::uint32_t>(v));
}
std::string cstr(const std::string& s) { return s + '\0'; }

// pgoutput protocol 1 messages, as the server sends them.
std::string relation(std::uint32_t oid, const std::string& schema, const std::string& name,
                     const std::vector<std::string>& columns) {
  std::string m = "R" + be32(oid) + cstr(schema) + cstr(name) + "d" +
                  be16(static_cast<std::uint16_t>(columns.size()));
  for (const auto& c : columns) m += std::string(1, '\0') + cstr(c) + be32(25) + be32(0xffffffff);
  return m;
}
std::string insert(std::uint32_t oid, const std::vector<std::optional<std::string>>& values) {
  std::string m = "I" + be32(oid) + "N" + be16(static_cast<std::uint16_t>(values.size()));
  for (const auto& v : values) {
    m += v ? "t" + be32(static_cast<std::uint32_t>(v->size())) + *v : std::string("n");
  }
  return m;
}
std::string begin(std::uint64_t lsn) { return "B" + be64(lsn) + be64(0) + be32(7); }
std::string commit(std::uint64_t lsn) {
  return "C" + std::string(1, '\0') + be64(lsn) + be64(lsn + 8) + be64(0);
}

OtherSlot stopped_slot() {
  OtherSlot slot;
  slot.name = "debezium";
  slot.exists = true;
  slot.slot_type = "logical";
  slot.plugin = "pgoutput";
  slot.database = "app";
  slot.active = false;
  slot.confirmed_flush = Lsn{0x5000};
  return slot;
}

TakeoverScope events_scope() { return {"outbox.events", "event_id", std::nullopt, std::nullopt}; }
TakeoverScope source_scope(std::uint64_t installed) {
  return {"public.outbox", "id", std::string("public.outbox"), Lsn{installed}};
}

bool refused_for(const std::optional<std::string>& why, const std::string& words) {
  INFO(why.value_or("(not refused)"));
  return why && why->find(words) != std::string::npos;
}

}  // namespace

TEST_CASE("takeover runs on a stopped pgoutput slot of this database", "[takeover]") {
  CHECK_FALSE(takeover_refusal(stopped_slot(), "app", "dbz_publication", {events_scope()}));
}

TEST_CASE("takeover refuses while Debezium still uses its slot, and says to stop it",
          "[takeover]") {
  OtherSlot slot = stopped_slot();
  slot.active = true;
  slot.active_pid = 4242;
  auto why = takeover_refusal(slot, "app", "dbz_publication", {events_scope()});
  CHECK(refused_for(why, "in use (pid 4242)"));
  CHECK(refused_for(why, "stop Debezium"));
}

TEST_CASE("takeover refuses a missing slot, another plugin, another database, no position",
          "[takeover]") {
  OtherSlot missing;
  missing.name = "debezium";
  CHECK(refused_for(takeover_refusal(missing, "app", "p", {events_scope()}), "does not exist"));
  OtherSlot decoderbufs = stopped_slot();
  decoderbufs.plugin = "decoderbufs";
  CHECK(refused_for(takeover_refusal(decoderbufs, "app", "p", {events_scope()}), "pgoutput"));
  CHECK(refused_for(takeover_refusal(stopped_slot(), "other", "p", {events_scope()}),
                    "connect to that database"));
  OtherSlot fresh = stopped_slot();
  fresh.confirmed_flush.reset();
  CHECK(
      refused_for(takeover_refusal(fresh, "app", "p", {events_scope()}), "no confirmed position"));
  CHECK(refused_for(takeover_refusal(stopped_slot(), "app", "p", {}),
                    "decodes neither outbox.events nor a source table"));
}

TEST_CASE(
    "takeover refuses until Debezium confirmed the position where the copy trigger "
    "was installed, and says to let it catch up",
    "[takeover]") {
  // Rows written before the trigger have no copy: only Debezium can publish them.
  auto why = takeover_refusal(stopped_slot(), "app", "p", {source_scope(0x5001)});
  CHECK(refused_for(why, "before the copy trigger of public.outbox was installed at 0/5001"));
  CHECK(refused_for(why, "Start Debezium again"));
  CHECK_FALSE(takeover_refusal(stopped_slot(), "app", "p", {source_scope(0x5000)}));
  CHECK_FALSE(takeover_refusal(stopped_slot(), "app", "p", {source_scope(0x10)}));
}

TEST_CASE("uuids are compared in PostgreSQL's output form", "[takeover]") {
  const std::string canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
  CHECK(canonical_uuid(canonical) == canonical);
  CHECK(canonical_uuid("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11") == canonical);
  CHECK(canonical_uuid("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}") == canonical);
  CHECK(canonical_uuid("a0eebc999c0b4ef8bb6d6bb9bd380a11") == canonical);
  CHECK(canonical_uuid("a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11") == canonical);
  CHECK_FALSE(canonical_uuid("order-17"));
  CHECK_FALSE(canonical_uuid(""));
  CHECK_FALSE(canonical_uuid("{}"));
  CHECK_FALSE(canonical_uuid("a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11"));
  CHECK_FALSE(canonical_uuid("-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
  CHECK_FALSE(canonical_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-"));
  CHECK_FALSE(canonical_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"));
}

TEST_CASE("the unconfirmed events are the scope's inserts the peek decoded, per scope",
          "[takeover]") {
  UnconfirmedEvents seen({events_scope(), source_scope(0x10)});
  const std::string a = "00000000-0000-4000-8000-00000000000a";
  const std::string b = "00000000-0000-4000-8000-00000000000b";
  const std::string c = "00000000-0000-4000-8000-00000000000c";
  seen.add(begin(0x6000));
  seen.add(relation(1, "outbox", "events", {"id", "event_id", "topic"}));
  seen.add(relation(2, "public", "outbox", {"id", "aggregatetype", "payload"}));
  seen.add(relation(3, "public", "orders", {"id"}));
  seen.add(insert(1, {"1", a, "orders"}));
  seen.add(insert(2, {std::string("{") + b + "}", "orders", "{}"}));
  seen.add(insert(2, {"not-a-uuid", "orders", "{}"}));  // its copy is dead-lettered
  seen.add(insert(2, {std::nullopt, "orders", "{}"}));
  seen.add(insert(3, {c}));  // another table of the publication: not an event
  seen.add(commit(0x6000));
  CHECK(seen.of(0) == std::set<std::string>{a});
  CHECK(seen.of(1) == std::set<std::string>{b});
  CHECK(seen.inserts() == 4);
}

TEST_CASE("a scope's row without its event id column stops the takeover", "[takeover]") {
  UnconfirmedEvents seen({source_scope(0x10)});
  seen.add(relation(2, "public", "outbox", {"uuid", "aggregatetype"}));
  CHECK_THROWS_AS(seen.add(insert(2, {"x", "orders"})), PgOutputError);
}
