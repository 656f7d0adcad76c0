// The values that flow through the relay: a row read from the outbox, the Kafka message
// made from it, and what became of it.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace outbox::core {

//! One row of outbox.events as the relay reads it.
struct OutboxEvent {
  std::int64_t id = 0;   //!< commit-independent order
  std::string event_id;  //!< uuid text: the consumers' dedup key
  std::string topic;     //!< row topic (before kafka.topic_map)
  std::optional<std::string> key;
  std::optional<std::string> payload;
  std::string headers_json;  //!< the row's jsonb headers as text
  int attempts = 0;          //!< failed attempts so far
  //! created_at as text (RFC 3339, or PostgreSQL's ISO output); empty when not read.
  std::string created_at;
};

//! What a row weighs in a batch's byte budget: payload, key and headers text.
inline std::size_t event_bytes(const OutboxEvent& e) {
  return (e.payload ? e.payload->size() : 0) + (e.key ? e.key->size() : 0) + e.headers_json.size();
}

using Headers = std::vector<std::pair<std::string, std::string>>;

//! A Kafka message ready for the publisher.
struct Message {
  std::string topic;
  std::optional<std::string> key;
  std::optional<std::string> payload;
  Headers headers;
};

//! How the relay treats a failed delivery. A row is dead-lettered only for a reason proven
//! to be its own.
enum class FailureKind {
  //! The cluster or the network (broker down, producer re-created): retry later, the row is
  //! not at fault.
  transient,
  //! The message's topic cannot take messages now (unknown topic, not authorized, a policy):
  //! the topic waits with backoff while other topics flow; never dead-lettered.
  topic_blocked,
  //! An error Kafka may answer for a whole produce request (too large, invalid record): the
  //! row is proven at fault only when it fails so in a batch of its own, so it is sent
  //! alone before it is blamed.
  suspect,
  //! Proven the message's own (larger than the producer's message.max.bytes, invalid topic
  //! name): dead-letter now.
  permanent,
};

struct DeliveryResult {
  bool ok = false;
  FailureKind kind = FailureKind::transient;
  std::string error;  //!< empty when ok
};

struct RowFailure {
  std::int64_t id = 0;
  std::string error;
};

//! Which event a row id stood for when it was read: a mark matches (id, event_id), so an id
//! that now names another row (the id sequence rewound by a restore) is not marked for it.
struct RowIdentity {
  std::string event_id;  //!< uuid text, as read
  std::string topic;     //!< row topic (before kafka.topic_map)
};

//! What one batch came to; the store records it in one transaction.
struct BatchOutcome {
  std::vector<std::int64_t> published;  //!< acknowledged by Kafka
  std::vector<RowFailure> retry;        //!< attempts + 1, stays pending
  std::vector<RowFailure> dead_letter;  //!< attempts + 1, dead_lettered_at set
  std::size_t left_pending = 0;         //!< not attempted (shutdown, transient failure)
  //! The event each id above stood for, where known; an id without one is matched by id
  //! alone (and reported without event id and topic if it is gone).
  std::unordered_map<std::int64_t, RowIdentity> rows;
};

//! A row the recording of an outcome found gone: no row has its id any more, or the row with
//! its id is another event (deleted by hand, or the database rewound: a failover to an
//! asynchronous replica that lacked the last commits, a point-in-time restore,
//! synchronous_commit = off and a crash). Nothing more can come of it: the rest of the outcome
//! is recorded and the relay goes on (invariant gone-row-reported).
struct VanishedRow {
  std::int64_t id = 0;
  std::string event_id;  //!< the event Kafka was answered for (empty if not known)
  std::string topic;     //!< its row topic (empty if not known)
  //! Kafka acknowledged its message (it was to be marked published): the message is in
  //! Kafka without a row. False: its failure or dead-letter was to be recorded.
  bool acknowledged = false;
  //! A different event (this one) now has the id; it stays pending. Empty: no row has it.
  std::string reused_by;
  //! Written down where `outbox-relay audit` reports it (outbox.vanished).
  bool recorded = false;
};

}  // namespace outbox::core
