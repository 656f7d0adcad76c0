// The pgoutput decoder against messages captured from a real PostgreSQL 15
// (tests/data/pgoutput, made by integration/tools/capture_pgoutput.py), and against damaged
// bytes: every failure must be a PgOutputError, never a read past the buffer (ASan runs these).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "replication/pgoutput.h"

using namespace outbox::replication;
namespace fs = std::filesystem;

namespace {

const fs::path kDataDir = fs::path(OUTBOX_SOURCE_DIR) / "tests" / "data" / "pgoutput";

// Oids of the capture's tables and type (fresh cluster, same script: always these).
constexpr std::uint32_t kEventsOid = 16386;
constexpr std::uint32_t kAccountsOid = 16400;
constexpr std::uint32_t kMoodTypeOid = 16408;
constexpr std::uint32_t kMoodsOid = 16413;

std::string read_bin(const std::string& name) {
  std::ifstream in(kDataDir / name, std::ios::binary);
  REQUIRE(in.good());
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

template <class T>
T decode_as(const std::string& name) {
  PgOutputMessage m = decode_pgoutput(read_bin(name));
  INFO(name << " decoded as " << message_name(m));
  REQUIRE(std::holds_alternative<T>(m));
  return std::get<T>(std::move(m));
}

// The captured stream in order: NNN_kind.bin.
std::vector<fs::path> stream_files() {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(kDataDir)) {
    std::string name = entry.path().filename().string();
    if (name.size() > 4 && std::isdigit(static_cast<unsigned char>(name[0])) &&
        entry.path().extension() == ".bin") {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<std::string> all_captured() {
  std::vector<std::string> out;
  for (const auto& f : stream_files()) out.push_back(f.filename().string());
  out.push_back("binary_insert.bin");
  return out;
}

TupleValue text(std::string s) { return {TupleValue::Kind::text, std::move(s)}; }
TupleValue null() { return {TupleValue::Kind::null, {}}; }
TupleValue unchanged() { return {TupleValue::Kind::unchanged_toast, {}}; }

std::string be32(std::uint32_t v) {
  std::string s;
  for (int shift = 24; shift >= 0; shift -= 8) s += static_cast<char>((v >> shift) & 0xff);
  return s;
}
std::string be64(std::uint64_t v) {
  return be32(static_cast<std::uint32_t>(v >> 32)) + be32(static_cast<std::uint32_t>(v));
}

std::string decode_error(std::string_view bytes) {
  try {
    decode_pgoutput(bytes);
  } catch (const PgOutputError& e) {
    return e.what();
  }
  FAIL("decoded without an error");
  return {};
}

}  // namespace

TEST_CASE("a single-row insert transaction decodes to Begin, Relation, Insert, Commit",
          "[pgoutput]") {
  auto begin = decode_as<Begin>("001_begin.bin");
  CHECK(begin.xid == 735);
  CHECK(begin.final_lsn.to_string() == "0/153EC90");
  // Captured today, not in the protocol's epoch or the far future.
  CHECK(pg_time_to_system(begin.commit_time) >
        std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000)));

  auto rel = decode_as<Relation>("002_relation.bin");
  CHECK(rel.oid == kEventsOid);
  CHECK(rel.schema == "outbox");
  CHECK(rel.name == "events");
  CHECK(rel.replica_identity == 'd');
  std::vector<std::string> names;
  for (const auto& c : rel.columns) names.push_back(c.name);
  CHECK(names == std::vector<std::string>{"id", "event_id", "topic", "key", "payload", "headers",
                                          "created_at", "published_at", "attempts", "last_error",
                                          "dead_lettered_at"});
  // int8, uuid, text, text, bytea, jsonb, timestamptz, timestamptz, int4, text, timestamptz
  std::vector<std::uint32_t> types;
  for (const auto& c : rel.columns) types.push_back(c.type_oid);
  CHECK(types == std::vector<std::uint32_t>{20, 2950, 25, 25, 17, 3802, 1184, 1184, 23, 25, 1184});
  for (const auto& c : rel.columns) {
    CHECK(c.key == (c.name == "id"));  // the primary key is the replica identity
    CHECK(c.type_modifier == -1);
  }

  auto ins = decode_as<Insert>("003_insert.bin");
  CHECK(ins.relation_oid == kEventsOid);
  REQUIRE(ins.values.size() == 11);
  CHECK(column_text(rel, ins, "id") == "1");
  CHECK(column_text(rel, ins, "event_id") == "00000000-0000-4000-8000-000000000001");
  CHECK(column_text(rel, ins, "topic") == "orders");
  CHECK(column_text(rel, ins, "key") == "order-1");
  CHECK(column_text(rel, ins, "payload") == R"(\x7b226964223a317d)");
  CHECK(decode_bytea_hex(*column_text(rel, ins, "payload")) == R"({"id":1})");
  CHECK(column_text(rel, ins, "headers") == R"({"trace": "abc"})");  // jsonb's own spacing
  CHECK(column_text(rel, ins, "created_at") == "2024-01-02 03:04:05.123456+00");
  CHECK(column_text(rel, ins, "published_at") == std::nullopt);
  CHECK(column_text(rel, ins, "attempts") == "0");
  CHECK(column_text(rel, ins, "dead_lettered_at") == std::nullopt);

  auto commit = decode_as<Commit>("004_commit.bin");
  CHECK(commit.flags == 0);
  CHECK(commit.commit_lsn == begin.final_lsn);
  CHECK(commit.end_lsn > commit.commit_lsn);
  CHECK(commit.end_lsn.to_string() == "0/153ECC0");
  CHECK(commit.commit_time == begin.commit_time);
}

TEST_CASE("a multi-row insert sends one Insert per row and no second Relation", "[pgoutput]") {
  auto rel = decode_as<Relation>("002_relation.bin");
  CHECK(decode_as<Begin>("005_begin.bin").xid == 736);
  auto a = decode_as<Insert>("006_insert.bin");
  auto b = decode_as<Insert>("007_insert.bin");
  auto c = decode_as<Insert>("008_insert.bin");
  decode_as<Commit>("009_commit.bin");
  CHECK(column_text(rel, a, "id") == "2");
  CHECK(column_text(rel, b, "id") == "3");
  CHECK(column_text(rel, c, "id") == "4");
  CHECK(column_text(rel, a, "key") == "order-2");
  CHECK(column_text(rel, c, "topic") == "payments");
  CHECK(column_text(rel, c, "key") == "pay-1");
  CHECK(decode_bytea_hex(*column_text(rel, c, "payload")) == "\x03");
  CHECK(column_text(rel, a, "headers") == "{}");  // the column default
}

TEST_CASE("NULL key and payload arrive as null values, not empty text", "[pgoutput]") {
  auto rel = decode_as<Relation>("002_relation.bin");
  auto ins = decode_as<Insert>("011_insert.bin");
  CHECK(ins.values[3] == null());
  CHECK(ins.values[4] == null());
  CHECK(column_text(rel, ins, "topic") == "audit");
  CHECK(column_text(rel, ins, "key") == std::nullopt);
  CHECK(column_text(rel, ins, "payload") == std::nullopt);
}

TEST_CASE("after ALTER TABLE ADD COLUMN a new Relation comes and names still find the columns",
          "[pgoutput]") {
  // The DDL-only transaction (xid 738) sent nothing at all: PostgreSQL 15 skips empty ones.
  CHECK(decode_as<Begin>("010_begin.bin").xid == 737);
  CHECK(decode_as<Begin>("013_begin.bin").xid == 739);

  RelationCache cache;
  cache.update(decode_as<Relation>("002_relation.bin"));
  cache.update(decode_as<Relation>("014_relation.bin"));
  CHECK(cache.size() == 1);
  const Relation& rel = cache.get(kEventsOid);
  REQUIRE(rel.columns.size() == 12);
  CHECK(rel.columns.back().name == "tenant");
  CHECK(rel.columns.back().type_oid == 25);
  CHECK(rel.column_index("tenant") == 11u);

  auto ins = decode_as<Insert>("015_insert.bin");
  REQUIRE(ins.values.size() == 12);
  CHECK(column_text(rel, ins, "topic") == "orders");
  CHECK(column_text(rel, ins, "key") == "order-4");
  CHECK(column_text(rel, ins, "tenant") == "acme");
  CHECK(decode_bytea_hex(*column_text(rel, ins, "payload")) == std::string("\xff\x00", 2));

  // The old definition no longer fits the row: refused rather than misread.
  auto old_rel = decode_as<Relation>("002_relation.bin");
  CHECK_THROWS_AS(column_text(old_rel, ins, "topic"), PgOutputError);
}

TEST_CASE("Update and Delete decode with their old-row parts", "[pgoutput]") {
  auto rel = decode_as<Relation>("018_relation.bin");
  CHECK(rel.oid == kAccountsOid);
  CHECK(rel.schema == "public");
  CHECK(rel.name == "accounts");
  REQUIRE(rel.columns.size() == 3);
  CHECK(rel.columns[0].key);
  CHECK_FALSE(rel.columns[1].key);
  CHECK(rel.columns[1].type_oid == 1043);     // varchar
  CHECK(rel.columns[1].type_modifier == 44);  // varchar(40): 40 + the 4-byte header
  CHECK(rel.columns[2].type_modifier == -1);

  // No replica identity column changed: no old row; the TOASTed notes were left alone.
  auto u1 = decode_as<Update>("019_update.bin");
  CHECK(u1.relation_oid == kAccountsOid);
  CHECK(u1.old_kind == OldTupleKind::none);
  CHECK(u1.old_values.empty());
  CHECK(u1.new_values == Tuple{text("1"), text("alice2"), unchanged()});

  // The key changed: 'K' with the key columns, nulls for the others.
  auto u2 = decode_as<Update>("020_update.bin");
  CHECK(u2.old_kind == OldTupleKind::key);
  CHECK(u2.old_values == Tuple{text("2"), null(), null()});
  CHECK(u2.new_values == Tuple{text("3"), text("bob"), text("short")});
  CHECK(std::string(message_name(PgOutputMessage(u2))) == "Update");

  auto d = decode_as<Delete>("021_delete.bin");
  CHECK(d.relation_oid == kAccountsOid);
  CHECK(d.old_kind == OldTupleKind::key);
  CHECK(d.old_values == Tuple{text("3"), null(), null()});
}

TEST_CASE("a user-defined column type sends a Type message before the Relation", "[pgoutput]") {
  auto type = decode_as<Type>("024_type.bin");
  CHECK(type.oid == kMoodTypeOid);
  CHECK(type.schema == "public");
  CHECK(type.name == "mood");

  auto rel = decode_as<Relation>("025_relation.bin");
  CHECK(rel.oid == kMoodsOid);
  CHECK(rel.replica_identity == 'f');
  REQUIRE(rel.columns.size() == 2);
  CHECK(rel.columns[1].type_oid == kMoodTypeOid);
  CHECK(rel.columns[0].key);  // REPLICA IDENTITY FULL: every column is flagged as key
  CHECK(rel.columns[1].key);

  auto ins = decode_as<Insert>("026_insert.bin");
  CHECK(column_text(rel, ins, "m") == "happy");

  auto u = decode_as<Update>("029_update.bin");
  CHECK(u.old_kind == OldTupleKind::full);
  CHECK(u.old_values == Tuple{text("1"), text("happy")});
  CHECK(u.new_values == Tuple{text("1"), text("sad")});
}

TEST_CASE("TRUNCATE lists its tables and options, after re-sending their Relations", "[pgoutput]") {
  // TRUNCATE invalidated the tables' cache entries, so pgoutput sent their schema again,
  // unchanged.
  CHECK(read_bin("032_relation.bin") == read_bin("018_relation.bin"));
  CHECK(read_bin("033_type.bin") == read_bin("024_type.bin"));
  CHECK(read_bin("034_relation.bin") == read_bin("025_relation.bin"));

  auto t = decode_as<Truncate>("035_truncate.bin");
  CHECK(t.options == Truncate::kRestartIdentity);
  CHECK(t.relation_oids == std::vector<std::uint32_t>{kAccountsOid, kMoodsOid});
}

TEST_CASE("logical decoding messages: transactional inside a transaction, the other alone",
          "[pgoutput]") {
  auto begin = decode_as<Begin>("037_begin.bin");
  auto m = decode_as<LogicalMessage>("038_message.bin");
  auto commit = decode_as<Commit>("039_commit.bin");
  CHECK(m.transactional);
  CHECK(m.prefix == "p");
  CHECK(m.content == "hello");
  // The LSN is the end of the message's WAL record: here, where the commit record starts.
  CHECK(m.lsn == begin.final_lsn);
  CHECK(m.lsn == commit.commit_lsn);

  // Not transactional: sent on its own, between the transactions around it.
  auto alone = decode_as<LogicalMessage>("040_message.bin");
  CHECK_FALSE(alone.transactional);
  CHECK(alone.content == "now");
  CHECK(alone.lsn > commit.end_lsn);
  CHECK(alone.lsn <= decode_as<Begin>("041_begin.bin").final_lsn);
}

TEST_CASE("a transaction from a replication origin carries an Origin message", "[pgoutput]") {
  auto begin = decode_as<Begin>("041_begin.bin");
  auto origin = decode_as<Origin>("042_origin.bin");
  CHECK(origin.name == "upstream");
  CHECK(origin.commit_lsn.to_string() == "0/ABCDEF");
  // The commit timestamp is the one given to pg_replication_origin_xact_setup.
  CHECK(pg_time_to_system(begin.commit_time) ==
        std::chrono::system_clock::time_point(std::chrono::seconds(1'704'164'645)));
  auto ins = decode_as<Insert>("043_insert.bin");
  CHECK(column_text(decode_as<Relation>("014_relation.bin"), ins, "key") == "from-upstream");
}

TEST_CASE("the whole captured stream is consistent: transactions, LSNs, relations", "[pgoutput]") {
  auto files = stream_files();
  REQUIRE(files.size() == 44);
  RelationCache cache;
  std::optional<Begin> open;
  Lsn last_end;
  int transactions = 0, inserts = 0;
  for (const auto& file : files) {
    std::string name = file.filename().string();
    INFO(name);
    PgOutputMessage m = decode_pgoutput(read_bin(name));
    // The file name says the kind the capture saw in the first byte.
    std::string kind = name.substr(4, name.size() - 8);
    std::string decoded = message_name(m);
    std::transform(decoded.begin(), decoded.end(), decoded.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    CHECK(kind == decoded);

    if (auto* b = std::get_if<Begin>(&m)) {
      CHECK_FALSE(open);
      CHECK(b->final_lsn > last_end);
      open = *b;
    } else if (auto* c = std::get_if<Commit>(&m)) {
      REQUIRE(open);
      CHECK(c->commit_lsn == open->final_lsn);
      CHECK(c->commit_time == open->commit_time);
      CHECK(c->end_lsn > c->commit_lsn);
      last_end = c->end_lsn;
      open.reset();
      ++transactions;
    } else if (auto* r = std::get_if<Relation>(&m)) {
      CHECK(open);
      cache.update(*r);
    } else if (auto* i = std::get_if<Insert>(&m)) {
      REQUIRE(open);
      CHECK(i->values.size() == cache.get(i->relation_oid).columns.size());
      ++inserts;
    } else if (auto* u = std::get_if<Update>(&m)) {
      CHECK(u->new_values.size() == cache.get(u->relation_oid).columns.size());
    } else if (auto* d = std::get_if<Delete>(&m)) {
      CHECK(d->old_values.size() == cache.get(d->relation_oid).columns.size());
    } else if (auto* t = std::get_if<Truncate>(&m)) {
      for (auto oid : t->relation_oids) CHECK(cache.find(oid) != nullptr);
    } else if (auto* msg = std::get_if<LogicalMessage>(&m)) {
      CHECK(msg->transactional == open.has_value());
    }
  }
  CHECK_FALSE(open);
  CHECK(transactions == 10);
  CHECK(inserts == 8);
  CHECK(cache.size() == 3);
  CHECK(cache.find(12345) == nullptr);
  CHECK_THROWS_AS(cache.get(12345), PgOutputError);
}

TEST_CASE("the binary option sends each column in its type's send format", "[pgoutput]") {
  auto rel = decode_as<Relation>("002_relation.bin");
  auto ins = decode_as<Insert>("binary_insert.bin");
  REQUIRE(ins.values.size() == 11);
  CHECK(ins.values[0] == TupleValue{TupleValue::Kind::binary, be64(1)});  // int8
  CHECK(ins.values[1].data.size() == 16);                                 // uuid
  CHECK(ins.values[2] == TupleValue{TupleValue::Kind::binary, "orders"});
  CHECK(ins.values[4] == TupleValue{TupleValue::Kind::binary, R"({"id":1})"});  // raw bytea
  CHECK(ins.values[5].data == "\x01{\"trace\": \"abc\"}");  // jsonb: version 1, then the text
  CHECK(ins.values[7] == null());
  // The outbox reads text; binary values are refused, not misread.
  CHECK_THROWS_AS(column_text(rel, ins, "topic"), PgOutputError);
}

TEST_CASE("every truncation of every captured message throws PgOutputError", "[pgoutput]") {
  for (const auto& name : all_captured()) {
    std::string bytes = read_bin(name);
    for (std::size_t len = 0; len < bytes.size(); ++len) {
      INFO(name << " cut to " << len << " of " << bytes.size() << " bytes");
      // A copy of exactly `len` bytes, so that ASan sees any read past it.
      std::vector<char> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(len));
      CHECK_THROWS_AS(decode_pgoutput(std::string_view(cut.data(), cut.size())), PgOutputError);
    }
    INFO(name << " with a byte appended");
    CHECK_THROWS_AS(decode_pgoutput(bytes + '\0'), PgOutputError);
  }
}

TEST_CASE("randomly damaged messages decode or throw PgOutputError, nothing else", "[pgoutput]") {
  std::mt19937 rng(20240102);  // fixed: a failure must reproduce
  for (const auto& name : all_captured()) {
    std::string bytes = read_bin(name);
    for (int round = 0; round < 200; ++round) {
      std::string damaged = bytes;
      int flips = 1 + static_cast<int>(rng() % 4);
      for (int f = 0; f < flips; ++f) {
        // Spare the type byte in most rounds, so the damage reaches the message's fields.
        std::size_t at = damaged.size() > 1 && round % 8 != 0 ? 1 + rng() % (damaged.size() - 1)
                                                              : rng() % damaged.size();
        damaged[at] = static_cast<char>(rng() & 0xff);
      }
      std::vector<char> exact(damaged.begin(), damaged.end());
      try {
        decode_pgoutput(std::string_view(exact.data(), exact.size()));
      } catch (const PgOutputError&) {
      }
    }
  }
}

TEST_CASE("unknown, streaming and malformed messages are refused with a clear message",
          "[pgoutput]") {
  CHECK_THAT(decode_error(""), Catch::Contains("empty"));
  CHECK_THAT(decode_error("Z"), Catch::Contains("unknown message type 'Z'"));
  CHECK_THAT(decode_error(std::string(1, '\x01')), Catch::Contains("0x01"));
  CHECK_THAT(decode_error("S" + be32(1) + '\1'),
             Catch::Contains("Stream Start") && Catch::Contains("proto_version"));
  CHECK_THAT(decode_error("b"), Catch::Contains("Begin Prepare"));

  std::string ins_head = "I" + be32(kEventsOid) + "N";
  // A text value of length -1 (libpq's NULL marker, never pgoutput's).
  CHECK_THAT(decode_error(ins_head + std::string("\0\1t", 3) + be32(0xffffffff)),
             Catch::Contains("negative length -1") && Catch::Contains("offset 9"));
  // A column count of -1.
  CHECK_THAT(decode_error(ins_head + "\xff\xff"),
             Catch::Contains("negative TupleData column count"));
  // A column count the buffer cannot hold: refused before anything is allocated.
  CHECK_THAT(decode_error(ins_head + "\x7f\xff" + "nn"), Catch::Contains("cannot fit"));
  CHECK_THAT(decode_error(ins_head + std::string("\0\1x", 3)),
             Catch::Contains("unknown TupleData column kind 'x'"));
  CHECK_THAT(decode_error("I" + be32(kEventsOid) + "K" + std::string("\0\0", 2)),
             Catch::Contains("Insert tuple marker is 'K', expected 'N'"));
  CHECK_THAT(decode_error("D" + be32(kEventsOid) + "N" + std::string("\0\0", 2)),
             Catch::Contains("expected 'K' or 'O'"));
  // A string without its NUL.
  CHECK_THAT(decode_error("Y" + be32(1) + "public"), Catch::Contains("unterminated namespace"));
  // Relation and Truncate counts.
  CHECK_THAT(decode_error("R" + be32(1) + std::string("s\0n\0d\xff\xfe", 7)),
             Catch::Contains("negative column count -2"));
  CHECK_THAT(decode_error("T" + be32(0x7fffffff) + '\0' + be32(1)),
             Catch::Contains("relation count 2147483647 cannot fit"));
  CHECK_THAT(decode_error("T" + be32(0x80000000) + '\0'),
             Catch::Contains("negative relation count"));
  // Message content length.
  CHECK_THAT(
      decode_error("M" + std::string(1, '\1') + be64(1) + std::string("p\0", 2) + be32(0xfffffffe)),
      Catch::Contains("negative length -2 of content"));
  CHECK_THAT(decode_error("M" + std::string(1, '\1') + be64(1) + std::string("p\0", 2) + be32(6) +
                          "hello"),
             Catch::Contains("truncated: expected content (6 bytes), 5 left"));
  // The error names the message type and the field.
  CHECK_THAT(decode_error(read_bin("001_begin.bin").substr(0, 10)),
             Catch::Contains("pgoutput Begin message") && Catch::Contains("commit timestamp") &&
                 Catch::Contains("offset 9"));
}

TEST_CASE("XLogData and keepalive CopyData frames decode, others are refused", "[pgoutput]") {
  std::string payload = read_bin("001_begin.bin");
  std::string frame = "w" + be64(0x153EAB0) + be64(0x1540E78) + be64(757479845000000) + payload;
  auto decoded = decode_copy_data(frame);
  REQUIRE(std::holds_alternative<XLogData>(decoded));
  const auto& x = std::get<XLogData>(decoded);
  CHECK(x.start.to_string() == "0/153EAB0");
  CHECK(x.end.to_string() == "0/1540E78");
  CHECK(x.send_time == 757479845000000);
  CHECK(x.payload == payload);
  CHECK(std::get<Begin>(decode_pgoutput(x.payload)).xid == 735);
  // An empty payload is still a frame; it is the pgoutput decoder that refuses it.
  CHECK(std::get<XLogData>(decode_copy_data(frame.substr(0, 25))).payload.empty());

  std::string keepalive = "k" + be64(0x1540E78) + be64(757479845000001) + '\1';
  auto k = std::get<Keepalive>(decode_copy_data(keepalive));
  CHECK(k.end == Lsn{0x1540E78});
  CHECK(k.send_time == 757479845000001);
  CHECK(k.reply_requested);
  keepalive.back() = '\0';
  CHECK_FALSE(std::get<Keepalive>(decode_copy_data(keepalive)).reply_requested);

  for (const std::string& whole : {frame.substr(0, 25), keepalive}) {
    for (std::size_t len = 0; len < whole.size(); ++len) {
      INFO(whole[0] << " cut to " << len);
      std::vector<char> cut(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(len));
      CHECK_THROWS_AS(decode_copy_data(std::string_view(cut.data(), cut.size())), PgOutputError);
    }
  }
  CHECK_THROWS_AS(decode_copy_data(keepalive + 'x'), PgOutputError);
  keepalive.back() = '\2';
  CHECK_THROWS_WITH(decode_copy_data(keepalive), Catch::Contains("expected 0 or 1"));
  CHECK_THROWS_WITH(decode_copy_data("r" + std::string(33, '\0')),
                    Catch::Contains("unknown type 'r'") && Catch::Contains("expected 'w' or 'k'"));
}

TEST_CASE("a standby status update is 34 bytes: 'r', three LSNs, the clock, the reply flag",
          "[pgoutput]") {
  std::string s = encode_standby_status(Lsn{0x0102030405060708}, Lsn{0x1540E78}, Lsn{0x10},
                                        757479845000000, true);
  CHECK(s == "r" + be64(0x0102030405060708) + be64(0x1540E78) + be64(0x10) + be64(757479845000000) +
                 '\1');
  CHECK(encode_standby_status({}, {}, {}, -1, false) ==
        "r" + std::string(24, '\0') + std::string(8, '\xff') + '\0');
}

TEST_CASE("LSNs print and parse as PostgreSQL writes them", "[pgoutput]") {
  CHECK(Lsn{0}.to_string() == "0/0");
  CHECK(Lsn{0x153EC90}.to_string() == "0/153EC90");
  CHECK(Lsn{0x16B374D848}.to_string() == "16/B374D848");
  CHECK(Lsn{~0ULL}.to_string() == "FFFFFFFF/FFFFFFFF");
  CHECK(Lsn::parse("16/B374D848") == Lsn{0x16B374D848});
  CHECK(Lsn::parse("16/b374d848") == Lsn{0x16B374D848});
  CHECK(Lsn::parse("FFFFFFFF/FFFFFFFF") == Lsn{~0ULL});
  CHECK(Lsn::parse("0/0") == Lsn{0});
  for (const char* bad : {"", "/", "0/", "/0", "0", "1/2/3", "100000000/0", "0/100000000", "G/0",
                          " 0/0", "0/0 ", "-1/0", "+1/0"}) {
    INFO(bad);
    CHECK_FALSE(Lsn::parse(bad));
  }
  CHECK(Lsn{1} < Lsn{2});
}

TEST_CASE("protocol timestamps count microseconds from 2000-01-01 UTC", "[pgoutput]") {
  using namespace std::chrono;
  CHECK(pg_time_to_system(0) == system_clock::time_point(seconds(946'684'800)));
  auto t = system_clock::time_point(microseconds(1'704'164'645'123'456));
  CHECK(pg_time_from_system(t) == 757'479'845'123'456);
  CHECK(pg_time_to_system(pg_time_from_system(t)) == t);
}

TEST_CASE("column_text refuses the wrong relation and unknown columns", "[pgoutput]") {
  auto rel = decode_as<Relation>("002_relation.bin");
  auto ins = decode_as<Insert>("003_insert.bin");
  CHECK_THROWS_WITH(column_text(rel, ins, "nope"),
                    Catch::Contains("outbox.events has no column \"nope\""));
  auto other = decode_as<Relation>("018_relation.bin");
  CHECK_THROWS_WITH(column_text(other, ins, "id"), Catch::Contains("oid 16386"));
  Insert toast{kEventsOid, Tuple(11, unchanged())};
  CHECK_THROWS_WITH(column_text(rel, toast, "topic"), Catch::Contains("unchanged TOAST"));
}

TEST_CASE("bytea hex text decodes to its bytes, other forms are refused", "[pgoutput]") {
  CHECK(decode_bytea_hex(R"(\x)").empty());
  CHECK(decode_bytea_hex(R"(\x00fF7b)") == std::string("\x00\xff{", 3));
  CHECK_THROWS_AS(decode_bytea_hex(""), PgOutputError);
  CHECK_THROWS_AS(decode_bytea_hex("abc"), PgOutputError);      // escape format
  CHECK_THROWS_AS(decode_bytea_hex(R"(\x0)"), PgOutputError);   // odd
  CHECK_THROWS_AS(decode_bytea_hex(R"(\x0g)"), PgOutputError);  // not hex
}
