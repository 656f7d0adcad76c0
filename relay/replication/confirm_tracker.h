// Which position of a replication stream may be confirmed to the server (invariant
// confirm-below-pending, docs/design/invariants.md: the slot's confirmed flush LSN never passes an
// event Kafka has not acknowledged and the relay has not marked).
//
// Transactions arrive in commit order. Each holds a count of its unresolved events; the
// confirmable position is the end LSN of the last transaction of the longest committed,
// fully resolved prefix. Not thread-safe: owned by the stream's one reader thread.
//
// Messages out of order (a row or a Commit without its Begin, a Begin inside a transaction)
// are input, not a bug here: StreamOrderError, which the stream's reader reports as a fatal
// error of the stream (stream_source.cc). Nothing is confirmed past such a message.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <stdexcept>

namespace outbox::replication {

//! The stream's messages came in an order pgoutput never sends them in.
class StreamOrderError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ConfirmTracker {
 public:
  using TxnSeq = std::uint64_t;

  //! A transaction began (Begin message).
  void begin() {
    if (open_) throw StreamOrderError("Begin inside a transaction");
    txns_.push_back({next_seq_++, 0, 0, false});
    open_ = true;
  }
  //! An event of the open transaction; resolve(seq) it once acknowledged and marked.
  TxnSeq add_event() {
    if (!open_) throw StreamOrderError("a row outside a transaction");
    ++txns_.back().unresolved;
    return txns_.back().seq;
  }
  //! The open transaction committed; `end_lsn` is where the stream resumes after it.
  void commit(std::uint64_t end_lsn) {
    if (!open_) throw StreamOrderError("Commit without Begin");
    txns_.back().end_lsn = end_lsn;
    txns_.back().committed = true;
    open_ = false;
    advance();
  }
  //! One event of transaction `seq` is done with (published or dead-lettered, and marked).
  void resolve(TxnSeq seq) {
    // txns_ is in seq order: a binary search (many small transactions may be in flight).
    auto it = std::lower_bound(txns_.begin(), txns_.end(), seq,
                               [](const Txn& t, TxnSeq s) { return t.seq < s; });
    if (it != txns_.end() && it->seq == seq) {
      // The relay's own bookkeeping, not input: a bug.
      if (it->unresolved == 0) throw std::logic_error("ConfirmTracker: resolved twice");
      --it->unresolved;
    }
    advance();
  }
  //! The furthest position that may be confirmed (0: none yet).
  std::uint64_t confirmable() const { return confirmable_; }
  //! No transaction open and no event unresolved: the server's own position may be confirmed.
  bool idle() const { return txns_.empty() && !open_; }
  //! Everything after the confirmed position will be streamed again (after a reconnect).
  void reset() {
    txns_.clear();
    open_ = false;
  }

 private:
  struct Txn {
    TxnSeq seq;
    std::uint64_t unresolved;
    std::uint64_t end_lsn;
    bool committed;
  };
  void advance() {
    while (!txns_.empty() && txns_.front().committed && txns_.front().unresolved == 0) {
      if (txns_.front().end_lsn > confirmable_) confirmable_ = txns_.front().end_lsn;
      txns_.pop_front();
    }
  }

  std::deque<Txn> txns_;
  TxnSeq next_seq_ = 1;
  std::uint64_t confirmable_ = 0;
  bool open_ = false;
};

}  // namespace outbox::replication
