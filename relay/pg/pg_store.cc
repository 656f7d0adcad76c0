#include "pg/pg_store.h"

#include <pqxx/pqxx>

#include <algorithm>
#include <limits>
#include <set>

#include "common/logging.h"
#include "pg/pg_array.h"

namespace outbox::pg {

PgOutboxStore::PgOutboxStore(Conninfo conninfo, std::string redacted, const core::Clock& clock,
                             ShardSettings shards)
    : rows_(polling_fetch_sql(shards.shards)),
      pending_sql_(pending_exists_sql(shards.shards)),
      floor_(shards.shards),
      clock_(clock),
      session_(std::move(conninfo), std::move(redacted), clock, shards,
               [this](pqxx::connection& conn) {
                 rows_.open(conn);
                 floor_.open(conn);
               }) {}

void PgOutboxStore::connect() { session_.connect(); }

core::BatchOutcome PgOutboxStore::held_part(const core::BatchOutcome& outcome) {
  const std::set<int>& held = session_.held();
  std::size_t dropped = 0;
  auto mine = [&](std::int64_t id) {
    auto it = row_shard_.find(id);
    bool keep = it != row_shard_.end() && held.count(it->second) > 0;
    if (!keep) ++dropped;
    return keep;
  };
  core::BatchOutcome part;
  part.rows = outcome.rows;
  for (auto id : outcome.published) {
    if (mine(id)) part.published.push_back(id);
  }
  for (const auto& f : outcome.retry) {
    if (mine(f.id)) part.retry.push_back(f);
  }
  for (const auto& f : outcome.dead_letter) {
    if (mine(f.id)) part.dead_letter.push_back(f);
  }
  if (dropped > 0) {
    logging::get("pg")->warn(
        "not recording the outcome of {} rows: their shards are no longer held by this relay "
        "(its session ended); their holder sends them again",
        dropped);
  }
  return part;
}

std::vector<core::OutboxEvent> PgOutboxStore::begin_batch(
    std::size_t limit, std::size_t max_bytes, const std::vector<std::string>& skip_topics) {
  return fetch(std::numeric_limits<std::int64_t>::min(), -1, limit, max_bytes, skip_topics);
}

std::vector<core::OutboxEvent> PgOutboxStore::read_after(
    std::int64_t after_id, std::size_t pending_upto, std::size_t limit, std::size_t max_bytes,
    const std::vector<std::string>& skip_topics) {
  return fetch(after_id, static_cast<long long>(pending_upto), limit, max_bytes, skip_topics);
}

std::vector<core::OutboxEvent> PgOutboxStore::fetch(std::int64_t after_id, long long pending_upto,
                                                    std::size_t limit, std::size_t max_bytes,
                                                    const std::vector<std::string>& skip_topics) {
  connect();
  std::vector<core::OutboxEvent> events;
  const bool by_state = pending_upto < 0;
  if (sharded()) {
    // A by-state read: nothing this store returned is unrecorded (see the header), so the
    // shard set may change here, extras included.
    if (by_state) row_shard_.clear();
    try {
      session_.update_claims(by_state, by_state);
    } catch (const core::UnavailableError&) {
      throw;
    } catch (const std::exception& e) {
      session_.fail(e);
    }
    if (by_state) {
      // Another scope: what the floor proved was of the shards read before.
      if (read_set_ != session_.held() || !read_set_valid()) floor_.reset();
      read_set_ = session_.held();
      read_generation_ = session_.generation();
    } else if (!read_set_valid() || read_set_ != session_.held() || session_.wants_release()) {
      return events;  // the window drains, and the next read is by state with the new set
    }
  }
  try {
    floor_.before_read(session_.conn(), clock_.now(), by_state, read_set_);
    const auto floor = static_cast<long long>(floor_.floor());
    if (by_state) after_id = std::max<std::int64_t>(after_id, floor - 1);
    // One statement, no transaction left open while Kafka answers: the leader lock (or the
    // shards' locks) already make this relay the only reader, so the rows need no lock.
    pqxx::result rows =
        sharded() ? rows_.fetch(session_.conn(), static_cast<long>(limit),
                                static_cast<long long>(max_bytes), text_array(skip_topics),
                                static_cast<long long>(after_id), pending_upto, floor,
                                int_array(read_set_))
                  : rows_.fetch(session_.conn(), static_cast<long>(limit),
                                static_cast<long long>(max_bytes), text_array(skip_topics),
                                static_cast<long long>(after_id), pending_upto, floor);
    events = events_of(rows);
    floor_.returned(events);
    if (sharded()) {
      for (const auto& row : rows) row_shard_[row[0].as<std::int64_t>()] = row[8].as<int>();
    }
  } catch (const std::exception& e) {
    session_.fail(e);
  }
  return events;
}

void PgOutboxStore::record_outcome(const core::BatchOutcome& outcome) {
  connect();
  try {
    if (sharded()) {
      // After a new session: take the shards back first where they are free (held_before_).
      if (!read_set_valid()) session_.update_claims(false, false);
      core::BatchOutcome part = held_part(outcome);
      rows_.record(session_.conn(), part, vanished_);
      for (auto id : outcome.published) row_shard_.erase(id);
      for (const auto& f : outcome.retry) row_shard_.erase(f.id);
      for (const auto& f : outcome.dead_letter) row_shard_.erase(f.id);
      floor_.recorded(part, vanished_);
      return;
    }
    rows_.record(session_.conn(), outcome, vanished_);
    floor_.recorded(outcome, vanished_);
  } catch (const core::UnavailableError&) {
    throw;
  } catch (const std::exception& e) {
    session_.fail(e);
  }
}

std::vector<core::VanishedRow> PgOutboxStore::take_vanished() {
  std::vector<core::VanishedRow> out;
  out.swap(vanished_);
  return out;
}

bool PgOutboxStore::wait_for_rows(std::chrono::milliseconds timeout) {
  connect();
  try {
    if (sharded()) {
      // Idle: a change of the shards (taken, or extras to give back at the next by-state
      // read) or none held (the by-state read stands by on a shard's lock) ends the wait.
      bool changed = session_.held() != read_set_ || !read_set_valid();
      if (!changed) session_.update_claims(false, false);
      if (changed || session_.held() != read_set_ || session_.wants_release() ||
          session_.held().empty()) {
        return true;
      }
    }
    return session_.wait_for_hint(timeout, [this](pqxx::connection& conn) {
      pqxx::nontransaction n(conn);
      const auto floor = static_cast<long long>(floor_.floor());
      return sharded() ? n.exec_params1(pending_sql_, floor, int_array(read_set_))[0].as<bool>()
                       : n.exec_params1(pending_sql_, floor)[0].as<bool>();
    });
  } catch (const std::exception& e) {
    session_.fail(e);
  }
}

}  // namespace outbox::pg
