// Replication mode's stream (replication_source.h, 4 to 7): decoded transactions, the rows
// checked against the table before they are sent, deferred topics, and the confirmed
// position (invariant confirm-below-pending, kept by ConfirmTracker).
//
// Lifecycle and thread: owned by ReplicationSource, started at the hand-over from the drain,
// reset when a connection fails; the worker thread only; the table, the stream, the clock and
// the options outlive it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/ports.h"
#include "replication/confirm_tracker.h"
#include "replication/replication_ports.h"

namespace outbox::replication {

struct ReplicationSourceOptions {
  std::string slot_name = "outbox_relay";  //!< for the logs
  //! How often the confirmed position is reported at the least (also while Kafka keeps
  //! rows waiting: the walsender's wal_sender_timeout counts from the last report).
  std::chrono::milliseconds status_interval{10'000};
  //! When idle, how often to ask the server for its position so that the slot advances.
  std::chrono::milliseconds heartbeat_interval{10'000};
  //! How soon to look again for a committed transaction that is not visible yet: at first,
  //! doubling up to visibility_retry_max while it stays so (a synchronous standby's wait can
  //! last as long as the standby is away).
  std::chrono::milliseconds visibility_retry{2};
  std::chrono::milliseconds visibility_retry_max{100};
  //! Called in every pause of a wait on the server (visibility), so the relay's health
  //! shows the loop alive while it waits; may be empty.
  std::function<void()> waiting;
  //! In every pause of a wait for visibility, how long it has waited; 0 when it ends.
  std::function<void(std::chrono::nanoseconds)> visibility_waiting;
  //! How often a wait for visibility is logged.
  std::chrono::milliseconds visibility_log_every{10'000};
};

//! The replication stream: decoded transactions, the rows checked against the table, and
//! the confirmed position (invariant confirm-below-pending).
class StreamSource {
 public:
  StreamSource(ReplicationTable& table, ReplicationStream& stream, core::Clock& clock,
               const ReplicationSourceOptions& options, std::function<bool()> stopping);

  //! START_REPLICATION (the previous session's decoded state is forgotten). The rows of
  //! `deferred` (topics skipped when the drain ended) are read from the table (7).
  void start(const std::vector<std::string>& deferred, Lsn skip_to = {});
  //! START_REPLICATION at `skip_to` while the drain runs (replication_source.h, 3a):
  //! nothing is read, and only the old confirmed position is reported, until start().
  void open_early(Lsn skip_to);
  //! The stream is gone: everything after the confirmed position comes again.
  void reset() noexcept;

  //! By state: first the pending rows of deferred topics no longer skipped, from the table
  //! in id order (7); then every streamed row handed out before and not resolved, unsent
  //! again, in decoded order; then the next decoded rows. Rows of `skip_topics` and of
  //! deferred topics are deferred (7), never held.
  std::vector<core::OutboxEvent> begin(std::size_t limit, std::size_t max_bytes,
                                       const std::vector<std::string>& skip_topics);
  //! The next rows in decoded order, if exactly `pending_upto` rows handed out since the
  //! by-state read are unresolved (all in the core's window) and no deferred topic waits
  //! for its table read; otherwise none.
  std::vector<core::OutboxEvent> after(std::size_t pending_upto, std::size_t limit,
                                       std::size_t max_bytes,
                                       const std::vector<std::string>& skip_topics);
  //! A recorded (marked) outcome: published and dead-lettered rows are resolved.
  void resolved(const core::BatchOutcome& outcome);
  //! As core::OutboxStore::wait_for_rows: reads the stream up to `timeout`.
  bool wait(std::chrono::milliseconds timeout);
  //! Reports the unchanged position every status_interval. While a stream opened early (3a)
  //! waits for the drain to end, it also takes what the server sent from the socket
  //! (invariant `early-stream-read`): keepalives are answered and dropped, anything else is
  //! kept, in order, for the first read (at most kEarlyBytes). A socket left full while the
  //! drain runs (the server's progress keepalives of the drain's own mark transactions) made
  //! the server end the connection after its tcp_user_timeout (10 s), and the next stream
  //! then decoded again everything since the slot's restart position: seconds of delay for
  //! every row written after a long drain.
  void keep_alive() noexcept;
  //! A clean stop reports how far it got. Never throws.
  void final_report() noexcept;

  Lsn confirmed() const { return confirmed_; }
  Lsn reported() const { return reported_; }
  //! Rows decoded and not resolved (handed out, or to be sent again).
  std::size_t unresolved() const { return held_.size(); }
  //! Topics whose rows are read from the table rather than the stream (7).
  const std::set<std::string>& deferred() const { return deferred_; }

 private:
  //! A decoded row, from the moment a read looks at it until it is resolved.
  struct Held {
    core::OutboxEvent event;  //!< its payload, key and headers move out when handed out
    ConfirmTracker::TxnSeq txn = 0;
    std::uint32_t xid = 0;
    std::size_t bytes = 0;  //!< core::event_bytes at decoding
    enum class State { unsent, out } state = State::unsent;
    bool has_payload = true;
  };
  struct Queued {
    core::OutboxEvent event;
    ConfirmTracker::TxnSeq txn;
    std::uint32_t xid;
  };
  std::vector<core::OutboxEvent> read(std::size_t limit, std::size_t max_bytes,
                                      const std::vector<std::string>& skip_topics);
  //! One decoded message; a message out of order is core::FatalError.
  void handle(StreamMessage message);
  void track(StreamMessage message);
  //! Checks `picked` (4 in replication_source.h): resolves the rows already marked or deleted,
  //! waits while a row's transaction is not visible, defers the rows of deferred topics
  //! (7), reads from the table the payload of rows sent before. Returns the rows to send,
  //! in decoded order, handed out.
  std::vector<core::OutboxEvent> hand_out(const std::vector<std::uint64_t>& picked,
                                          const std::vector<std::string>& skip_topics);
  //! The deferred topics not in `skip_topics`: their rows are read from the table next.
  std::vector<std::string> ready_deferred(const std::vector<std::string>& skip_topics) const;
  //! Pending rows of the deferred topics not skipped, from the table; a topic none of
  //! whose rows is pending stops being deferred.
  std::vector<core::OutboxEvent> read_deferred(std::size_t limit, std::size_t max_bytes,
                                               const std::vector<std::string>& skip_topics);
  void resolve(std::map<std::uint64_t, Held>::iterator it);
  void report(bool reply);
  void report_if_due();
  //! The next message: the ones kept while the drain ran first, then the socket's.
  std::optional<StreamMessage> next_message(std::chrono::milliseconds wait);
  //! keep_alive's reading of a stream opened early; throws as stream_.read does.
  void take_early();

  ReplicationTable& table_;
  ReplicationStream& stream_;
  core::Clock& clock_;
  const ReplicationSourceOptions& options_;
  std::function<bool()> stopping_;
  bool started_ = false;

  ConfirmTracker tracker_;
  std::uint32_t open_xid_ = 0;                          // of the transaction being decoded
  std::deque<Queued> queued_;                           // decoded, not looked at by a read yet
  std::map<std::uint64_t, Held> held_;                  // by decoded order
  std::unordered_map<std::int64_t, std::uint64_t> at_;  // id -> key in held_
  std::uint64_t next_order_ = 1;
  std::size_t out_ = 0;             // rows of held_ handed out since the last by-state read
  std::set<std::string> deferred_;  // row topics read from the table (7)
  std::unordered_set<std::int64_t> table_out_;  // their rows handed out since the by-state read

  Lsn received_;
  //! Where a stream opened during the drain starts (open_early); 0: none.
  Lsn opened_at_;
  //! What a stream opened early sent while the drain ran, keepalives left out (keep_alive).
  std::deque<StreamMessage> early_;
  std::size_t early_bytes_ = 0;
  //! What a read of the early stream threw (a connection lost, bytes that cannot be decoded):
  //! thrown by the first read after the messages kept before it, never swallowed.
  std::exception_ptr early_error_;
  //! The most early_ holds (event bytes and 256 per message); past it the socket is left
  //! to fill, as before: a connection the server ends is opened again after the drain.
  static constexpr std::size_t kEarlyBytes = 16u << 20;
  Lsn confirmed_;
  Lsn reported_;
  std::chrono::steady_clock::time_point last_report_{};
};

}  // namespace outbox::replication
