// The verdict on the relay's PostgreSQL session (pg/session_probe.h) from what the probe saw.
#include <catch2/catch.hpp>

#include "pg/session_probe.h"

using outbox::pg::classify_session;
using outbox::pg::SessionMode;
using outbox::pg::SessionObservations;

namespace {

// Behind a pooler: the cancel key's process id is the pooler's invention.
SessionObservations pooled() {
  SessionObservations seen;
  seen.key_pid = 918273645;
  seen.backend_pid = 4242;
  seen.second_pid = 4243;
  seen.later_pid = 4242;
  return seen;
}

}  // namespace

TEST_CASE("a cancel key naming the server process is a direct connection", "[session_probe]") {
  SessionObservations seen;
  seen.key_pid = 4242;
  seen.backend_pid = 4242;
  auto found = classify_session(seen);
  CHECK(found.mode == SessionMode::direct);
  CHECK(found.own_session());
  CHECK(found.describe().find("direct connection") != std::string::npos);
}

TEST_CASE("a pooler that kept this client's session and gave another its own is session mode",
          "[session_probe]") {
  auto found = classify_session(pooled());
  CHECK(found.mode == SessionMode::session);
  CHECK(found.own_session());
  CHECK(found.describe().find("session mode") != std::string::npos);
}

TEST_CASE("a refused transaction block is statement pooling", "[session_probe]") {
  auto seen = pooled();
  seen.second_refused_block = true;
  seen.second_error = "transaction blocks not allowed in statement pooling mode";
  auto found = classify_session(seen);
  CHECK(found.mode == SessionMode::statement);
  CHECK_FALSE(found.own_session());
  CHECK(found.refusal().find("pool_mode = statement") != std::string::npos);
  CHECK(found.refusal().find("transaction blocks not allowed") != std::string::npos);
  CHECK(found.refusal().find("two relays could both believe they lead") != std::string::npos);
}

TEST_CASE(
    "another client in the same session, or the same client in another, is transaction pooling",
    "[session_probe]") {
  auto shared = pooled();
  shared.second_saw_marker = true;
  CHECK(classify_session(shared).mode == SessionMode::transaction);

  auto moved = pooled();
  moved.later_pid = 4243;
  CHECK(classify_session(moved).mode == SessionMode::transaction);
  CHECK(classify_session(moved).evidence.find("4242, then 4243") != std::string::npos);

  auto lost = pooled();  // same process id, marker gone: the session was reset and reused
  lost.later_kept_marker = false;
  CHECK(classify_session(lost).mode == SessionMode::transaction);
  CHECK(classify_session(lost).refusal().find("pool_mode = transaction") != std::string::npos);
}

TEST_CASE("a new session carrying another client's marker is refused, even with a matching key",
          "[session_probe]") {
  // A pooler that passes the server's cancel key on would look direct; the marker tells.
  SessionObservations seen;
  seen.key_pid = 4242;
  seen.backend_pid = 4242;
  seen.found_marker = "0123abcd";
  auto found = classify_session(seen);
  CHECK(found.mode == SessionMode::transaction);
  CHECK(found.evidence.find("without reset") != std::string::npos);
}

TEST_CASE("a statement outside the probed session is named", "[session_probe]") {
  using outbox::pg::session_moved;
  CHECK_FALSE(session_moved(10, "m1", 10, "m1").has_value());
  auto other_process = session_moved(10, "m1", 11, "");
  REQUIRE(other_process.has_value());
  CHECK(other_process->find("server process 11") != std::string::npos);
  CHECK(session_moved(10, "m1", 10, "m2").has_value());  // same process, another's marker
}

TEST_CASE("a pooler refusing the relay's startup parameters gets a hint", "[session_probe]") {
  using outbox::pg::pooler_startup_hint;
  auto options = pooler_startup_hint(
      "connection to server at \"127.0.0.1\", port 6432 failed: FATAL:  unsupported startup "
      "parameter: options");
  REQUIRE(options.has_value());
  CHECK(options->find("ignore_startup_parameters = extra_float_digits, options") !=
        std::string::npos);
  auto replication = pooler_startup_hint("FATAL:  unsupported startup parameter: replication");
  REQUIRE(replication.has_value());
  CHECK(replication->find("PostgreSQL directly") != std::string::npos);
  CHECK_FALSE(pooler_startup_hint("FATAL:  password authentication failed").has_value());
}

TEST_CASE("session markers are random and distinct", "[session_probe]") {
  auto a = outbox::pg::new_session_marker(), b = outbox::pg::new_session_marker();
  CHECK(a.size() == 32);
  CHECK(a != b);
}
