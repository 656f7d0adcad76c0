#include "pg/replay.h"

#include <pqxx/pqxx>

#include <algorithm>
#include <set>

#include "pg/pg_array.h"

namespace outbox::pg {

ReplayResult replay_dead_lettered(const std::string& conninfo, const ReplaySelection& selection,
                                  std::size_t chunk) {
  ReplayResult result;
  pqxx::connection conn(conninfo);
  auto replay = [&](const std::vector<std::int64_t>& ids) {
    pqxx::work txn(conn);
    for (const auto& row : txn.exec_params("SELECT old_id, new_id FROM outbox.replay($1::bigint[])",
                                           bigint_array(ids))) {
      result.replayed.emplace_back(row[0].as<std::int64_t>(), row[1].as<std::int64_t>());
    }
    txn.commit();
  };

  if (!selection.ids.empty()) {
    std::vector<std::int64_t> ids(selection.ids);
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    for (std::size_t i = 0; i < ids.size(); i += chunk) {
      replay({ids.begin() + static_cast<std::ptrdiff_t>(i),
              ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), i + chunk))});
    }
    std::set<std::int64_t> done;
    for (const auto& [old_id, new_id] : result.replayed) done.insert(old_id);
    for (auto id : ids) {
      if (!done.count(id)) result.not_replayed.push_back(id);
    }
    return result;
  }

  // By topic or all: walk the dead-lettered rows up to the newest id now, so that a row
  // dead-lettered again while this runs (its copy has a larger id) is left alone.
  std::int64_t last = 0, upto = 0;
  {
    pqxx::nontransaction n(conn);
    upto = n.exec1("SELECT coalesce(max(id), 0) FROM outbox.events")[0].as<std::int64_t>();
  }
  for (;;) {
    std::vector<std::int64_t> ids;
    {
      pqxx::nontransaction n(conn);
      auto rows = n.exec_params(
          "SELECT id FROM outbox.events WHERE dead_lettered_at IS NOT NULL AND id > $1 "
          "AND id <= $2 AND ($3::text IS NULL OR topic = $3::text) ORDER BY id LIMIT $4",
          last, upto, selection.topic, static_cast<long>(chunk));
      for (const auto& row : rows) ids.push_back(row[0].as<std::int64_t>());
    }
    if (ids.empty()) break;
    last = ids.back();
    replay(ids);
  }
  return result;
}

}  // namespace outbox::pg
