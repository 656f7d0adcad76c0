// The outbox read from PostgreSQL's write-ahead log through a logical replication slot
// (pgoutput), behind core::OutboxStore, so the same BatchRelay drives both modes.
//
// Start (and every reconnect): take the leader lock, check or create the publication
// (inserts into outbox.events only, so the relay's own marking never comes back through the
// stream) and the slot, then first publish every row still pending with the polling query,
// and only then START_REPLICATION. Rows committed before the slot existed are published by
// that drain; rows committed later arrive through the stream; a row that is both is skipped
// in the stream because the drain already marked it (before each batch the stream's rows are
// checked against outbox.events: published or dead-lettered rows are dropped). That makes the
// hand-over exact without an exported snapshot, and re-streamed rows after a crash are not
// sent twice either.
//
// Invariant 5: the slot's confirmed flush position only moves past a transaction once every
// one of its events was acknowledged by Kafka and marked (core::ConfirmTracker); a keepalive's
// position is confirmed only when nothing is pending at all. Memory is bounded by the batch
// size: the stream is read only as far as the batch being built, whatever the size of a
// transaction.
//
// Lifecycle and thread: as core::OutboxStore, one worker thread. Connection failures throw
// core::UnavailableError and everything after the confirmed position is streamed again; an
// invalidated slot, a slot held by another process, or bytes that cannot be decoded throw
// core::FatalError.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/config.h"
#include "core/confirm_tracker.h"
#include "pg/pg_store.h"
#include "pg/pgoutput.h"
#include "pg/replication_connection.h"

namespace outbox::pg {

class PgReplicationStore : public core::OutboxStore {
 public:
  //! `stopping` tells a long wait on the server (creating the slot) to give up.
  PgReplicationStore(std::string conninfo, std::string redacted, config::ReplicationConfig options,
                     std::function<bool()> stopping);
  ~PgReplicationStore() override;

  std::vector<core::OutboxEvent> begin_batch(std::size_t limit, std::size_t max_bytes,
                                             const std::vector<std::string>& skip_topics) override;
  void finish_batch(const core::BatchOutcome& outcome) override;
  void abort_batch() noexcept override;
  //! Marks in the table only: after a failed finish_batch the stream was reset, and the
  //! rows it brings again are dropped once they are seen marked.
  void record_outcome(const core::BatchOutcome& outcome) override;
  bool wait_for_rows(std::chrono::milliseconds timeout) override;
  //! While Kafka keeps a batch waiting, reports the (unchanged) confirmed position every
  //! status_interval: the walsender's wal_sender_timeout counts from the last report, and
  //! without them a Kafka outage longer than it would cost the replication connection.
  void keep_alive() noexcept override;

 private:
  struct Queued {
    core::OutboxEvent event;
    core::ConfirmTracker::TxnSeq txn;
  };

  void ensure_started();
  void prepare_publication_and_slot(bool& slot_exists);
  void start_stream();
  void reset() noexcept;
  void handle(const std::string& frame);
  void on_insert(const Insert& insert);
  void report(bool reply);
  void report_if_due();
  std::unordered_map<std::int64_t, bool> visible_row_states();
  template <typename F>
  auto guarded(F&& body) -> decltype(body());

  std::string conninfo_;
  std::string redacted_;
  config::ReplicationConfig options_;
  std::function<bool()> stopping_;
  PgOutboxStore table_;
  std::unique_ptr<ReplicationConnection> stream_;
  bool streaming_ = false;
  bool draining_ = true;
  bool drain_batch_open_ = false;
  bool drain_done_after_batch_ = false;
  bool drain_batch_empty_ = false;
  std::chrono::steady_clock::time_point drain_started_{};

  RelationCache relations_;
  core::ConfirmTracker tracker_;
  std::deque<Queued> queued_;     // decoded, not yet in a batch
  std::vector<Queued> batch_;     // the open batch
  std::vector<Queued> retained_;  // not resolved by the last batch: first in the next
  std::vector<Queued> parked_;    // of topics the relay skips for now (blocked topics)

  Lsn received_;
  Lsn confirmed_;
  Lsn reported_;
  std::chrono::steady_clock::time_point last_report_{};
};

}  // namespace outbox::pg
