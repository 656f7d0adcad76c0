// Kafka behind core::Publisher: librdkafka's idempotent producer (enable.idempotence=true,
// acks=all, enable.gapless.guarantee, message.timeout.ms=0), asynchronous: send() hands a
// message to librdkafka without copying its payload, poll() serves delivery reports and
// returns them with the tags the messages were sent with.
//
// Lifecycle: create() (no network I/O yet), send()/poll()/purge() from the relay's one worker
// thread, destroy. Reports are served only inside poll() (and the destructor, which purges
// and flushes first), so each lands in this object's list of completions and no report
// points into memory: the caller keeps each message alive until its completion came back.
// After a fatal producer error (idempotence state lost) the producer's messages not sent yet
// are purged, those sent get their real reports, and once the last one is answered the
// producer is re-created, as librdkafka's INTRODUCTION.md advises. The producer's state is
// named (ProducerState), each transition made by one function that logs it and refuses one
// the table does not allow (core/state_machine.h); the drain's deadline is on the injected
// clock.
#pragma once

#include <librdkafka/rdkafka.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"
#include "core/ports.h"
#include "core/state_machine.h"

namespace outbox::kafka {

//! librdkafka properties the relay sets before the user's kafka.properties.
std::vector<std::pair<std::string, std::string>> default_properties(
    const config::KafkaConfig& config);

//! The oldest librdkafka the relay runs on: older ones cannot authenticate with SCRAM to a
//! Kafka 4 broker (the nonce is repeated in the client-final message; fixed in 2.6.1).
inline constexpr int kMinLibrdkafkaVersion = 0x020601ff;  // 2.6.1, rd_kafka_version() format

//! Why librdkafka `version` (rd_kafka_version() format; default: the one linked at run time)
//! is too old for the relay, or nullopt when it is recent enough.
std::optional<std::string> librdkafka_version_problem(int version = rd_kafka_version());

//! Whether librdkafka accepts `name`=`value` for a producer; the error text if not.
std::optional<std::string> check_property(const std::string& name, const std::string& value);

//! Where the producer stands in its fatal-error recovery.
enum class ProducerState {
  none,          //!< no producer: created by the next call that needs one
  ready,         //!< producing
  fatal,         //!< a fatal error: nothing is sent; the messages sent get their real reports
  fatal_purged,  //!< they took longer than kFatalDrain: purged (liveness; maybe duplicates)
};
struct ProducerStateTraits {
  using State = ProducerState;
  static constexpr const char* kWhat = "Kafka producer";
  static const char* name(ProducerState s);
  static bool allowed(ProducerState from, ProducerState to);
};

class KafkaPublisher : public core::Publisher {
 public:
  //! Throws std::runtime_error when librdkafka refuses the configuration. `clock` (not owned;
  //! default: the steady clock) times the fatal drain.
  explicit KafkaPublisher(config::KafkaConfig config, core::Clock* clock = nullptr);
  ~KafkaPublisher() override;
  KafkaPublisher(const KafkaPublisher&) = delete;
  KafkaPublisher& operator=(const KafkaPublisher&) = delete;

  void send(const core::Message& message, std::uint64_t tag) override;
  std::vector<core::Completion> poll(std::chrono::milliseconds timeout) override;
  void purge() override;

  //! Sends `messages` and waits for every report (purging what is left once `give_up`
  //! returns true): one result per message. For tools and tests; the relay pipelines.
  std::vector<core::DeliveryResult> publish(const std::vector<core::Message>& messages,
                                            const std::function<bool()>& give_up);

  //! Waits at most kTopicAskWaitMs for the cluster's metadata (core::TopicGate ticks the
  //! loop between asks); no answer in time is "cannot say now": nullopt.
  std::optional<std::string> topic_problem(const std::string& topic) override;
  static constexpr int kTopicAskWaitMs = 1000;

  //! Asks a broker for cluster metadata: the broker count, or the error text.
  std::pair<int, std::string> probe_cluster(int timeout_ms);

  //! The librdkafka handle (creating the producer if needed), for the transactional calls
  //! of kafka/transactional_publisher (exactly_once). Throws std::runtime_error.
  rd_kafka_t* handle();

  ProducerState state() const { return state_.state(); }
  //! After a fatal error, how long the messages already sent may take to be answered before
  //! they are purged (librdkafka's request.timeout.ms is 30 s by default).
  static constexpr std::chrono::seconds kFatalDrain{60};

  //! Where delivery reports land (the producer's opaque).
  struct Inbox {
    std::vector<core::Completion> done;  //!< served, not yet returned by poll()
    std::size_t outstanding = 0;         //!< produced, report not served yet
    bool authentication_failed = false;  //!< a broker refused the credentials (served errors)
  };

 private:
  struct Producer;
  void ensure_producer();

  void fail_now(std::uint64_t tag, core::FailureKind kind, std::string error);
  //! ready -> fatal: purges what was not sent yet, starts the drain's deadline.
  void enter_fatal(const std::string& reason);
  //! kafka.secret_files read again into config_.properties: the names whose value changed.
  std::vector<std::string> reread_secret_files();
  //! After an authentication failure: sasl.username/sasl.password read again from their
  //! files and, when they changed, handed to librdkafka for its next authentication.
  void refresh_sasl_credentials(rd_kafka_t* rk);

  config::KafkaConfig config_;
  core::Clock& clock_;
  Inbox inbox_;  //!< declared before producer_: outlives the destructor's last reports
  core::StateMachine<ProducerStateTraits> state_{ProducerState::none, "kafka"};
  std::chrono::steady_clock::time_point fatal_deadline_{};  //!< fatal: when the drain ends
  std::unique_ptr<Producer> producer_;
};

}  // namespace outbox::kafka
