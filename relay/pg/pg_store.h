// The outbox table in PostgreSQL, behind core::OutboxStore.
//
// Lifecycle: construct (no I/O), then reads (begin_batch by state, read_after above an id),
// record_outcome per group of answered rows (pipelined, core::OutboxStore::read_ahead) and
// wait_for_rows, from the relay's one worker thread. The connection is opened on first use
// and re-opened after any failure; every libpqxx failure surfaces as core::UnavailableError
// with the server's message. No transaction is open between a read and the marks:
// reading is one prepared statement, recording a group's outcome one short transaction of
// prepared statements with array parameters.
//
// Leadership: each connection takes a session advisory lock before reading, so that one
// relay at a time publishes from a database (per-key order across replicas). A second
// relay stands by: it keeps its session and waits on the lock (pg_advisory_lock under a
// short lock_timeout, then core::StandbyError so the loop ticks and calls again), so that
// PostgreSQL grants it the lock the moment the leader's session ends: at once when the
// leader's process dies (its socket closes), within the keepalive bound (conninfo.h, about
// 10 s) when the network to it is cut.
#pragma once

#include <pqxx/pqxx>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "core/ports.h"

namespace outbox::pg {

//! Rows of (id, event_id::text, topic, key, payload, headers::text, attempts) as events.
std::vector<core::OutboxEvent> events_of(const pqxx::result& rows);

//! Where a store's session stands, readable from any thread (metrics, readiness, retention).
enum class SessionRole : int {
  disconnected = 0,  //!< no session (not tried yet, or the last one failed)
  standby = 1,       //!< PostgreSQL answers, another relay holds the leader lock
  leader = 2,        //!< connected and holding the leader lock: this relay publishes
};
const char* to_string(SessionRole role);

class PgOutboxStore : public core::OutboxStore {
 public:
  //! `conninfo` as made by build_conninfo; `redacted` is what logs may show of it.
  PgOutboxStore(std::string conninfo, std::string redacted);
  ~PgOutboxStore() override;

  std::vector<core::OutboxEvent> begin_batch(std::size_t limit, std::size_t max_bytes,
                                             const std::vector<std::string>& skip_topics) override;
  void finish_batch(const core::BatchOutcome& outcome) override;
  void abort_batch() noexcept override;
  //! Pipelined: reads hold nothing, marks are record_outcome (one transaction per group).
  bool read_ahead() const override { return true; }
  std::vector<core::OutboxEvent> read_after(std::int64_t after_id, std::size_t pending_upto,
                                            std::size_t limit, std::size_t max_bytes,
                                            const std::vector<std::string>& skip_topics) override;
  bool wait_for_rows(std::chrono::milliseconds timeout) override;

  void record_outcome(const core::BatchOutcome& outcome) override;
  //! Runs `body` on this store's session (connecting and taking the leader lock first), for
  //! the queries of replication mode (pg/replication_table.h). A failure disconnects and
  //! throws core::UnavailableError, as the other calls do.
  void with_connection(const std::function<void(pqxx::connection&)>& body);

  //! Set by the worker thread as it connects, fails or stands by; read from any thread.
  SessionRole role() const { return role_.load(std::memory_order_relaxed); }

  //! The channel outbox.hint_relay() notifies.
  static constexpr const char* kChannel = "outbox_events";

 private:
  class HintReceiver;
  void connect();
  bool wait_for_leader_lock();
  void disconnect() noexcept;
  [[noreturn]] void fail(const std::exception& e);
  void write_outcome(pqxx::work& txn, const core::BatchOutcome& outcome);
  void ensure_prepared();
  std::vector<core::OutboxEvent> fetch(std::int64_t after_id, long long pending_upto,
                                       std::size_t limit, std::size_t max_bytes,
                                       const std::vector<std::string>& skip_topics);

  std::string conninfo_;
  std::string redacted_;
  std::unique_ptr<pqxx::connection> conn_;
  std::unique_ptr<HintReceiver> receiver_;
  bool need_rearm_ = true;
  bool prepared_ = false;  //!< the statements of the hot path are prepared on conn_
  std::optional<std::chrono::steady_clock::time_point> standby_since_;
  std::atomic<SessionRole> role_{SessionRole::disconnected};
};

}  // namespace outbox::pg
