// libFuzzer target: arbitrary bytes -> the fields of an outbox row -> core::to_message.
// to_message documents no exception: any throw, crash or sanitizer report is a finding.
// A row that maps must give a valid topic and the relay's two headers first; one that does
// not must say why. Every option of the message format (message.*) is drawn too.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdlib>
#include <map>
#include <string>
#include <variant>

#include "core/message_mapping.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  outbox::core::OutboxEvent event;
  event.id = in.ConsumeIntegral<std::int64_t>();
  event.attempts = in.ConsumeIntegral<int>();
  event.event_id = in.ConsumeRandomLengthString(64);
  event.topic = in.ConsumeRandomLengthString(400);
  if (in.ConsumeBool()) event.key = in.ConsumeRandomLengthString(300);
  if (in.ConsumeBool()) event.payload = in.ConsumeRandomLengthString(300);
  std::map<std::string, std::string> topic_map;
  if (in.ConsumeBool()) topic_map[event.topic] = in.ConsumeRandomLengthString(300);
  outbox::core::MessageFormat format;
  if (in.ConsumeBool()) format.topic_template = in.ConsumeRandomLengthString(60);
  format.id_header = in.ConsumeBool();
  format.json_string_key = in.ConsumeBool();
  format.json_string_value = in.ConsumeBool();
  if (in.ConsumeBool()) {
    format.cloudevents = outbox::core::CloudEventsFormat{in.ConsumeRandomLengthString(40),
                                                         in.ConsumeRandomLengthString(20),
                                                         "application/octet-stream"};
  }
  event.created_at = in.ConsumeRandomLengthString(40);
  event.headers_json = in.ConsumeRemainingBytesAsString();

  auto mapped = outbox::core::to_message(event, topic_map, format);
  if (auto* message = std::get_if<outbox::core::Message>(&mapped)) {
    if (!outbox::core::is_valid_topic_name(message->topic) || message->headers.size() < 2 ||
        message->headers[0].first != outbox::core::kEventIdHeader ||
        message->headers[1].first != outbox::core::kOutboxIdHeader) {
      std::abort();
    }
  } else if (std::get<outbox::core::PoisonReason>(mapped).text.empty()) {
    std::abort();
  }
  return 0;
}
