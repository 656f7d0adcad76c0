// Checks of single values shared by the keys (keys.cc) and the rules (rules.cc).
#pragma once

#include <optional>
#include <string>

namespace outbox::config {

//! Kafka's own rule for topic names (core::is_valid_topic_name; config/ calls nothing else of
//! the relay): a name it refuses would dead-letter every row sent to it, so it is a
//! configuration error.
bool is_kafka_topic_name(const std::string& topic);
//! A PostgreSQL identifier the relay can use unquoted: 1-63 of a-z, 0-9, _, no leading digit.
bool is_identifier(const std::string& name);

//! The error message of each check, or nullopt when the value is accepted.
std::optional<std::string> not_empty(const std::string& value);
std::optional<std::string> kafka_topic_name(const std::string& value);
std::optional<std::string> identifier(const std::string& value);
//! A message.topic_template: literal topic characters and the variable {topic} only.
std::optional<std::string> topic_template(const std::string& value);

}  // namespace outbox::config
