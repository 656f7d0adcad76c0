// `outbox-relay replay`: dead-lettered rows made pending again, in both source modes.
//
// Each row is re-inserted by outbox.replay() (schema 0004) with the same event_id and a new
// id, and the old row deleted, in one transaction per chunk: an insert is what both polling
// and the replication stream see, so a running relay publishes the rows as it would new ones.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace outbox::pg {

struct ReplaySelection {
  std::vector<std::int64_t> ids;     //!< these rows (each must be dead-lettered)
  std::optional<std::string> topic;  //!< every dead-lettered row of this row topic
  bool all = false;                  //!< every dead-lettered row
};

struct ReplayResult {
  std::vector<std::pair<std::int64_t, std::int64_t>> replayed;  //!< old id -> new id
  std::vector<std::int64_t> not_replayed;  //!< asked for by id, but not dead-lettered
};

//! Replays in chunks of `chunk` rows, one transaction each, oldest first. Rows dead-lettered
//! again while it runs are not replayed a second time. Throws on PostgreSQL errors; chunks
//! committed before stay replayed.
ReplayResult replay_dead_lettered(const std::string& conninfo, const ReplaySelection& selection,
                                  std::size_t chunk = 1000);

}  // namespace outbox::pg
