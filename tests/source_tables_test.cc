// source.tables: the configuration's rules (each mistake named by key and line) and the SQL
// migrate generates for a source table (relay/pg/source_tables.h).
#include <catch2/catch.hpp>

#include <string>

#include "config/config.h"
#include "pg/source_tables.h"

using namespace outbox;

namespace {

constexpr const char* kHead = R"(postgres:
  dsn: "host=db dbname=app"
kafka:
  bootstrap_servers: "k:9092"
)";

config::ParseResult parse(const std::string& source_section) {
  config::ParseOptions o;
  o.env = [](const std::string&) { return std::nullopt; };
  return config::parse_config(std::string(kHead) + source_section, o);
}

// The one error of `r`, as printed (line, key, message).
std::string only_error(const config::ParseResult& r) {
  REQUIRE(r.errors.size() == 1);
  return r.errors[0].to_string();
}

pg::Columns debezium_columns() {
  return {{"id", {"uuid", 'U'}},
          {"aggregatetype", {"varchar", 'S'}},
          {"aggregateid", {"varchar", 'S'}},
          {"type", {"varchar", 'S'}},
          {"payload", {"jsonb", 'U'}}};
}

pg::SourceTable debezium_table() {
  pg::SourceTable t;
  t.schema = "public";
  t.table = "outboxevent";
  t.headers = {{"type", "eventType"}};
  t.config_key = "source.tables[0]";
  return t;
}

}  // namespace

TEST_CASE("source.tables: Debezium's table takes two lines, every column defaulted",
          "[config][source_tables]") {
  auto r = parse("source:\n  tables: [{table: public.outboxevent}]\n");
  REQUIRE(r.errors.empty());
  REQUIRE(r.config->source.tables.size() == 1);
  const auto& t = r.config->source.tables[0];
  CHECK(t.table == "public.outboxevent");
  CHECK(t.event_id == "id");
  CHECK(t.topic == "aggregatetype");
  CHECK(t.key == "aggregateid");
  CHECK(t.payload == "payload");
  CHECK(t.created_at.empty());
  CHECK(t.headers.empty());
}

TEST_CASE("source.tables: every field is read, headers in file order", "[config][source_tables]") {
  auto r = parse(R"(source:
  tables:
    - table: billing.events
      event_id: event_uuid
      topic: stream
      key: entity
      payload: body
      created_at: written_at
      headers: {type: eventType, tenant: tenant-id}
)");
  REQUIRE(r.errors.empty());
  const auto& t = r.config->source.tables.at(0);
  CHECK(t.event_id == "event_uuid");
  CHECK(t.topic == "stream");
  CHECK(t.key == "entity");
  CHECK(t.payload == "body");
  CHECK(t.created_at == "written_at");
  CHECK(t.headers == std::vector<std::pair<std::string, std::string>>{{"type", "eventType"},
                                                                      {"tenant", "tenant-id"}});
}

TEST_CASE("source.tables: a value that is not a list is refused with the key and line",
          "[config][source_tables]") {
  CHECK(only_error(parse("source:\n  tables: public.outboxevent\n")) ==
        "line 6: source.tables: must be a list of tables, e.g. [{table: public.outboxevent}]");
}

TEST_CASE("source.tables: an entry that is not a mapping is refused", "[config][source_tables]") {
  CHECK_THAT(only_error(parse("source:\n  tables:\n    - public.outboxevent\n")),
             Catch::StartsWith("line 7: source.tables[0]: must be a mapping"));
}

TEST_CASE("source.tables: an unknown field is refused, listing the known ones",
          "[config][source_tables]") {
  CHECK(only_error(parse("source:\n  tables:\n    - table: public.outboxevent\n      "
                         "aggregate_type: kind\n")) ==
        "line 8: source.tables[0].aggregate_type: unknown field (known here: table, event_id, "
        "topic, key, payload, created_at, headers)");
}

TEST_CASE("source.tables: an entry without table is refused", "[config][source_tables]") {
  CHECK(only_error(parse("source:\n  tables:\n    - topic: kind\n")) ==
        "line 7: source.tables[0].table: is required (schema.table)");
}

TEST_CASE("source.tables: a table not schema-qualified is refused", "[config][source_tables]") {
  CHECK(only_error(parse("source:\n  tables: [{table: outboxevent}]\n")) ==
        "line 6: source.tables[0].table: must be schema-qualified, e.g. public.outboxevent "
        "(got \"outboxevent\")");
  CHECK_THAT(only_error(parse("source:\n  tables: [{table: \"Public.Outbox\"}]\n")),
             Catch::StartsWith("line 6: source.tables[0].table: must be schema.table, each"));
}

TEST_CASE("source.tables: a table of schema outbox is refused", "[config][source_tables]") {
  CHECK(only_error(parse("source:\n  tables: [{table: outbox.events}]\n")) ==
        "line 6: source.tables[0].table: must be a service's table, not one of schema outbox "
        "(got \"outbox.events\")");
}

TEST_CASE("source.tables: a column name the relay cannot use is refused",
          "[config][source_tables]") {
  CHECK_THAT(only_error(parse("source:\n  tables:\n    - table: public.o\n      topic: "
                              "\"Aggregate Type\"\n")),
             Catch::StartsWith("line 8: source.tables[0].topic: must be a column name"));
}

TEST_CASE("source.tables: a header the relay sets, or a bad header column, is refused",
          "[config][source_tables]") {
  CHECK(only_error(parse("source:\n  tables:\n    - table: public.o\n      headers: {id: "
                         "outbox-event-id}\n")) ==
        "line 8: source.tables[0].headers.id: header outbox-event-id is set by the relay; "
        "choose another name");
  CHECK_THAT(only_error(parse("source:\n  tables:\n    - table: public.o\n      headers:\n"
                              "        Type: type\n")),
             Catch::StartsWith("line 9: source.tables[0].headers.Type: the column name must"));
}

TEST_CASE("source.tables: a table listed twice is refused at its second entry",
          "[config][source_tables]") {
  CHECK(only_error(parse("source:\n  tables:\n    - table: public.o\n    - table: public.o\n")) ==
        "line 8: source.tables[1].table: table public.o is listed twice; give each table once");
}

TEST_CASE(
    "source table SQL: a missing column or a type the copy cannot convert is refused "
    "with the table, the column and what to do",
    "[source_tables]") {
  pg::SourceTable t = debezium_table();
  CHECK_FALSE(pg::mapping_problem(t, debezium_columns()));

  pg::Columns no_type = debezium_columns();
  no_type.erase("type");
  CHECK(pg::mapping_problem(t, no_type) ==
        "source table public.outboxevent (source.tables[0]) has no column \"type\" for the "
        "header eventType: name the column holding it (source.tables[0].headers.type)");

  pg::Columns int_id = debezium_columns();
  int_id["id"] = {"int8", 'N'};
  CHECK_THAT(*pg::mapping_problem(t, int_id),
             Catch::Contains("column \"id\" (the event id) is of type int8") &&
                 Catch::Contains("give a uuid column, or a text one holding uuids"));

  pg::Columns xml_payload = debezium_columns();
  xml_payload["payload"] = {"xml", 'U'};
  CHECK_THAT(*pg::mapping_problem(t, xml_payload),
             Catch::Contains("give a jsonb, json, text or bytea column"));

  t.created_at_column = "payload";
  CHECK_THAT(*pg::mapping_problem(t, debezium_columns()),
             Catch::Contains("(created_at) is of type jsonb: give a timestamptz or timestamp"));
}

TEST_CASE("source table SQL: the copy maps every part, checks in SQL, never raises",
          "[source_tables]") {
  pg::SourceTable t = debezium_table();
  std::string body = pg::copy_function_body(t, debezium_columns());
  // Invariant source-copy-never-fails: no EXCEPTION block (a subtransaction per row), no
  // RAISE; the uuid cast only behind the pattern; a row without topic keeps the CHECK.
  CHECK(body.find("EXCEPTION") == std::string::npos);
  CHECK(body.find("RAISE") == std::string::npos);
  CHECK_THAT(body, Catch::Contains("CASE WHEN new_event_id ~ '^[0-9a-fA-F]{8}-") &&
                       Catch::Contains("THEN new_event_id::uuid ELSE gen_random_uuid() END"));
  CHECK_THAT(body, Catch::Contains("THEN '(none)' ELSE new_topic END"));
  CHECK_THAT(body, Catch::Contains("NEW.\"aggregateid\"::text"));
  CHECK_THAT(body, Catch::Contains("convert_to(NEW.\"payload\"::text, 'UTF8')"));
  CHECK_THAT(body, Catch::Contains(
                       "jsonb_strip_nulls(jsonb_build_object('eventType', NEW.\"type\"::text))"));
  CHECK_THAT(body, Catch::Contains("ON CONFLICT (event_id) DO NOTHING"));
  CHECK_THAT(body, Catch::Contains("'public.outboxevent'"));  // source_table

  pg::Columns bytes = debezium_columns();
  bytes["payload"] = {"bytea", 'U'};
  CHECK_THAT(pg::copy_function_body(t, bytes), Catch::Contains("            NEW.\"payload\",\n"));
  // A header's name is a literal, never read as a part of the template.
  pg::SourceTable odd = t;
  odd.headers = {{"type", "{created_at}'s"}};
  CHECK_THAT(pg::copy_function_body(odd, debezium_columns()),
             Catch::Contains("jsonb_build_object('{created_at}''s', NEW.\"type\"::text)"));
  // The same config gives the same body: a second migrate finds it current.
  CHECK(pg::copy_function_body(t, debezium_columns()) == body);
}

TEST_CASE(
    "source table SQL: SECURITY DEFINER with a pinned search_path, EXECUTE revoked, "
    "AFTER INSERT FOR EACH ROW",
    "[source_tables]") {
  pg::SourceTable t = debezium_table();
  auto statements = pg::install_statements(t, debezium_columns());
  REQUIRE(statements.size() == 5);
  std::string function = "outbox." + pg::copy_function_name(t) + "()";
  CHECK_THAT(statements[0],
             Catch::StartsWith("CREATE OR REPLACE FUNCTION " + function +
                               " RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET "
                               "search_path = pg_catalog, pg_temp AS $copy$"));
  CHECK(statements[1] == "REVOKE ALL ON FUNCTION " + function + " FROM PUBLIC");
  CHECK(statements[3] == "DROP TRIGGER IF EXISTS outbox_copy ON \"public\".\"outboxevent\"");
  CHECK(statements[4] ==
        "CREATE TRIGGER outbox_copy AFTER INSERT ON \"public\".\"outboxevent\" FOR EACH ROW "
        "EXECUTE FUNCTION " +
            function);
  // One function per table, whatever the length of its name.
  pg::SourceTable other = t;
  other.table = std::string(63, 'x');
  CHECK(pg::copy_function_name(other) != pg::copy_function_name(t));
  CHECK(pg::copy_function_name(other).size() < 63);
}
