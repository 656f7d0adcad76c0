#include "core/message_mapping.h"

#include <nlohmann/json.hpp>

#include <algorithm>

namespace outbox::core {

namespace {

// The start of `text` for a dead-letter reason: a row's headers may be megabytes, and the
// reason goes to outbox.events.last_error and the log. Cut on a UTF-8 character boundary
// (last_error is text).
std::string excerpt(const std::string& text) {
  constexpr std::size_t kMax = 200;
  if (text.size() <= kMax) return text;
  std::size_t cut = kMax;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return text.substr(0, cut) + "... (" + std::to_string(text.size()) + " bytes)";
}

}  // namespace

bool is_valid_topic_name(const std::string& topic) {
  if (topic.empty() || topic.size() > 249 || topic == "." || topic == "..") return false;
  return std::all_of(topic.begin(), topic.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

std::variant<Message, PoisonReason> to_message(
    OutboxEvent event, const std::map<std::string, std::string>& topic_map) {
  Message message;
  auto mapped = topic_map.find(event.topic);
  message.topic = mapped == topic_map.end() ? event.topic : mapped->second;
  if (!is_valid_topic_name(message.topic)) {
    return PoisonReason{"invalid Kafka topic name \"" + excerpt(message.topic) +
                        "\" (1-249 characters of a-z A-Z 0-9 . _ -)"};
  }
  message.key = std::move(event.key);
  message.payload = std::move(event.payload);
  message.headers.emplace_back(kEventIdHeader, event.event_id);
  message.headers.emplace_back(kOutboxIdHeader, std::to_string(event.id));

  if (event.headers_json.empty()) return message;
  nlohmann::json headers = nlohmann::json::parse(event.headers_json, nullptr, false);
  if (headers.is_discarded() || !headers.is_object()) {
    return PoisonReason{"headers must be a JSON object of strings, got " +
                        excerpt(event.headers_json)};
  }
  for (const auto& [name, value] : headers.items()) {
    if (!value.is_string()) {
      return PoisonReason{"header \"" + excerpt(name) + "\" must be a string, got " +
                          excerpt(value.dump())};
    }
    if (name == kEventIdHeader || name == kOutboxIdHeader) {
      return PoisonReason{"header \"" + name + "\" is reserved for the relay"};
    }
    message.headers.emplace_back(name, value.get<std::string>());
  }
  return message;
}

}  // namespace outbox::core
