// The checkpoint record of exactly_once (relay/core/README-eos.md): the outbox ids of one
// Kafka transaction and their event ids, committed atomically with its data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace outbox::core {

//! One row of a checkpoint: the outbox id and the row's event_id. Recovery marks a row only
//! when both match (README-eos.md, "Row identity"); a checkpoint written before event ids
//! were carried (format 1) has event_id "" for every row.
struct CheckpointRow {
  std::int64_t id = 0;
  std::string event_id;
  bool operator==(const CheckpointRow&) const = default;
};

//! The checkpoint's text (format 2): "v2;" ids in increasing order as ranges ";" the rows'
//! event ids in the same order, comma-separated: "v2;1-3,7;<uuid>,<uuid>,<uuid>,<uuid>".
std::string encode_checkpoint(std::vector<CheckpointRow> rows);
//! The rows of a checkpoint's text, format 2 or format 1 (ranges only, "1-5,7,9-12": event
//! ids ""); nullopt when it is neither.
std::optional<std::vector<CheckpointRow>> decode_checkpoint(const std::string& text);
//! Upper bounds of a format-2 checkpoint's size: its fixed part, and per row (an id of up
//! to 19 digits and a uuid, each with its separator).
inline constexpr std::size_t kCheckpointFixedBytes = 8;
inline constexpr std::size_t kCheckpointRowBytes = 20 + 37;

}  // namespace outbox::core
