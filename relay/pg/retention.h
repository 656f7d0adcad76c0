// Retention: the leader deletes published rows older than a configured age (and, when
// configured, dead-lettered rows after a longer one), so outbox.events stays the size of
// its recent traffic instead of growing forever.
//
// How (schema/0005, 0006): through outbox.delete_published / outbox.delete_dead_lettered,
// SECURITY DEFINER functions the relay's role may EXECUTE (it has no DELETE on the table).
// Each call deletes at most `batch_size` rows, oldest first, in its own autocommitted
// statement: no transaction stays open between calls, so autovacuum can reclaim the rows
// as soon as they are gone, and rows locked by someone else are skipped, never waited for.
// A round calls until a call deletes fewer than `batch_size` rows; rounds are `interval`
// apart.
//
// Safety:
//  - only rows whose published_at (dead_lettered_at) is older than the age; published_at
//    is set after Kafka acknowledged the row and never cleared, so a pending row is never
//    deleted, and the relay's mark (of pending rows) never meets a row deleted here;
//  - only while this process leads (`is_leader`, PgOutboxStore::role()): between two
//    leaders both may run a call or two, which is harmless (the same rows, skipped locks);
//  - replication mode: the publication carries inserts only, deletes never reach the
//    stream; a row re-read from the slot after a reconnect and found deleted was published.
//
// Thread: its own, with its own connection (never the relay loop's session, so a delete
// never delays a read or a mark). start() once; stop() (or the destructor) returns
// promptly: the thread checks `stopping` and the stop request at least every 200 ms, and a
// statement in flight is one batch (statement_timeout 60 s, lock_timeout 1 s at most).
#pragma once

#include <pqxx/pqxx>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "core/ports.h"
#include "pg/conninfo.h"

namespace outbox::pg {

struct RetentionSettings {
  std::chrono::seconds published_after{7 * 24 * 3600};
  std::chrono::seconds dead_lettered_after{0};  //!< 0: dead-lettered rows are kept
  std::chrono::milliseconds interval{60'000};
  int batch_size = 1000;
};

class Retention {
 public:
  //! `conninfo` as made by build_conninfo; `redacted` for logs. `is_leader` and `stopping`
  //! are called from the retention thread; its pauses are on `clock` (thread-safe, outlives
  //! this), which looks at them and at stop() between slices.
  Retention(Conninfo conninfo, std::string redacted, RetentionSettings settings,
            std::function<bool()> is_leader, std::function<bool()> stopping, core::Clock& clock);
  ~Retention();
  Retention(const Retention&) = delete;
  Retention& operator=(const Retention&) = delete;

  void start();
  void stop() noexcept;

  //! Rows deleted so far (any thread).
  std::uint64_t deleted_published() const { return deleted_published_.load(); }
  std::uint64_t deleted_dead_lettered() const { return deleted_dead_lettered_.load(); }

 private:
  void loop();
  bool should_stop();
  //! Waits up to `d`, returning early (true) when asked to stop.
  bool pause(std::chrono::milliseconds d);
  //! Calls `function` until a call deletes fewer than batch_size rows; returns the rows.
  std::uint64_t delete_all(pqxx::connection& conn, const char* function, std::chrono::seconds age);

  Conninfo conninfo_;
  std::string redacted_;
  RetentionSettings settings_;
  std::function<bool()> is_leader_;
  std::function<bool()> stopping_;
  core::Clock& clock_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::atomic<std::uint64_t> deleted_published_{0};
  std::atomic<std::uint64_t> deleted_dead_lettered_{0};
};

}  // namespace outbox::pg
