// Turns an outbox row into the Kafka message the users were promised: topic (after
// kafka.topic_map), key, payload, and headers outbox-event-id, outbox-id plus the row's own.
#pragma once

#include <map>
#include <string>
#include <variant>

#include "core/event.h"

namespace outbox::core {

inline constexpr const char* kEventIdHeader = "outbox-event-id";
inline constexpr const char* kOutboxIdHeader = "outbox-id";

//! Why a row can never become a valid message (dead-letter reason).
struct PoisonReason {
  std::string text;
};

//! The message for `event`, or why there can be none (empty or invalid topic, headers
//! that are not a JSON object of strings, a reserved header name).
std::variant<Message, PoisonReason> to_message(OutboxEvent event,
                                               const std::map<std::string, std::string>& topic_map);

//! Kafka's own rule: 1-249 characters of [a-zA-Z0-9._-], and neither "." nor "..".
bool is_valid_topic_name(const std::string& topic);

}  // namespace outbox::core
