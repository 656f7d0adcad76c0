// Scale-out (pg/shards.h): the target each relay aims at and the moves it makes.
#include <catch2/catch.hpp>

#include <numeric>

#include "core/steady_clock.h"
#include "pg/pg_store.h"
#include "pg/shards.h"

using outbox::pg::plan_shards;
using outbox::pg::shard_list;
using outbox::pg::shard_sql;
using outbox::pg::shard_target;

TEST_CASE("each relay aims at ceil(shards / members), at least one", "[shards]") {
  CHECK(shard_target(8, 1) == 8);
  CHECK(shard_target(8, 2) == 4);
  CHECK(shard_target(8, 3) == 3);
  CHECK(shard_target(8, 8) == 1);
  CHECK(shard_target(8, 20) == 1);  // more relays than shards: the rest stand by
  CHECK(shard_target(2, 0) == 2);   // not counted yet: itself
  // Every shard finds a holder: the targets of all members add up to at least S.
  for (int s = 1; s <= 64; ++s) {
    for (int m = 1; m <= 70; ++m) CHECK(shard_target(s, m) * m >= s);
  }
}

TEST_CASE("a relay alone takes every free shard, in order", "[shards]") {
  auto moves = plan_shards(4, 1, {}, {});
  CHECK(moves.release.empty());
  CHECK(moves.acquire == std::vector<int>{0, 1, 2, 3});
}

TEST_CASE("a second member makes the first give back its highest shards", "[shards]") {
  auto first = plan_shards(8, 2, {0, 1, 2, 3, 4, 5, 6, 7}, {});
  CHECK(first.release == std::vector<int>{7, 6, 5, 4});  // shard 0 (retention) stays
  CHECK(first.acquire.empty());
  // The newcomer takes what is free, up to its target, never a held one.
  auto second = plan_shards(8, 2, {}, {0, 1, 2, 3, 5});
  CHECK(second.acquire == std::vector<int>{4, 6, 7});
}

TEST_CASE("a dead member's shards are taken by the survivors up to the target", "[shards]") {
  // Three relays held 3+3+2 of 8; one died: two members, target 4.
  auto a = plan_shards(8, 2, {0, 1, 2}, {3, 4, 5});
  CHECK(a.release.empty());
  CHECK(a.acquire == std::vector<int>{6});
  auto b = plan_shards(8, 2, {3, 4, 5}, {0, 1, 2, 6});
  CHECK(b.acquire == std::vector<int>{7});
}

TEST_CASE("at the target nothing moves, shards held elsewhere are never asked for", "[shards]") {
  auto moves = plan_shards(8, 2, {0, 1, 2, 3}, {4, 5, 6, 7});
  CHECK(moves.release.empty());
  CHECK(moves.acquire.empty());
  // Below the target but nothing free: nothing to try (the relay waits on a lock instead).
  auto none = plan_shards(4, 3, {}, {0, 1, 2, 3});
  CHECK(none.acquire.empty());
}

TEST_CASE("the shards held before a session ended are taken back first", "[shards]") {
  auto moves = plan_shards(8, 2, {}, {0, 1}, {5, 6, 1});
  CHECK(moves.acquire == std::vector<int>{5, 6, 2, 3});
}

TEST_CASE("repeated planning converges: every shard held once, within one of the target",
          "[shards]") {
  for (int s : {1, 2, 3, 7, 8, 16}) {
    for (int m = 1; m <= 5; ++m) {
      std::vector<std::set<int>> held(m);
      // Relay 0 starts with everything (it was alone), the others with nothing.
      for (int k = 0; k < s; ++k) held[0].insert(k);
      for (int round = 0; round < 10; ++round) {
        for (int r = 0; r < m; ++r) {
          std::set<int> others;
          for (int o = 0; o < m; ++o) {
            if (o != r) others.insert(held[o].begin(), held[o].end());
          }
          auto moves = plan_shards(s, m, held[r], others);
          for (int k : moves.release) held[r].erase(k);
          for (int k : moves.acquire) held[r].insert(k);
        }
      }
      std::set<int> all;
      std::size_t total = 0;
      for (const auto& h : held) {
        total += h.size();
        all.insert(h.begin(), h.end());
        CHECK(static_cast<int>(h.size()) <= shard_target(s, m));
      }
      CHECK(total == static_cast<std::size_t>(s));  // no shard twice
      CHECK(static_cast<int>(all.size()) == s);     // none left out
    }
  }
}

TEST_CASE("the shard expression is the key's hash, or the id without a key", "[shards]") {
  CHECK(shard_sql(8) ==
        "(CASE WHEN key IS NULL THEN id % 8 ELSE (hashtext(key) & 2147483647) % 8 END)::int");
  CHECK(shard_list({}) == "none");
  CHECK(shard_list({0, 3, 5}) == "0,3,5");
}

TEST_CASE("a sharded store builds its statements at construction, without I/O", "[shards]") {
  // The sharded fetch is the single-relay one with the shard filter spliced in: a change of
  // that statement that breaks the splice throws here rather than in production.
  outbox::core::SteadyClock clock;
  CHECK_NOTHROW(outbox::pg::PgOutboxStore("host=/nonexistent", "test", clock,
                                          {4, std::chrono::milliseconds(1000)}));
  outbox::pg::PgOutboxStore store("host=/nonexistent", "test", clock,
                                  {4, std::chrono::milliseconds(1000)});
  CHECK(store.shards() == 4);
  CHECK(store.shards_held() == 0);
  CHECK_FALSE(store.runs_chores());
  outbox::pg::PgOutboxStore single("host=/nonexistent", "test", clock);
  CHECK(single.shards() == 1);
  CHECK_FALSE(single.runs_chores());  // not connected: no leader yet
}
