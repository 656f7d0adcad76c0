// Invariant blocked-topic-waits of core/batch_relay.h, for the relay loop (BatchRelay): a
// topic that cannot take messages (unknown, not authorized, policy) never dead-letters its
// rows. It waits with its own backoff, the cluster is asked about it before its rows are sent
// again, and the other topics flow (its rows are skipped when reading).
//
// Lifecycle and thread: owned by one loop, used from its worker thread only.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/logging.h"
#include "core/backoff.h"
#include "core/message_mapping.h"
#include "core/observer.h"
#include "core/ports.h"

namespace outbox::core {

class TopicGate {
 public:
  //! `ask` is the publisher's topic_problem (Publisher, TransactionalPublisher).
  using Ask = std::function<std::optional<std::string>(const std::string& kafka_topic)>;
  //! `topic_map` and `topic_template` (not owned) route a row topic (core::kafka_topic).
  TopicGate(Ask ask, Clock& clock, const std::map<std::string, std::string>& topic_map,
            const std::string& topic_template, std::chrono::milliseconds backoff_initial,
            std::chrono::milliseconds backoff_max)
      : ask_(std::move(ask)),
        clock_(clock),
        topic_map_(topic_map),
        topic_template_(topic_template),
        backoff_initial_(backoff_initial),
        backoff_max_(backoff_max) {}

  //! Where blocking and unblocking are reported (not owned; never null).
  void set_observer(RelayObserver* observer) { observer_ = observer; }

  //! The row topics to leave out of the next read: blocked, their backoff not run out.
  std::vector<std::string> skipped() const {
    std::vector<std::string> skip;
    for (const auto& [topic, block] : blocked_) {
      if (block.until > clock_.now()) skip.push_back(topic);
    }
    return skip;
  }

  //! A read asks about no more topics once its asks took this long: the rows of the topics
  //! left unasked stay pending for the next read (neither blocked nor backed off).
  static constexpr std::chrono::milliseconds kAskBudget{1000};

  //! Whether a row of `row_topic` may be sent now. A topic seen for the first time, or whose
  //! backoff ran out, is asked about first (a message to an unknown topic would wait in
  //! librdkafka), once per read: `asked` holds the topics asked about in this read (empty
  //! until the read's first ask). Each ask waits up to the publisher's bound (1 s, no
  //! broker answering), so the loop ticks after each one and a read stops asking after
  //! kAskBudget: the loop's tick promise (core/observer.h) and the replication stream's
  //! status updates hold however many unseen topics a read brings.
  bool admit(const std::string& row_topic, std::set<std::string>& asked) {
    if (!known_good_.count(row_topic) && !asked.count(row_topic)) {
      if (asked.empty()) {
        asking_since_ = clock_.now();
      } else if (clock_.now() - asking_since_ >= kAskBudget) {
        return false;  // asked about in a later read
      }
      asked.insert(row_topic);
      auto problem = ask_(kafka_topic(row_topic, topic_map_, topic_template_));
      observer_->on_tick();
      if (problem) {
        block(row_topic, *problem);
      } else {
        known_good_.insert(row_topic);
        if (auto it = blocked_.find(row_topic); it != blocked_.end()) {
          it->second.until = clock_.now();  // try it in this read
        }
      }
    }
    auto it = blocked_.find(row_topic);
    return it == blocked_.end() || it->second.until <= clock_.now();
  }

  //! Kafka said `row_topic` cannot take messages: it waits with its own backoff.
  void block(const std::string& row_topic, const std::string& reason) {
    auto [it, fresh] =
        blocked_.try_emplace(row_topic, TopicBlock{Backoff(backoff_initial_, backoff_max_), {}});
    known_good_.erase(row_topic);
    if (it->second.until > clock_.now()) return;  // already blocked by this read
    auto pause = it->second.backoff.next();
    it->second.until = clock_.now() + pause;
    if (fresh) observer_->on_topic_blocked(row_topic, true);
    logging::get("core")->warn(
        "topic {} cannot take messages ({}); its rows wait, asking again in {} ms; other "
        "topics keep flowing",
        row_topic, reason, pause.count());
  }

  //! A message of `row_topic` was acknowledged: the topic is no longer blocked.
  void delivered(const std::string& row_topic) {
    if (blocked_.erase(row_topic) > 0) observer_->on_topic_blocked(row_topic, false);
  }

 private:
  struct TopicBlock {
    Backoff backoff;
    std::chrono::steady_clock::time_point until;
  };
  Ask ask_;
  Clock& clock_;
  const std::map<std::string, std::string>& topic_map_;
  const std::string& topic_template_;
  std::chrono::milliseconds backoff_initial_, backoff_max_;
  RelayObserver no_observer_;
  RelayObserver* observer_ = &no_observer_;
  std::map<std::string, TopicBlock> blocked_;             //!< by row topic
  std::set<std::string> known_good_;                      //!< row topics the cluster said are there
  std::chrono::steady_clock::time_point asking_since_{};  //!< this read's first ask
};

}  // namespace outbox::core
