// replication/replication_table.h: what is pure in it.
#include <catch2/catch.hpp>

#include "replication/replication_table.h"

using namespace outbox;

TEST_CASE("a pg_snapshot tells which committed transactions it shows", "[replication]") {
  auto s = replication::PgSnapshot::parse("4294967400:4294967410:4294967403,4294967405");
  REQUIRE(s);
  CHECK(s->xmin == 4294967400ULL);
  CHECK(s->xip == std::vector<std::uint64_t>{4294967403ULL, 4294967405ULL});
  auto low = [](std::uint64_t full) { return static_cast<std::uint32_t>(full); };
  CHECK(s->shows_committed(low(4294967399ULL)));        // ended before xmin
  CHECK(s->shows_committed(low(4294967404ULL)));        // ended, not in progress
  CHECK_FALSE(s->shows_committed(low(4294967403ULL)));  // in progress
  CHECK_FALSE(s->shows_committed(low(4294967410ULL)));  // xmax: not ended then
  CHECK_FALSE(s->shows_committed(low(4294967420ULL)));
  auto empty = replication::PgSnapshot::parse("745:745:");
  REQUIRE(empty);
  CHECK(empty->xip.empty());
  CHECK(empty->shows_committed(744));
  CHECK_FALSE(empty->shows_committed(745));
  CHECK_FALSE(replication::PgSnapshot::parse("745:"));
  CHECK_FALSE(replication::PgSnapshot::parse("746:745:"));
  CHECK_FALSE(replication::PgSnapshot::parse("1:2:x"));
}

TEST_CASE("a pg_snapshot widens 32-bit xids and says which transactions it counts as ended",
          "[replication]") {
  auto s = replication::PgSnapshot::parse("4294967290:4294967300:4294967292,4294967295");
  REQUIRE(s);
  CHECK(s->full_xid(4) == 4294967300ULL);  // across the 2^32 boundary
  CHECK(s->full_xid(4294967291U) == 4294967291ULL);
  CHECK(s->full_xid(10) == 4294967306ULL);  // above xmax
  CHECK(s->counts_ended(4294967289ULL));    // below xmin
  CHECK(s->counts_ended(4294967291ULL));
  CHECK_FALSE(s->counts_ended(4294967292ULL));  // in progress
  CHECK(s->counts_ended(4294967299ULL));
  CHECK_FALSE(s->counts_ended(4294967300ULL));  // xmax: not ended then
}

TEST_CASE("the table's reads are the polling read with its byte budget, in each variant",
          "[replication]") {
  auto among = pg::fetch_sql(pg::FetchScope::among);
  CHECK_THAT(among, Catch::Contains("id = ANY($3::bigint[])") &&
                        Catch::Contains("OVER (ORDER BY id) AS upto") && !Catch::Contains("$4") &&
                        !Catch::Contains("$5") && !Catch::Contains("$6"));
  CHECK_THAT(pg::fetch_sql(pg::FetchScope::upto), Catch::Contains("AND id <= $7"));
  CHECK_THAT(pg::fetch_sql(pg::FetchScope::topics), Catch::Contains("topic = ANY($3::text[])"));
}

// Regression: the read-ahead guard's bare count(*), planned as a bitmap scan on a table not yet
// analyzed, read the index entry and table page of every row marked so far at each read-ahead.
TEST_CASE("the read-ahead guard counts in id order and stops one row past the relay's own",
          "[regression]") {
  const std::string guard = "ORDER BY id LIMIT $5::bigint + 1) AS guard) = $5::bigint";
  CHECK_THAT(pg::fetch_sql(pg::FetchScope::upto), Catch::Contains(guard));
  CHECK_THAT(pg::fetch_sql(pg::FetchScope::topics), Catch::Contains(guard));
  CHECK_THAT(pg::fetch_sql(pg::FetchScope::among), !Catch::Contains("guard"));
}
