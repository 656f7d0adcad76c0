#include <catch2/catch.hpp>

#include "replication/confirm_tracker.h"

using outbox::replication::ConfirmTracker;

TEST_CASE("a transaction is confirmable only once all its events are resolved", "[replication]") {
  ConfirmTracker t;
  t.begin();
  auto a = t.add_event();
  auto b = t.add_event();
  t.commit(100);
  CHECK(t.confirmable() == 0);
  t.resolve(a);
  CHECK(t.confirmable() == 0);  // b is still in flight
  t.resolve(b);
  CHECK(t.confirmable() == 100);
  CHECK(t.idle());
}

TEST_CASE("a later transaction never confirms past an earlier unresolved one", "[replication]") {
  ConfirmTracker t;
  t.begin();
  auto first = t.add_event();
  t.commit(100);
  t.begin();
  auto second = t.add_event();
  t.commit(200);
  t.resolve(second);
  CHECK(t.confirmable() == 0);
  t.resolve(first);
  CHECK(t.confirmable() == 200);
}

TEST_CASE("events of an uncommitted (large) transaction hold the position", "[replication]") {
  ConfirmTracker t;
  t.begin();
  for (int i = 0; i < 1000; ++i) t.resolve(t.add_event());  // all acknowledged...
  CHECK(t.confirmable() == 0);                              // ...but no Commit yet
  CHECK_FALSE(t.idle());
  t.commit(500);
  CHECK(t.confirmable() == 500);
}

TEST_CASE("a transaction without outbox events is confirmable at its commit", "[replication]") {
  ConfirmTracker t;
  t.begin();
  t.commit(42);
  CHECK(t.confirmable() == 42);
}

TEST_CASE("reset forgets everything not yet confirmed", "[replication]") {
  ConfirmTracker t;
  t.begin();
  t.resolve(t.add_event());
  t.commit(10);
  t.begin();
  t.add_event();
  t.reset();
  CHECK(t.idle());
  CHECK(t.confirmable() == 10);
  t.begin();  // a new transaction may begin after the reset
  t.commit(20);
  CHECK(t.confirmable() == 20);
}

TEST_CASE("messages out of order are a stream error, resolving twice a logic error",
          "[replication]") {
  ConfirmTracker t;
  CHECK_THROWS_AS(t.add_event(), outbox::replication::StreamOrderError);
  CHECK_THROWS_AS(t.commit(1), outbox::replication::StreamOrderError);
  t.begin();
  CHECK_THROWS_AS(t.begin(), outbox::replication::StreamOrderError);
  auto e = t.add_event();
  t.resolve(e);
  CHECK_THROWS_AS(t.resolve(e), std::logic_error);
}
