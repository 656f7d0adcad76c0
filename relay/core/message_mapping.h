// Turns an outbox row into the Kafka message the users were promised: topic (after
// kafka.topic_map and message.topic_template), key, payload, and headers outbox-event-id,
// outbox-id plus the row's own; optionally Debezium's `id` header, CloudEvents' binary-mode
// headers and Kafka Connect's JSON-string encoding (the `message` section of the config).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "core/event.h"

namespace outbox::core {

inline constexpr const char* kEventIdHeader = "outbox-event-id";
inline constexpr const char* kOutboxIdHeader = "outbox-id";
//! Where Debezium's outbox EventRouter puts the event id (MessageFormat::id_header).
inline constexpr const char* kDebeziumIdHeader = "id";
//! The only variable of MessageFormat::topic_template: the row's topic.
inline constexpr std::string_view kTopicVariable = "{topic}";

//! CloudEvents 1.0, Kafka protocol binding, binary content mode: the payload stays the value
//! and the attributes go to headers ce_specversion, ce_id (the event id), ce_source, ce_type,
//! ce_time (the row's created_at, RFC 3339) and content-type.
struct CloudEventsFormat {
  std::string source;  //!< ce_source, the same for every event (a URI-reference)
  //! The row header whose value is ce_type; a row without it has its row topic as ce_type.
  std::string type_header = "type";
  //! content-type of a payload that is not JSON (a JSON payload is application/json); a row's
  //! own content-type header wins over both.
  std::string content_type = "application/octet-stream";
};

//! How rows become messages beyond the defaults (config `message.*`). Default-constructed:
//! the relay's own format (topic as mapped, key and payload bytes unchanged, the relay's two
//! headers then the row's).
struct MessageFormat {
  //! The Kafka topic of a row topic not in kafka.topic_map; {topic} is the row topic.
  std::string topic_template = std::string(kTopicVariable);
  bool id_header = false;  //!< also the event id in header `id` (Debezium's EventRouter)
  std::optional<CloudEventsFormat> cloudevents;
  //! Kafka Connect's JsonConverter (schemas disabled) on a string: the key / the payload sent
  //! as a JSON string of its text, as Debezium's EventRouter sends a text or jsonb column.
  bool json_string_key = false;
  bool json_string_value = false;
};

//! Why a row can never become a valid message (dead-letter reason).
struct PoisonReason {
  std::string text;
};

//! The Kafka topic of `row_topic`: its kafka.topic_map entry, else the template with {topic}
//! replaced. One function for the mapping, the topic gate and the audit, so the three agree.
std::string kafka_topic(const std::string& row_topic,
                        const std::map<std::string, std::string>& topic_map,
                        const std::string& topic_template = std::string(kTopicVariable));

//! The message for `event`, or why there can be none (empty or invalid topic, headers
//! that are not a JSON object of strings, a reserved header name).
std::variant<Message, PoisonReason> to_message(OutboxEvent event,
                                               const std::map<std::string, std::string>& topic_map,
                                               const MessageFormat& format = {});

//! Kafka's own rule: 1-249 characters of [a-zA-Z0-9._-], and neither "." nor "..".
bool is_valid_topic_name(const std::string& topic);

//! A PostgreSQL timestamptz as text (ISO DateStyle: `2026-12-07 09:55:53.123456+00`, or
//! already `2026-12-07T09:55:53.123456Z`) as RFC 3339 (`2026-12-07T09:55:53.123456Z`,
//! `...+05:30`); nullopt for what RFC 3339 cannot say (infinity, BC, seconds in the offset).
std::optional<std::string> rfc3339(std::string_view timestamptz);

}  // namespace outbox::core
