// A named state with one function per transition: each transition is logged (debug) with its
// reason, and one the table does not allow is refused as an internal error (logged at error,
// std::logic_error thrown) instead of being taken. The model is librdkafka's
// rd_kafka_idemp_set_state (src/rdkafka_idempotence.c), which the relay's loop
// (core/relay_loop.h), the exactly_once transaction (the same) and the Kafka producer's
// fatal-error recovery (kafka/kafka_publisher.h) follow.
//
// Lifecycle and thread: a member of its owner, used from the owner's thread only.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include "common/logging.h"

namespace outbox::core {

//! `Traits` gives, for the enum `Traits::State`: `static const char* name(State)`,
//! `static bool allowed(State from, State to)` and `static constexpr const char* kWhat` (what
//! the state is of, for the log: "relay loop", "transaction").
template <typename Traits>
class StateMachine {
 public:
  using State = typename Traits::State;

  StateMachine(State initial, const char* logger) : state_(initial), logger_(logger) {}

  State state() const { return state_; }
  bool is(State s) const { return state_ == s; }
  const char* name() const { return Traits::name(state_); }

  //! Moves to `to`, logging `why`. Staying in the same state is no transition (not logged).
  //! Throws std::logic_error when the table does not allow `from -> to`: the state stays.
  void set(State to, std::string_view why) {
    if (to == state_) return;
    auto log = logging::get(logger_);
    if (!Traits::allowed(state_, to)) {
      std::string text = std::string("internal error: ") + Traits::kWhat + " state " +
                         Traits::name(state_) + " -> " + Traits::name(to) + " is not allowed (" +
                         std::string(why) + ")";
      log->error("{}", text);
      throw std::logic_error(text);
    }
    log->debug("{} state {} -> {} ({})", Traits::kWhat, Traits::name(state_), Traits::name(to),
               why);
    state_ = to;
  }

 private:
  State state_;
  const char* logger_;
};

}  // namespace outbox::core
