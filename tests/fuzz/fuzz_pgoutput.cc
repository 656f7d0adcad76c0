// libFuzzer target: arbitrary bytes -> the pgoutput decoder (relay/replication/pgoutput.h).
// The decoder's documented failure is PgOutputError; anything else thrown, a crash or a
// sanitizer report is a finding.
//
// Input: either one message, decoded both as a pgoutput message and as a replication
// CopyData frame (the captured tests/data/pgoutput/*.bin files are such seeds), or, when the
// first byte is 0xFF, a stream: messages each preceded by a 2-byte big-endian length, run
// through a RelationCache the way the replication source does (Relation, then Insert ->
// column_text of the outbox columns -> decode_bytea_hex of the payload).
#include <cstdint>
#include <string_view>
#include <variant>

#include "replication/pgoutput.h"

namespace {

using namespace outbox::replication;

void one(std::string_view bytes) {
  try {
    (void)decode_pgoutput(bytes);
  } catch (const PgOutputError&) {
  }
  try {
    auto frame = decode_copy_data(bytes);
    if (auto* x = std::get_if<XLogData>(&frame)) (void)decode_pgoutput(x->payload);
  } catch (const PgOutputError&) {
  }
}

void stream(std::string_view bytes) {
  RelationCache cache;
  while (bytes.size() >= 2) {
    std::size_t n =
        (static_cast<unsigned char>(bytes[0]) << 8) | static_cast<unsigned char>(bytes[1]);
    bytes.remove_prefix(2);
    std::string_view message = bytes.substr(0, n);
    bytes.remove_prefix(message.size());
    try {
      auto decoded = decode_pgoutput(message);
      if (auto* relation = std::get_if<Relation>(&decoded)) {
        cache.update(std::move(*relation));
      } else if (auto* insert = std::get_if<Insert>(&decoded)) {
        const Relation& relation = cache.get(insert->relation_oid);
        for (const char* column : {"id", "event_id", "topic", "key", "headers"}) {
          try {
            (void)column_text(relation, *insert, column);
          } catch (const PgOutputError&) {
          }
        }
        if (auto payload = column_text(relation, *insert, "payload"))
          (void)decode_bytea_hex(*payload);
      } else if (std::holds_alternative<Truncate>(decoded)) {
        cache.clear();
      }
    } catch (const PgOutputError&) {
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  if (!bytes.empty() && static_cast<unsigned char>(bytes[0]) == 0xFF) {
    stream(bytes.substr(1));
  } else {
    one(bytes);
  }
  return 0;
}
