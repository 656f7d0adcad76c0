// PostgreSQL's logical replication protocol as the pgoutput plugin sends it, as pure functions
// on bytes: the pgoutput messages (protocol version 1; version 2 without streaming sends the
// same bytes), the CopyData frames of the START_REPLICATION stream around them (XLogData,
// primary keepalive) and the standby status update the client sends back.
//
// Lifecycle and threads: the functions keep no state and may be called from any thread.
// RelationCache is owned by the one thread that reads a replication stream.
//
// Every decoder checks each length against what is left of its input before reading, and
// throws PgOutputError naming the message type, the offset and the field it expected on
// anything truncated, malformed or unknown: a stream that is not understood must stop the
// source, never be skipped over.
#pragma once

#include <chrono>
#include <compare>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

namespace outbox::replication {

//! Malformed, truncated or unsupported replication protocol bytes.
class PgOutputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

//! A WAL position.
struct Lsn {
  std::uint64_t value = 0;

  //! "X/Y" as PostgreSQL prints a pg_lsn: upper and lower 32 bits in upper-case hex.
  std::string to_string() const;
  //! The pg_lsn text form, 1 to 8 hex digits on each side of the slash; nullopt otherwise.
  static std::optional<Lsn> parse(std::string_view text);

  friend auto operator<=>(const Lsn&, const Lsn&) = default;
};

//! Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 00:00 UTC), in which the
//! protocol counts every timestamp.
inline constexpr std::int64_t kPgEpochOffsetMicros = 946'684'800LL * 1'000'000LL;

//! A protocol timestamp (microseconds since 2000-01-01 UTC) as a system clock time.
std::chrono::system_clock::time_point pg_time_to_system(std::int64_t pg_micros);
//! A system clock time as a protocol timestamp, e.g. the clock of a standby status update.
std::int64_t pg_time_from_system(std::chrono::system_clock::time_point time);

// --- pgoutput messages ---------------------------------------------------------------------

//! 'B': a transaction starts. pgoutput sends only transactions with at least one published
//! change (PostgreSQL 15 skips empty ones, e.g. DDL-only).
struct Begin {
  Lsn final_lsn;  //!< the commit record's LSN, == Commit::commit_lsn
  //! Microseconds since 2000-01-01 UTC; for a transaction replayed from a replication origin,
  //! the origin's commit time.
  std::int64_t commit_time = 0;
  std::uint32_t xid = 0;
};

//! 'C': the transaction of the last Begin committed.
struct Commit {
  std::uint8_t flags = 0;  //!< unused by PostgreSQL so far, kept to show what came
  Lsn commit_lsn;          //!< the commit record
  Lsn end_lsn;             //!< just past the commit record: where a restart resumes after it
  std::int64_t commit_time = 0;
};

//! 'O': the transaction was replayed from another node (replication origin); follows Begin.
struct Origin {
  Lsn commit_lsn;  //!< the commit's LSN on the origin server
  std::string name;
};

struct RelationColumn {
  bool key = false;  //!< part of the replica identity
  std::string name;
  std::uint32_t type_oid = 0;
  std::int32_t type_modifier = -1;  //!< atttypmod; -1 when the type has none
};

//! 'R': the shape of a table, sent before its first change in a session and again after any
//! change to the table's definition or cache entry (ALTER TABLE, but also TRUNCATE).
struct Relation {
  std::uint32_t oid = 0;
  std::string schema;  //!< empty for pg_catalog
  std::string name;
  char replica_identity = 'd';          //!< relreplident: 'd'efault, 'n'othing, 'f'ull, 'i'ndex
  std::vector<RelationColumn> columns;  //!< in tuple order; generated columns are left out

  //! Position of the column called `column` in the tuples of this relation.
  std::optional<std::size_t> column_index(std::string_view column) const;
};

//! 'Y': a user-defined type a following Relation uses (built-in types are never sent).
struct Type {
  std::uint32_t oid = 0;
  std::string schema;  //!< empty for pg_catalog
  std::string name;
};

//! One column of a TupleData.
struct TupleValue {
  enum class Kind : char {
    null = 'n',
    unchanged_toast = 'u',  //!< a TOASTed value the change left alone: the value is not sent
    text = 't',             //!< the type's output function, under the decoding session's settings
    binary = 'b',           //!< the type's send function (only with the `binary` option)
  };
  Kind kind = Kind::null;
  std::string data;  //!< empty for null and unchanged_toast

  friend bool operator==(const TupleValue&, const TupleValue&) = default;
};

using Tuple = std::vector<TupleValue>;

//! 'I': a row inserted.
struct Insert {
  std::uint32_t relation_oid = 0;
  Tuple values;  //!< one per Relation column
};

//! What identifies the old row of an Update or Delete.
enum class OldTupleKind : char {
  none = 0,    //!< not sent (Update that changed no replica identity column)
  key = 'K',   //!< the replica identity columns; the others are null
  full = 'O',  //!< the whole old row (REPLICA IDENTITY FULL)
};

//! 'U': a row updated. Not used by the outbox, which only inserts; decoded so it can be
//! stepped over knowingly.
struct Update {
  std::uint32_t relation_oid = 0;
  OldTupleKind old_kind = OldTupleKind::none;
  Tuple old_values;  //!< empty when old_kind is none
  Tuple new_values;
};

//! 'D': a row deleted. Not used by the outbox, like Update.
struct Delete {
  std::uint32_t relation_oid = 0;
  OldTupleKind old_kind = OldTupleKind::key;
  Tuple old_values;
};

//! 'T': tables truncated.
struct Truncate {
  static constexpr std::uint8_t kCascade = 1;
  static constexpr std::uint8_t kRestartIdentity = 2;
  std::uint8_t options = 0;  //!< kCascade | kRestartIdentity
  std::vector<std::uint32_t> relation_oids;
};

//! 'M': pg_logical_emit_message, sent only with the `messages` option.
struct LogicalMessage {
  //! Inside Begin/Commit. Otherwise sent alone, as soon as decoded, even if the emitting
  //! transaction later aborts.
  bool transactional = false;
  //! The END of the message's WAL record: for a transactional message that is the last thing
  //! its transaction wrote, the commit's LSN.
  Lsn lsn;
  std::string prefix;
  std::string content;
};

using PgOutputMessage = std::variant<Begin, Commit, Origin, Relation, Type, Insert, Update, Delete,
                                     Truncate, LogicalMessage>;

//! One pgoutput message: the payload of an XLogData frame, or one row of
//! pg_logical_slot_get_binary_changes. Streaming ('S', 'E', 'c', 'A') and two-phase messages
//! are refused: the source does not ask for them.
PgOutputMessage decode_pgoutput(std::string_view bytes);

//! "Insert", "Commit", ...: for logs.
const char* message_name(const PgOutputMessage& message);

// --- the CopyData frames of the replication stream -----------------------------------------

//! 'w': WAL data; for a logical slot, exactly one pgoutput message.
struct XLogData {
  Lsn start;                   //!< WAL position of the payload's start
  Lsn end;                     //!< current end of WAL on the server
  std::int64_t send_time = 0;  //!< server clock, microseconds since 2000-01-01 UTC
  std::string_view payload;    //!< points into the decoded buffer, valid as long as it is
};

//! 'k': primary keepalive.
struct Keepalive {
  Lsn end;  //!< current end of WAL on the server
  std::int64_t send_time = 0;
  bool reply_requested = false;  //!< answer with a status update now, or be disconnected
};

//! A CopyData message read from a START_REPLICATION stream.
std::variant<XLogData, Keepalive> decode_copy_data(std::string_view bytes);

//! 'r': standby status update, the CopyData message that tells the server how far the client
//! got. The slot keeps WAL from `flush` on; `client_time_us` is microseconds since 2000-01-01
//! UTC (pg_time_from_system).
std::string encode_standby_status(Lsn write, Lsn flush, Lsn apply, std::int64_t client_time_us,
                                  bool reply_requested);

// --- using the messages --------------------------------------------------------------------

//! The latest Relation message of each table, which the Insert messages refer to by oid.
//!
//! Lifecycle: owned by the thread that reads one replication stream. pgoutput keeps its own
//! record of what it sent per walsender session and sends each Relation again in a new
//! session, so a reconnect may clear() and start afresh.
class RelationCache {
 public:
  //! Takes the definition of `relation.oid`, replacing any earlier one.
  void update(Relation relation);
  //! nullptr until a Relation of that oid came.
  const Relation* find(std::uint32_t oid) const;
  //! The Relation an Insert refers to; PgOutputError if none came (a protocol violation).
  const Relation& get(std::uint32_t oid) const;
  void clear() { relations_.clear(); }
  std::size_t size() const { return relations_.size(); }

 private:
  std::unordered_map<std::uint32_t, Relation> relations_;
};

//! The text of column `column` of an inserted row, by name rather than position so that a
//! column added or dropped later shifts nothing; nullopt when the value is NULL. Throws
//! PgOutputError when `relation` is not the insert's table or has no such column, the row does
//! not match the relation's columns, or the value is not text (binary mode, unchanged TOAST).
//! The view points into `insert`.
std::optional<std::string_view> column_text(const Relation& relation, const Insert& insert,
                                            std::string_view column);

//! The bytes of a bytea in its text form, "\x" then two hex digits per byte (PostgreSQL's
//! default bytea_output). Throws PgOutputError on anything else, including the older escape
//! format, which a replication connection avoids by setting bytea_output=hex.
std::string decode_bytea_hex(std::string_view text);

}  // namespace outbox::replication
