// Kafka behind core::TransactionalPublisher (delivery.guarantee: exactly_once): librdkafka's
// transactional producer, built on KafkaPublisher (same send/poll/purge, same defaults and
// the user's kafka.properties) with transactional.id set and no infinite message timeout
// (librdkafka bounds it by transaction.timeout.ms; a failed message aborts the whole
// transaction, so the gapless guarantee is not needed for per-key order).
//
// The checkpoint: one record per transaction to `checkpoint_topic` (one partition,
// cleanup.policy=compact: created by init() when missing, checked by every init() when not),
// key = transactional.id, value = the transaction's rows (core::encode_checkpoint).
// last_checkpoint() reads the newest record of that key with a read_committed consumer,
// scanning back from the end of the partition, once the last stable offset has reached that
// end. See relay/core/README-eos.md for the protocol.
#pragma once

#include <librdkafka/rdkafka.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "config/config.h"
#include "core/ports.h"
#include "kafka/client_conf.h"
#include "kafka/kafka_publisher.h"

namespace outbox::kafka {

struct TransactionalSettings {
  std::string transactional_id;
  std::string checkpoint_topic = "outbox-relay-checkpoints";
  std::chrono::milliseconds transaction_timeout{60'000};
};

//! The producer configuration of exactly_once: `kafka` with the relay's transactional
//! overrides appended (they win over the defaults).
config::KafkaConfig transactional_kafka_config(const config::KafkaConfig& kafka,
                                               const TransactionalSettings& settings);

//! How long the broker may hold an empty fetch of the checkpoint consumer (its read ends at
//! one: a recovery waits this long once).
inline constexpr int kCheckpointFetchWaitMs = 10;
//! The checkpoint consumer's fixed settings (kafka/client_conf.h: they win over
//! kafka.properties).
Properties checkpoint_consumer_fixed(bool read_committed);

class TransactionalKafkaPublisher : public core::TransactionalPublisher {
 public:
  //! `clock` (not owned; default: the steady clock) times the slices of the transactional
  //! calls, the checkpoint read and the producer's fatal drain.
  TransactionalKafkaPublisher(config::KafkaConfig kafka, TransactionalSettings settings,
                              core::Clock* clock = nullptr);
  ~TransactionalKafkaPublisher() override;

  void init() override;
  core::CheckpointRead last_checkpoint() override;
  std::size_t max_checkpoint_bytes() const override { return max_checkpoint_bytes_; }
  void begin() override;
  void send(const core::Message& message, std::uint64_t tag) override;
  std::vector<core::Completion> poll(std::chrono::milliseconds timeout) override;
  void purge() override;
  void send_checkpoint(const std::string& checkpoint) override;
  void commit(const std::string& checkpoint) override;
  bool abort() noexcept override;
  std::optional<std::string> topic_problem(const std::string& topic) override;

 private:
  rd_kafka_t* handle();
  //! `call` with a short timeout, again while it times out (ticking), up to the transaction
  //! timeout in all.
  rd_kafka_error_t* sliced(const std::function<rd_kafka_error_t*(int timeout_ms)>& call);
  //! Creates the checkpoint topic when missing; FatalError when it has more than one
  //! partition or a cleanup.policy other than compact. Sets max_checkpoint_bytes_.
  void check_checkpoint_topic(rd_kafka_t* rk);
  void create_checkpoint_topic(rd_kafka_t* rk);
  //! cleanup.policy and max.message.bytes of the checkpoint topic, asked of `broker` (-1:
  //! the controller).
  void describe_checkpoint_topic(rd_kafka_t* rk, bool just_created, std::int32_t broker);
  static std::size_t producer_max_message_bytes(rd_kafka_t* rk);
  struct ConsumerDeleter {
    void operator()(rd_kafka_t* rk) const { rd_kafka_destroy(rk); }  // no group: nothing to close
  };
  //! A consumer of the checkpoint topic (no group: the simple consumer API) with the given
  //! isolation level.
  std::unique_ptr<rd_kafka_t, ConsumerDeleter> checkpoint_consumer(bool read_committed) const;

  core::Clock* clock_;         //!< as given (null: KafkaPublisher's default)
  core::Clock& now_;           //!< what times the slices
  config::KafkaConfig kafka_;  //!< with the transactional overrides
  config::KafkaConfig plain_;  //!< as configured: the checkpoint consumer's security settings
  TransactionalSettings settings_;
  //! Checkpoint records sent and not answered yet, by tag: librdkafka points into them until
  //! their reports (declared before producer_, which is destroyed first).
  std::map<std::uint64_t, core::Message> checkpoints_;
  std::unique_ptr<KafkaPublisher> producer_;
  //! Takes the reports of checkpoint records out of `done`, keeping the current one's.
  void take_checkpoint_reports(std::vector<core::Completion>& done);

  std::optional<std::uint64_t> checkpoint_tag_;            //!< the open transaction's, once sent
  std::optional<core::DeliveryResult> checkpoint_result_;  //!< its report, once in
  std::uint64_t checkpoints_sent_ = 0;
  std::size_t max_checkpoint_bytes_ = 0;    //!< after init()
  std::vector<core::Completion> not_sent_;  //!< sent with no producer: failed at once
};

//! `outbox-relay check`: whether the cluster lets this configuration use transactions
//! (init_transactions with transactional.id `probe_id`, which must not be a running
//! relay's). nullopt if it does, else why not.
std::optional<std::string> transactions_problem(const config::KafkaConfig& kafka,
                                                const std::string& probe_id, int timeout_ms);

}  // namespace outbox::kafka
