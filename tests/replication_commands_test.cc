// The replication commands the relay sends, per PostgreSQL version: pure text, no server.
#include <catch2/catch.hpp>

#include "replication/replication_connection.h"

using outbox::replication::create_slot_command;
using outbox::replication::start_replication_command;

// Regression: PostgreSQL 13 and 14 refused the slot creation (they know no parenthesised
// options) and START_REPLICATION (13 knows no `messages` option): replication never started.
TEST_CASE("the slot is created in the syntax of the server's version",
          "[replication][regression]") {
  for (int version : {130000, 130022, 140000, 140019}) {
    CAPTURE(version);
    CHECK(create_slot_command("outbox_relay", version) ==
          "CREATE_REPLICATION_SLOT outbox_relay LOGICAL pgoutput EXPORT_SNAPSHOT");
  }
  for (int version : {150000, 150014, 160002, 170006, 180001}) {
    CAPTURE(version);
    CHECK(create_slot_command("outbox_relay", version) ==
          "CREATE_REPLICATION_SLOT outbox_relay LOGICAL pgoutput (SNAPSHOT 'export')");
  }
}

// Regression: PostgreSQL 13 refused START_REPLICATION's `messages` option (added in 14).
TEST_CASE("replication starts with options every supported version knows",
          "[replication][regression]") {
  CHECK(start_replication_command("outbox_relay", "outbox_relay") ==
        "START_REPLICATION SLOT outbox_relay LOGICAL 0/0 (proto_version '1', "
        "publication_names '\"outbox_relay\"')");
}
