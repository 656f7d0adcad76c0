#include "config/validators.h"

#include <algorithm>
#include <cctype>

namespace outbox::config {

bool is_kafka_topic_name(const std::string& topic) {
  if (topic.empty() || topic.size() > 249 || topic == "." || topic == "..") return false;
  return std::all_of(topic.begin(), topic.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '_' || ch == '-';
  });
}

bool is_identifier(const std::string& name) {
  return !name.empty() && name.size() <= 63 && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  }) && !(name[0] >= '0' && name[0] <= '9');
}

std::optional<std::string> not_empty(const std::string& value) {
  if (value.empty()) return "must not be empty";
  return std::nullopt;
}

std::optional<std::string> kafka_topic_name(const std::string& value) {
  if (value.empty()) return "must not be empty";
  if (is_kafka_topic_name(value)) return std::nullopt;
  std::string shown = value.size() > 80 ? value.substr(0, 80) + "..." : value;
  return "must be a Kafka topic name (1-249 characters of a-z, A-Z, 0-9, '.', '_' and '-', "
         "not \".\" or \"..\"), got \"" +
         shown + "\"";
}

std::optional<std::string> topic_template(const std::string& value) {
  // {topic} stands for a row topic, itself a valid topic name (else the row is dead-lettered):
  // any one character shows whether the rest makes a valid name.
  std::string rest = value;
  for (std::size_t at; (at = rest.find("{topic}")) != std::string::npos;) rest.replace(at, 7, "t");
  if (rest.find_first_of("{}") != std::string::npos) {
    return "the only variable is {topic} (the row's topic), got \"" + value + "\"";
  }
  if (!is_kafka_topic_name(rest)) {
    return "must give a Kafka topic name (a-z, A-Z, 0-9, '.', '_', '-' around {topic}), got \"" +
           value + "\"";
  }
  return std::nullopt;
}

std::optional<std::string> identifier(const std::string& value) {
  if (is_identifier(value)) return std::nullopt;
  return "must be 1-63 characters of a-z, 0-9 and _, not starting with a digit";
}

}  // namespace outbox::config
