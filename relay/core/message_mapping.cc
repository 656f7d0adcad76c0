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

// Kafka Connect's JsonConverter on a string: a JSON string of the text. Bytes that are not
// UTF-8 are replaced (U+FFFD), as Java's String would have decoded them.
std::string json_string(const std::string& text) {
  return nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

bool digits(std::string_view s, std::size_t from, std::size_t count) {
  if (s.size() < from + count) return false;
  return std::all_of(s.begin() + static_cast<std::ptrdiff_t>(from),
                     s.begin() + static_cast<std::ptrdiff_t>(from + count), is_digit);
}

// Headers a row may not set: the relay sets them, and a second copy would make the message
// ambiguous to consumers (which one is the dedup key?).
std::optional<std::string> reserved(const std::string& name, const MessageFormat& format) {
  if (name == kEventIdHeader || name == kOutboxIdHeader) return name;
  if (format.id_header && name == kDebeziumIdHeader) return name;
  if (format.cloudevents && (name == "ce_id" || name == "ce_specversion")) return name;
  return std::nullopt;
}

}  // namespace

bool is_valid_topic_name(const std::string& topic) {
  if (topic.empty() || topic.size() > 249 || topic == "." || topic == "..") return false;
  return std::all_of(topic.begin(), topic.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

std::string kafka_topic(const std::string& row_topic,
                        const std::map<std::string, std::string>& topic_map,
                        const std::string& topic_template) {
  if (auto mapped = topic_map.find(row_topic); mapped != topic_map.end()) return mapped->second;
  if (topic_template == kTopicVariable) return row_topic;
  std::string topic;
  std::size_t pos = 0;
  while (pos < topic_template.size()) {
    std::size_t at = topic_template.find(kTopicVariable, pos);
    if (at == std::string::npos) {
      topic.append(topic_template, pos);
      break;
    }
    topic.append(topic_template, pos, at - pos).append(row_topic);
    pos = at + kTopicVariable.size();
  }
  return topic;
}

std::optional<std::string> rfc3339(std::string_view t) {
  // YYYY-MM-DD?HH:MM:SS
  if (!digits(t, 0, 4) || t[4] != '-' || !digits(t, 5, 2) || t[7] != '-' || !digits(t, 8, 2) ||
      (t[10] != ' ' && t[10] != 'T') || !digits(t, 11, 2) || t[13] != ':' || !digits(t, 14, 2) ||
      t[16] != ':' || !digits(t, 17, 2)) {
    return std::nullopt;
  }
  std::size_t pos = 19;
  if (pos < t.size() && t[pos] == '.') {
    ++pos;
    std::size_t start = pos;
    while (pos < t.size() && is_digit(t[pos])) ++pos;
    if (pos == start) return std::nullopt;
  }
  std::string out(t.substr(0, pos));
  out[10] = 'T';
  std::string_view zone = t.substr(pos);
  if (zone == "Z") return out + "Z";
  // +HH, +HH:MM; +HH:MM:SS (a zone's local mean time) has no RFC 3339 form.
  if (zone.size() < 3 || (zone[0] != '+' && zone[0] != '-') || !digits(zone, 1, 2)) {
    return std::nullopt;
  }
  std::string minutes = "00";
  if (zone.size() == 6 && zone[3] == ':' && digits(zone, 4, 2)) {
    minutes = std::string(zone.substr(4, 2));
  } else if (zone.size() != 3) {
    return std::nullopt;
  }
  if (zone.substr(1, 2) == "00" && minutes == "00") return out + "Z";
  return out + std::string(zone.substr(0, 3)) + ":" + minutes;
}

std::variant<Message, PoisonReason> to_message(OutboxEvent event,
                                               const std::map<std::string, std::string>& topic_map,
                                               const MessageFormat& format) {
  Message message;
  message.topic = kafka_topic(event.topic, topic_map, format.topic_template);
  if (!is_valid_topic_name(message.topic)) {
    return PoisonReason{"invalid Kafka topic name \"" + excerpt(message.topic) +
                        "\" (1-249 characters of a-z A-Z 0-9 . _ -)"};
  }

  Headers own;
  if (!event.headers_json.empty()) {
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
      if (auto name_taken = reserved(name, format)) {
        return PoisonReason{"header \"" + *name_taken + "\" is reserved for the relay"};
      }
      own.emplace_back(name, value.get<std::string>());
    }
  }
  auto own_header = [&own](std::string_view name) -> const std::string* {
    for (const auto& [n, v] : own) {
      if (n == name) return &v;
    }
    return nullptr;
  };

  message.headers.emplace_back(kEventIdHeader, event.event_id);
  message.headers.emplace_back(kOutboxIdHeader, std::to_string(event.id));
  if (format.id_header) message.headers.emplace_back(kDebeziumIdHeader, event.event_id);
  if (format.cloudevents) {
    // A row's own ce_* or content-type header wins (a per-event source or type); ce_id and
    // ce_specversion are the relay's (reserved above).
    const CloudEventsFormat& ce = *format.cloudevents;
    auto add = [&](const char* name, std::string value) {
      if (!own_header(name)) message.headers.emplace_back(name, std::move(value));
    };
    add("ce_specversion", "1.0");
    add("ce_id", event.event_id);
    add("ce_source", ce.source);
    const std::string* type = own_header(ce.type_header);
    add("ce_type", type ? *type : event.topic);
    if (auto time = rfc3339(event.created_at)) add("ce_time", *time);
    if (event.payload) {
      bool json = nlohmann::json::accept(*event.payload);
      add("content-type", json ? "application/json" : ce.content_type);
    }
  }
  for (auto& header : own) message.headers.push_back(std::move(header));

  message.key = std::move(event.key);
  if (format.json_string_key && message.key) message.key = json_string(*message.key);
  message.payload = std::move(event.payload);
  if (format.json_string_value && message.payload) {
    message.payload = json_string(*message.payload);
  }
  return message;
}

}  // namespace outbox::core
