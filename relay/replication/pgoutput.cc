#include "replication/pgoutput.h"

#include <cinttypes>
#include <cstdio>
#include <iterator>
#include <string>
#include <utility>

namespace outbox::replication {

namespace {

// 'X' when printable, else 0xNN: error messages must stay readable whatever byte came.
std::string describe_byte(char c) {
  auto u = static_cast<unsigned char>(c);
  char buf[16];
  if (u >= 0x20 && u < 0x7f) {
    std::snprintf(buf, sizeof buf, "'%c'", c);
  } else {
    std::snprintf(buf, sizeof buf, "0x%02X", u);
  }
  return buf;
}

// Big-endian reads from a buffer, each checked against what is left of it. `what` names the
// field for the error message; `context` names the message ("pgoutput Insert").
class Reader {
 public:
  Reader(std::string_view bytes, std::string context)
      : bytes_(bytes), context_(std::move(context)) {}

  [[noreturn]] void fail(std::size_t offset, const std::string& problem) const {
    throw PgOutputError(context_ + " (" + std::to_string(bytes_.size()) + " bytes): " + problem +
                        " at offset " + std::to_string(offset));
  }

  std::size_t offset() const { return pos_; }
  std::size_t left() const { return bytes_.size() - pos_; }

  std::uint64_t unsigned_be(std::size_t width, const char* what) {
    need(width, what);
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < width; ++i) {
      v = (v << 8) | static_cast<unsigned char>(bytes_[pos_ + i]);
    }
    pos_ += width;
    return v;
  }
  std::uint8_t u8(const char* what) { return static_cast<std::uint8_t>(unsigned_be(1, what)); }
  char byte(const char* what) { return static_cast<char>(u8(what)); }
  std::int16_t i16(const char* what) {
    return static_cast<std::int16_t>(static_cast<std::uint16_t>(unsigned_be(2, what)));
  }
  std::uint32_t u32(const char* what) { return static_cast<std::uint32_t>(unsigned_be(4, what)); }
  std::int32_t i32(const char* what) { return static_cast<std::int32_t>(u32(what)); }
  std::uint64_t u64(const char* what) { return unsigned_be(8, what); }
  std::int64_t i64(const char* what) { return static_cast<std::int64_t>(u64(what)); }
  Lsn lsn(const char* what) { return Lsn{u64(what)}; }

  // A NUL-terminated string.
  std::string cstring(const char* what) {
    std::size_t end = bytes_.find('\0', pos_);
    if (end == std::string_view::npos) {
      fail(pos_, std::string("unterminated ") + what + " (no NUL before the end)");
    }
    std::string s(bytes_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return s;
  }

  // An Int32 length, then that many bytes. A negative length is an error here: the protocol
  // marks NULL with its own kind byte, never with -1.
  std::string counted(const char* what) {
    std::size_t at = pos_;
    std::int32_t len = i32(what);
    if (len < 0) fail(at, std::string("negative length ") + std::to_string(len) + " of " + what);
    need(static_cast<std::size_t>(len), what);
    std::string s(bytes_.substr(pos_, static_cast<std::size_t>(len)));
    pos_ += static_cast<std::size_t>(len);
    return s;
  }

  std::string_view rest() {
    std::string_view r = bytes_.substr(pos_);
    pos_ = bytes_.size();
    return r;
  }

  // A count read from the input, before anything is reserved for it: each item takes at least
  // `min_item_size` bytes, so a count the buffer cannot hold is refused instead of allocated.
  std::size_t count(std::int64_t n, std::size_t at, std::size_t min_item_size, const char* what) {
    if (n < 0) fail(at, std::string("negative ") + what + " " + std::to_string(n));
    auto items = static_cast<std::size_t>(n);
    if (items > left() / min_item_size) {
      fail(at, std::string(what) + " " + std::to_string(n) + " cannot fit in the " +
                   std::to_string(left()) + " bytes left");
    }
    return items;
  }

  void expect_end() const {
    if (pos_ != bytes_.size()) {
      fail(pos_, std::to_string(left()) + " unexpected bytes after the message");
    }
  }

 private:
  void need(std::size_t n, const char* what) const {
    if (left() < n) {
      fail(pos_, std::string("truncated: expected ") + what + " (" + std::to_string(n) +
                     " bytes), " + std::to_string(left()) + " left");
    }
  }

  std::string_view bytes_;
  std::string context_;
  std::size_t pos_ = 0;
};

Tuple read_tuple(Reader& r) {
  std::size_t at = r.offset();
  // Every column takes at least its kind byte.
  std::size_t n = r.count(r.i16("TupleData column count"), at, 1, "TupleData column count");
  Tuple values;
  values.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::size_t kind_at = r.offset();
    char kind = r.byte("TupleData column kind");
    TupleValue v;
    switch (kind) {
      case 'n':
        v.kind = TupleValue::Kind::null;
        break;
      case 'u':
        v.kind = TupleValue::Kind::unchanged_toast;
        break;
      case 't':
        v.kind = TupleValue::Kind::text;
        v.data = r.counted("text column value");
        break;
      case 'b':
        v.kind = TupleValue::Kind::binary;
        v.data = r.counted("binary column value");
        break;
      default:
        r.fail(kind_at, "unknown TupleData column kind " + describe_byte(kind) + " (column " +
                            std::to_string(i) + "), expected 'n', 'u', 't' or 'b'");
    }
    values.push_back(std::move(v));
  }
  return values;
}

// 'N' (or, where allowed, 'K'/'O') before a TupleData.
char tuple_marker(Reader& r, std::string_view allowed, const char* what) {
  std::size_t at = r.offset();
  char c = r.byte(what);
  if (allowed.find(c) == std::string_view::npos) {
    std::string expected;
    for (char a : allowed) expected += (expected.empty() ? "" : " or ") + describe_byte(a);
    r.fail(at, std::string(what) + " is " + describe_byte(c) + ", expected " + expected);
  }
  return c;
}

Relation read_relation(Reader& r) {
  Relation rel;
  rel.oid = r.u32("relation oid");
  rel.schema = r.cstring("namespace");
  rel.name = r.cstring("relation name");
  rel.replica_identity = r.byte("replica identity");
  std::size_t at = r.offset();
  // Flags, an empty name's NUL, type oid and modifier: 10 bytes at least per column.
  std::size_t n = r.count(r.i16("column count"), at, 10, "column count");
  rel.columns.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    RelationColumn col;
    std::uint8_t flags = r.u8("column flags");
    col.key = (flags & 1) != 0;
    col.name = r.cstring("column name");
    col.type_oid = r.u32("column type oid");
    col.type_modifier = r.i32("column type modifier");
    rel.columns.push_back(std::move(col));
  }
  return rel;
}

Update read_update(Reader& r) {
  Update u;
  u.relation_oid = r.u32("relation oid");
  char marker = tuple_marker(r, "KON", "Update tuple marker");
  if (marker != 'N') {
    u.old_kind = static_cast<OldTupleKind>(marker);
    u.old_values = read_tuple(r);
    tuple_marker(r, "N", "Update new tuple marker");
  }
  u.new_values = read_tuple(r);
  return u;
}

Truncate read_truncate(Reader& r) {
  Truncate t;
  std::size_t at = r.offset();
  std::int32_t n = r.i32("relation count");
  t.options = r.u8("truncate options");
  std::size_t items = r.count(n, at, 4, "relation count");
  t.relation_oids.reserve(items);
  for (std::size_t i = 0; i < items; ++i) t.relation_oids.push_back(r.u32("relation oid"));
  return t;
}

// Message types of protocol versions above 1 that only come when asked for.
const char* unsupported_name(char type) {
  switch (type) {
    case 'S':
      return "Stream Start";
    case 'E':
      return "Stream Stop";
    case 'c':
      return "Stream Commit";
    case 'A':
      return "Stream Abort";
    case 'b':
      return "Begin Prepare";
    case 'P':
      return "Prepare";
    case 'K':
      return "Commit Prepared";
    case 'r':
      return "Rollback Prepared";
    case 'p':
      return "Stream Prepare";
    default:
      return nullptr;
  }
}

const char* type_name(char type) {
  switch (type) {
    case 'B':
      return "Begin";
    case 'C':
      return "Commit";
    case 'O':
      return "Origin";
    case 'R':
      return "Relation";
    case 'Y':
      return "Type";
    case 'I':
      return "Insert";
    case 'U':
      return "Update";
    case 'D':
      return "Delete";
    case 'T':
      return "Truncate";
    case 'M':
      return "Message";
    default:
      return nullptr;
  }
}

void put_u64(std::string& out, std::uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out += static_cast<char>((v >> shift) & 0xff);
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string Lsn::to_string() const {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%" PRIX32 "/%" PRIX32, static_cast<std::uint32_t>(value >> 32),
                static_cast<std::uint32_t>(value & 0xffffffffU));
  return buf;
}

std::optional<Lsn> Lsn::parse(std::string_view text) {
  std::size_t slash = text.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  auto half = [](std::string_view digits) -> std::optional<std::uint64_t> {
    if (digits.empty() || digits.size() > 8) return std::nullopt;
    std::uint64_t v = 0;
    for (char c : digits) {
      int d = hex_digit(c);
      if (d < 0) return std::nullopt;
      v = (v << 4) | static_cast<std::uint64_t>(d);
    }
    return v;
  };
  auto hi = half(text.substr(0, slash));
  auto lo = half(text.substr(slash + 1));
  if (!hi || !lo) return std::nullopt;
  return Lsn{(*hi << 32) | *lo};
}

std::chrono::system_clock::time_point pg_time_to_system(std::int64_t pg_micros) {
  return std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          std::chrono::microseconds(pg_micros + kPgEpochOffsetMicros)));
}

std::int64_t pg_time_from_system(std::chrono::system_clock::time_point time) {
  return std::chrono::duration_cast<std::chrono::microseconds>(time.time_since_epoch()).count() -
         kPgEpochOffsetMicros;
}

std::optional<std::size_t> Relation::column_index(std::string_view column) const {
  for (std::size_t i = 0; i < columns.size(); ++i) {
    if (columns[i].name == column) return i;
  }
  return std::nullopt;
}

PgOutputMessage decode_pgoutput(std::string_view bytes) {
  if (bytes.empty()) throw PgOutputError("pgoutput message: empty");
  char type = bytes[0];
  const char* name = type_name(type);
  if (name == nullptr) {
    if (const char* other = unsupported_name(type)) {
      throw PgOutputError(std::string("pgoutput message type ") + describe_byte(type) + " (" +
                          other +
                          ") is not supported: start replication with proto_version '1' and "
                          "without streaming or two_phase");
    }
    throw PgOutputError("pgoutput message: unknown message type " + describe_byte(type) +
                        " at offset 0 (" + std::to_string(bytes.size()) + " bytes)");
  }
  Reader r(bytes, std::string("pgoutput ") + name + " message");
  r.byte("message type");
  PgOutputMessage out;
  switch (type) {
    case 'B': {
      Begin b;
      b.final_lsn = r.lsn("final LSN");
      b.commit_time = r.i64("commit timestamp");
      b.xid = r.u32("xid");
      out = b;
      break;
    }
    case 'C': {
      Commit c;
      c.flags = r.u8("flags");
      c.commit_lsn = r.lsn("commit LSN");
      c.end_lsn = r.lsn("end LSN");
      c.commit_time = r.i64("commit timestamp");
      out = c;
      break;
    }
    case 'O': {
      Origin o;
      o.commit_lsn = r.lsn("origin commit LSN");
      o.name = r.cstring("origin name");
      out = std::move(o);
      break;
    }
    case 'R':
      out = read_relation(r);
      break;
    case 'Y': {
      Type t;
      t.oid = r.u32("type oid");
      t.schema = r.cstring("namespace");
      t.name = r.cstring("type name");
      out = std::move(t);
      break;
    }
    case 'I': {
      Insert ins;
      ins.relation_oid = r.u32("relation oid");
      tuple_marker(r, "N", "Insert tuple marker");
      ins.values = read_tuple(r);
      out = std::move(ins);
      break;
    }
    case 'U':
      out = read_update(r);
      break;
    case 'D': {
      Delete d;
      d.relation_oid = r.u32("relation oid");
      d.old_kind = static_cast<OldTupleKind>(tuple_marker(r, "KO", "Delete tuple marker"));
      d.old_values = read_tuple(r);
      out = std::move(d);
      break;
    }
    case 'T':
      out = read_truncate(r);
      break;
    case 'M': {
      LogicalMessage m;
      std::uint8_t flags = r.u8("flags");
      m.transactional = (flags & 1) != 0;
      m.lsn = r.lsn("message LSN");
      m.prefix = r.cstring("prefix");
      m.content = r.counted("content");
      out = std::move(m);
      break;
    }
  }
  // Trailing bytes mean the decoder and the server disagree about the format: stop rather
  // than act on fields read from the wrong place.
  r.expect_end();
  return out;
}

const char* message_name(const PgOutputMessage& message) {
  static constexpr const char* kNames[] = {"Begin",  "Commit", "Origin", "Relation", "Type",
                                           "Insert", "Update", "Delete", "Truncate", "Message"};
  static_assert(std::size(kNames) == std::variant_size_v<PgOutputMessage>);
  return kNames[message.index()];
}

std::variant<XLogData, Keepalive> decode_copy_data(std::string_view bytes) {
  if (bytes.empty()) throw PgOutputError("replication CopyData message: empty");
  switch (bytes[0]) {
    case 'w': {
      Reader r(bytes, "replication XLogData message");
      r.byte("message type");
      XLogData x;
      x.start = r.lsn("WAL start");
      x.end = r.lsn("WAL end");
      x.send_time = r.i64("send time");
      x.payload = r.rest();
      return x;
    }
    case 'k': {
      Reader r(bytes, "replication keepalive message");
      r.byte("message type");
      Keepalive k;
      k.end = r.lsn("WAL end");
      k.send_time = r.i64("send time");
      std::size_t at = r.offset();
      std::uint8_t reply = r.u8("reply requested");
      if (reply > 1)
        r.fail(at, "reply requested is " + std::to_string(reply) + ", expected 0 or 1");
      k.reply_requested = reply == 1;
      r.expect_end();
      return k;
    }
    default:
      throw PgOutputError("replication CopyData message: unknown type " + describe_byte(bytes[0]) +
                          " at offset 0 (" + std::to_string(bytes.size()) +
                          " bytes), expected 'w' or 'k'");
  }
}

std::string encode_standby_status(Lsn write, Lsn flush, Lsn apply, std::int64_t client_time_us,
                                  bool reply_requested) {
  std::string out;
  out.reserve(34);
  out += 'r';
  put_u64(out, write.value);
  put_u64(out, flush.value);
  put_u64(out, apply.value);
  put_u64(out, static_cast<std::uint64_t>(client_time_us));
  out += static_cast<char>(reply_requested ? 1 : 0);
  return out;
}

void RelationCache::update(Relation relation) {
  std::uint32_t oid = relation.oid;
  relations_.insert_or_assign(oid, std::move(relation));
}

const Relation* RelationCache::find(std::uint32_t oid) const {
  auto it = relations_.find(oid);
  return it == relations_.end() ? nullptr : &it->second;
}

const Relation& RelationCache::get(std::uint32_t oid) const {
  if (const Relation* rel = find(oid)) return *rel;
  throw PgOutputError("pgoutput: a change to relation oid " + std::to_string(oid) +
                      " came before any Relation message for it");
}

std::optional<std::string_view> column_text(const Relation& relation, const Insert& insert,
                                            std::string_view column) {
  std::string table = relation.schema + "." + relation.name;
  if (relation.oid != insert.relation_oid) {
    throw PgOutputError("pgoutput: Insert into relation oid " +
                        std::to_string(insert.relation_oid) + " read with the columns of " + table +
                        " (oid " + std::to_string(relation.oid) + ")");
  }
  if (insert.values.size() != relation.columns.size()) {
    throw PgOutputError("pgoutput: Insert into " + table + " has " +
                        std::to_string(insert.values.size()) + " values, its Relation " +
                        std::to_string(relation.columns.size()) + " columns");
  }
  auto index = relation.column_index(column);
  if (!index) {
    throw PgOutputError("pgoutput: " + table + " has no column \"" + std::string(column) + "\"");
  }
  const TupleValue& v = insert.values[*index];
  switch (v.kind) {
    case TupleValue::Kind::null:
      return std::nullopt;
    case TupleValue::Kind::text:
      return std::string_view(v.data);
    case TupleValue::Kind::unchanged_toast:
    case TupleValue::Kind::binary:
      break;
  }
  throw PgOutputError("pgoutput: column \"" + std::string(column) + "\" of " + table + " is " +
                      (v.kind == TupleValue::Kind::binary ? "binary" : "an unchanged TOAST value") +
                      ", expected text");
}

std::string decode_bytea_hex(std::string_view text) {
  if (text.size() < 2 || text[0] != '\\' || text[1] != 'x') {
    throw PgOutputError("bytea text does not start with \\x (set bytea_output=hex)");
  }
  std::string_view digits = text.substr(2);
  if (digits.size() % 2 != 0) {
    throw PgOutputError("bytea hex text has an odd number of digits (" +
                        std::to_string(digits.size()) + ")");
  }
  std::string out;
  out.reserve(digits.size() / 2);
  for (std::size_t i = 0; i < digits.size(); i += 2) {
    int hi = hex_digit(digits[i]);
    int lo = hex_digit(digits[i + 1]);
    if (hi < 0 || lo < 0) {
      throw PgOutputError("bytea hex text has a non-hex character at offset " +
                          std::to_string(i + 2 + (hi < 0 ? 0 : 1)));
    }
    out += static_cast<char>((hi << 4) | lo);
  }
  return out;
}

}  // namespace outbox::replication
