// The accounting of `outbox-relay audit`, without any I/O: outbox rows go in (in id order),
// then the Kafka messages read back, and report() says what was lost, duplicated or out of
// order.
//
// Memory is bounded by the id range of the rows, not by the number of messages: six bitsets
// indexed by (outbox-id - first row id) -- audited, left out (--since), published,
// dead-lettered, seen, seen twice -- i.e. 6 bits per id, and one hash map entry per distinct
// (topic, partition, key) holding the highest outbox-id first delivered for it. Keys are
// stored as a 64-bit FNV-1a hash only; two keys whose hashes collide would be checked as one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace outbox::audit {

//! A fixed-purpose growable bitset: one bit per id of the audited range.
class Bitset {
 public:
  void resize(std::size_t bits);  //!< new bits are clear
  void reserve(std::size_t bits) { words_.reserve((bits + 63) / 64); }
  bool test(std::size_t i) const { return (words_[i / 64] >> (i % 64)) & 1U; }
  void set(std::size_t i) { words_[i / 64] |= std::uint64_t{1} << (i % 64); }
  std::size_t size() const { return size_; }
  const std::vector<std::uint64_t>& words() const { return words_; }
  std::size_t memory_bytes() const { return words_.capacity() * sizeof(std::uint64_t); }

 private:
  std::vector<std::uint64_t> words_;
  std::size_t size_ = 0;
};

//! A message delivered (for the first time) after a higher outbox-id of the same key had been.
struct OrderViolation {
  std::string topic;
  std::int32_t partition = 0;
  std::int64_t offset = -1;          //!< -1 when unknown
  std::string key;                   //!< printable: other bytes as \xNN
  std::int64_t outbox_id = 0;        //!< the late first delivery
  std::int64_t after_outbox_id = 0;  //!< the highest id first delivered before it
};

//! A row the relay found gone when it recorded its outcome (outbox.vanished, schema 0008).
struct VanishedExample {
  std::int64_t id = 0;
  std::string event_id;       //!< empty if unknown
  std::string topic;          //!< row topic; empty if unknown
  bool acknowledged = false;  //!< Kafka had acknowledged its message
  std::string reused_by;      //!< the event that has the id now, if any
  std::string noticed_at;     //!< when the relay found it gone
};

struct AuditReport {
  std::uint64_t rows = 0;           //!< rows audited
  std::uint64_t messages = 0;       //!< messages read (all of them, foreign ones too)
  std::uint64_t published = 0;      //!< rows with published_at
  std::uint64_t pending = 0;        //!< rows with neither published_at nor dead_lettered_at
  std::uint64_t dead_lettered = 0;  //!< rows with dead_lettered_at
  //! Published rows another publisher sent (outbox.events.published_by, set by `takeover`):
  //! counted in published; never lost, as that publisher's messages may carry no outbox-id.
  std::uint64_t published_by_other = 0;
  std::uint64_t lost = 0;              //!< published rows without any message
  std::uint64_t duplicates = 0;        //!< extra copies of a message (beyond the first)
  std::uint64_t duplicated_rows = 0;   //!< rows with at least one extra copy
  std::uint64_t order_violations = 0;  //!< late first deliveries (see OrderViolation)
  std::uint64_t unknown = 0;           //!< outbox-id of no row in the audited range
  std::uint64_t foreign = 0;           //!< messages without a (decimal) outbox-id header
  std::uint64_t ignored = 0;           //!< outbox-id of a row left out of the audit
  //! Rows the relay found gone when it recorded their outcome (deleted, or the database went
  //! back in time), from outbox.vanished: not lost by the relay; their messages are in Kafka
  //! without a row, counted here and not as unknown.
  std::uint64_t vanished = 0;
  std::uint64_t vanished_messages = 0;             //!< messages whose outbox-id is a vanished row's
  std::vector<VanishedExample> vanished_examples;  //!< the first ones found
  std::optional<std::int64_t> first_id, last_id;   //!< audited id range
  std::vector<std::int64_t> lost_examples;         //!< the lowest lost ids
  std::vector<OrderViolation> order_violation_examples;  //!< the first ones met

  //! Nothing lost and per-key order kept (duplicates are allowed: at-least-once).
  bool ok() const { return lost == 0 && order_violations == 0; }
};

//! The outbox-id header value as a row id: decimal digits only, nullopt otherwise.
std::optional<std::int64_t> parse_outbox_id(std::string_view text);

//! 64-bit FNV-1a of topic, partition and key: the per-key order map's key.
std::uint64_t key_hash(std::string_view topic, std::int32_t partition, std::string_view key);

//! `bytes` with everything but printable ASCII (and backslash) written as \xNN.
std::string printable(std::string_view bytes);

class AuditLedger {
 public:
  explicit AuditLedger(std::size_t max_examples = 10) : max_examples_(max_examples) {}

  //! Room for `ids` ids from the first row on, so the bitsets never over-allocate.
  void reserve(std::size_t ids);

  //! An audited row. Rows (and skip_row) must come in strictly increasing id order, before
  //! any message; throws std::invalid_argument otherwise.
  //! `by_other`: published by another publisher (`published_by` set).
  void add_row(std::int64_t id, bool published, bool dead_lettered, bool by_other = false);
  //! A row inside the scanned range that the audit leaves out (created before --since):
  //! its messages are counted as ignored.
  void skip_row(std::int64_t id);
  //! Messages whose outbox-id is below `id` are ignored (--since left their rows out).
  void ignore_below(std::int64_t id);
  //! Messages whose outbox-id is above every row added (any id if none was) and at most `id`
  //! are ignored: their rows were written after the audit had read the table.
  void ignore_above_up_to(std::int64_t id);

  //! A row the relay found gone (outbox.vanished); any order, before any message. A message
  //! whose outbox-id is its id and names no audited row counts as vanished_messages.
  void add_vanished(VanishedExample row);

  //! One Kafka message in the order read (per partition: offset order). `key` nullopt: a
  //! message without key, not part of any per-key order. `outbox_id` nullopt: foreign.
  void add_message(std::string_view topic, std::int32_t partition,
                   std::optional<std::string_view> key, std::optional<std::int64_t> outbox_id,
                   std::int64_t offset = -1);

  AuditReport report() const;

  //! Bytes held by the bitsets and the per-key map (an estimate for the map).
  std::size_t memory_bytes() const;

 private:
  bool in_range(std::int64_t id) const { return first_id_ && id >= *first_id_ && id <= last_id_; }
  std::size_t index(std::int64_t id) const { return static_cast<std::size_t>(id - *first_id_); }
  std::size_t extend_to(std::int64_t id);  //!< checks order, grows the bitsets, returns index

  std::size_t max_examples_;
  std::optional<std::int64_t> first_id_;  //!< first row (audited or skipped) added
  std::int64_t last_id_ = 0;              //!< last row added
  Bitset audited_, skipped_, published_, dead_lettered_, seen_, seen_twice_;
  std::optional<std::int64_t> ignore_below_;
  std::optional<std::int64_t> ignore_above_up_to_;
  std::unordered_map<std::uint64_t, std::int64_t> last_first_delivered_;
  std::unordered_set<std::int64_t> vanished_ids_;
  AuditReport counts_;  //!< the counters kept while adding; report() adds the rest
};

}  // namespace outbox::audit
