#include "kafka/transactional_publisher.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <stdexcept>
#include <string_view>
#include <utility>

#include "common/crash_point.h"
#include "common/logging.h"
#include "core/steady_clock.h"
#include "kafka/client_conf.h"

namespace outbox::kafka {

namespace {

// The checkpoint records' tags: never one of the relay's (they count up from 1). Each
// checkpoint sent gets its own (counting down from the top), so the report of one sent in a
// transaction that was then aborted is never taken for the next one's.
constexpr std::uint64_t kCheckpointTagTop = std::numeric_limits<std::uint64_t>::max();
constexpr std::uint64_t kCheckpointTagFloor = kCheckpointTagTop - (std::uint64_t{1} << 40);
bool is_checkpoint_tag(std::uint64_t tag) { return tag >= kCheckpointTagFloor; }

// Properties the transactional producer sets itself: the at-least-once defaults that
// librdkafka refuses or that do not apply with transactions.
bool overridden(const std::string& name) {
  return name == "message.timeout.ms" || name == "delivery.timeout.ms" ||
         name == "enable.gapless.guarantee" || name == "transactional.id" ||
         name == "transaction.timeout.ms";
}

std::string text_of(rd_kafka_error_t* error) {
  std::string text = rd_kafka_error_string(error);
  rd_kafka_error_destroy(error);
  return text;
}

bool fenced(rd_kafka_resp_err_t code) {
  return code == RD_KAFKA_RESP_ERR__FENCED || code == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
         code == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH;
}

// One wait of a transactional call: short, so the loop ticks between retries of a timed-out
// call (librdkafka: a timeout is retriable, the call may be made again).
constexpr int kSliceMs = 5'000;

}  // namespace

Properties checkpoint_consumer_fixed(bool read_committed) {
  return {{"isolation.level", read_committed ? "read_committed" : "read_uncommitted"},
          {"enable.partition.eof", "true"},
          {"enable.auto.commit", "false"},
          // The read ends at the partition's end, known only from an empty fetch (the last
          // offsets are a commit marker, never returned): the broker holds that fetch for
          // fetch.wait.max.ms, 500 ms by default, at every recovery.
          {"fetch.wait.max.ms", std::to_string(kCheckpointFetchWaitMs)}};
}

config::KafkaConfig transactional_kafka_config(const config::KafkaConfig& kafka,
                                               const TransactionalSettings& settings) {
  config::KafkaConfig out = kafka;
  out.properties.clear();
  for (const auto& p : kafka.properties) {
    if (!overridden(p.first)) out.properties.push_back(p);
  }
  std::string timeout = std::to_string(settings.transaction_timeout.count());
  out.properties.emplace_back("transactional.id", settings.transactional_id);
  out.properties.emplace_back("transaction.timeout.ms", timeout);
  out.properties.emplace_back("message.timeout.ms", timeout);
  out.properties.emplace_back("enable.gapless.guarantee", "false");
  return out;
}

namespace {
core::Clock& steady() {
  static core::SteadyClock clock;
  return clock;
}
}  // namespace

TransactionalKafkaPublisher::TransactionalKafkaPublisher(config::KafkaConfig kafka,
                                                         TransactionalSettings settings,
                                                         core::Clock* clock)
    : clock_(clock),
      now_(clock != nullptr ? *clock : steady()),
      kafka_(transactional_kafka_config(kafka, settings)),
      plain_(std::move(kafka)),
      settings_(std::move(settings)) {}

TransactionalKafkaPublisher::~TransactionalKafkaPublisher() = default;

rd_kafka_error_t* TransactionalKafkaPublisher::sliced(
    const std::function<rd_kafka_error_t*(int timeout_ms)>& call) {
  auto deadline = now_.now() + settings_.transaction_timeout;
  for (;;) {
    rd_kafka_error_t* error = call(kSliceMs);
    if (error == nullptr || !rd_kafka_error_is_retriable(error) ||
        rd_kafka_error_code(error) != RD_KAFKA_RESP_ERR__TIMED_OUT || now_.now() >= deadline) {
      return error;
    }
    rd_kafka_error_destroy(error);
    tick();
  }
}

rd_kafka_t* TransactionalKafkaPublisher::handle() {
  if (!producer_) throw core::UnavailableError("Kafka: the transactional producer is not ready");
  try {
    return producer_->handle();
  } catch (const std::exception& e) {
    throw core::UnavailableError(e.what());
  }
}

void TransactionalKafkaPublisher::check_checkpoint_topic(rd_kafka_t* rk) {
  // There already (pre-created by an operator, or by an earlier run)? Asked with a request
  // for every topic's metadata, which never auto-creates one; then no CREATE is needed.
  // Looked at on every init: an operator may add partitions at any time.
  const rd_kafka_metadata_t* md = nullptr;
  rd_kafka_resp_err_t code = rd_kafka_metadata(rk, 1, nullptr, &md, 10'000);
  bool exists = false;
  int partitions = 0;
  std::int32_t leader = -1;
  if (code == RD_KAFKA_RESP_ERR_NO_ERROR) {
    for (int i = 0; i < md->topic_cnt; ++i) {
      if (settings_.checkpoint_topic == md->topics[i].topic &&
          md->topics[i].err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        exists = true;
        partitions = md->topics[i].partition_cnt;
        if (partitions > 0) leader = md->topics[i].partitions[0].leader;
      }
    }
  }
  if (md != nullptr) rd_kafka_metadata_destroy(md);
  if (code != RD_KAFKA_RESP_ERR_NO_ERROR) {
    throw core::UnavailableError("Kafka: metadata (checkpoint topic " + settings_.checkpoint_topic +
                                 "): " + rd_kafka_err2str(code));
  }
  if (!exists) {
    create_checkpoint_topic(rk);
    partitions = 1;
  }
  // Invariant eos-checkpoint-topic (README-eos.md): one partition. Records are written by
  // the key's hash and read from partition 0: with more partitions the newest checkpoint may
  // be where recovery never looks, and it would mark an older one and send rows again.
  if (partitions != 1) {
    throw core::FatalError(
        "the checkpoint topic " + settings_.checkpoint_topic + " has " +
        std::to_string(partitions) +
        " partitions; exactly_once needs exactly 1 (checkpoints are read from partition 0). "
        "Stop the relay (a clean stop leaves nothing to recover), create a topic with 1 "
        "partition and cleanup.policy=compact, and set delivery.checkpoint_topic to it");
  }
  describe_checkpoint_topic(rk, /*just_created=*/!exists, leader);
}

void TransactionalKafkaPublisher::describe_checkpoint_topic(rd_kafka_t* rk, bool just_created,
                                                            std::int32_t broker) {
  auto log = logging::get("kafka");
  char err[512];
  rd_kafka_ConfigResource_t* resource =
      rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, settings_.checkpoint_topic.c_str());
  rd_kafka_queue_t* queue = rd_kafka_queue_new(rk);
  rd_kafka_AdminOptions_t* options =
      rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
  rd_kafka_AdminOptions_set_request_timeout(options, 10'000, err, sizeof err);
  // Any broker answers for a topic; the partition's leader is known (the controller need not
  // be: librdkafka would wait for it).
  if (broker >= 0) rd_kafka_AdminOptions_set_broker(options, broker, err, sizeof err);
  rd_kafka_DescribeConfigs(rk, &resource, 1, options, queue);
  rd_kafka_event_t* event = rd_kafka_queue_poll(queue, 15'000);
  std::string problem, policy;
  std::optional<std::size_t> max_message;
  if (event == nullptr) {
    problem = "no answer to DescribeConfigs";
  } else if (rd_kafka_event_error(event) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    problem = rd_kafka_event_error_string(event);
  } else {
    std::size_t n = 0;
    const rd_kafka_ConfigResource_t** results =
        rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(event), &n);
    for (std::size_t i = 0; i < n; ++i) {
      if (rd_kafka_ConfigResource_error(results[i]) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char* text = rd_kafka_ConfigResource_error_string(results[i]);
        problem =
            text != nullptr ? text : rd_kafka_err2str(rd_kafka_ConfigResource_error(results[i]));
        continue;
      }
      std::size_t count = 0;
      const rd_kafka_ConfigEntry_t** entries = rd_kafka_ConfigResource_configs(results[i], &count);
      for (std::size_t j = 0; j < count; ++j) {
        std::string_view name = rd_kafka_ConfigEntry_name(entries[j]);
        const char* value = rd_kafka_ConfigEntry_value(entries[j]);
        if (value == nullptr) continue;
        if (name == "cleanup.policy") policy = value;
        if (name == "max.message.bytes") {
          try {
            max_message = static_cast<std::size_t>(std::stoull(value));
          } catch (const std::exception&) {
          }
        }
      }
    }
  }
  if (event != nullptr) rd_kafka_event_destroy(event);
  rd_kafka_AdminOptions_destroy(options);
  rd_kafka_queue_destroy(queue);
  rd_kafka_ConfigResource_destroy(resource);

  // The largest record the producer and the topic accept, less the record batch's framing
  // and the key (librdkafka counts key and value against message.max.bytes).
  std::size_t limit = producer_max_message_bytes(rk);
  if (max_message) limit = std::min(limit, *max_message);
  constexpr std::size_t kFraming = 128;
  std::size_t overhead = kFraming + settings_.transactional_id.size();
  max_checkpoint_bytes_ = limit > overhead ? limit - overhead : 0;

  if (!problem.empty() && just_created) return;  // created by us: compact (the next init looks)
  if (!problem.empty()) {
    // Not provable here (no DESCRIBE_CONFIGS on the topic, or a cluster without the API):
    // said once per init; the partition count, which matters most, was checked above.
    log->warn(
        "cannot read the configuration of the checkpoint topic {} ({}): its cleanup.policy "
        "must be compact (grant DESCRIBE_CONFIGS on it to let the relay check)",
        settings_.checkpoint_topic, problem);
    return;
  }
  // Invariant eos-checkpoint-topic (README-eos.md): cleanup.policy=compact, without
  // delete. Deletion by retention would remove this relay's newest checkpoint after
  // retention.ms however recent the rows it names are still unmarked (a long PostgreSQL
  // outage): recovery would find an older one, or none, and send those rows again.
  if (policy.find("delete") != std::string::npos || policy.find("compact") == std::string::npos) {
    throw core::FatalError("the checkpoint topic " + settings_.checkpoint_topic +
                           " has cleanup.policy=" + policy +
                           "; exactly_once needs cleanup.policy=compact (deletion by retention "
                           "can remove the newest checkpoint): set it with kafka-configs.sh "
                           "--alter --entity-type topics --entity-name " +
                           settings_.checkpoint_topic + " --add-config cleanup.policy=compact");
  }
}

std::size_t TransactionalKafkaPublisher::producer_max_message_bytes(rd_kafka_t* rk) {
  char value[64];
  std::size_t size = sizeof value;
  if (rd_kafka_conf_get(rd_kafka_conf(rk), "message.max.bytes", value, &size) == RD_KAFKA_CONF_OK) {
    try {
      return static_cast<std::size_t>(std::stoull(value));
    } catch (const std::exception&) {
    }
  }
  return 1'000'000;  // librdkafka's default
}

void TransactionalKafkaPublisher::create_checkpoint_topic(rd_kafka_t* rk) {
  char err[512];
  rd_kafka_NewTopic_t* topic =
      rd_kafka_NewTopic_new(settings_.checkpoint_topic.c_str(), 1, -1, err, sizeof err);
  if (topic == nullptr) throw core::UnavailableError(std::string("checkpoint topic: ") + err);
  rd_kafka_NewTopic_set_config(topic, "cleanup.policy", "compact");
  rd_kafka_NewTopic_set_config(topic, "segment.ms", "3600000");  // compaction can start hourly
  rd_kafka_queue_t* queue = rd_kafka_queue_new(rk);
  rd_kafka_AdminOptions_t* options = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
  rd_kafka_AdminOptions_set_operation_timeout(options, 15'000, err, sizeof err);
  rd_kafka_CreateTopics(rk, &topic, 1, options, queue);
  rd_kafka_event_t* event = rd_kafka_queue_poll(queue, 20'000);
  std::string problem;
  if (event == nullptr) {
    problem = "no answer to CreateTopics";
  } else if (rd_kafka_event_error(event) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    problem = rd_kafka_event_error_string(event);
  } else {
    std::size_t n = 0;
    const rd_kafka_topic_result_t** results =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(event), &n);
    for (std::size_t i = 0; i < n; ++i) {
      rd_kafka_resp_err_t code = rd_kafka_topic_result_error(results[i]);
      if (code != RD_KAFKA_RESP_ERR_NO_ERROR && code != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
        const char* text = rd_kafka_topic_result_error_string(results[i]);
        problem = text != nullptr ? text : rd_kafka_err2str(code);
      }
    }
  }
  if (event != nullptr) rd_kafka_event_destroy(event);
  rd_kafka_AdminOptions_destroy(options);
  rd_kafka_queue_destroy(queue);
  rd_kafka_NewTopic_destroy(topic);
  if (!problem.empty()) {
    throw core::UnavailableError("cannot create the checkpoint topic " +
                                 settings_.checkpoint_topic + " (" + problem +
                                 "): create it (1 partition, cleanup.policy=compact) or grant "
                                 "CREATE on it");
  }
}

void TransactionalKafkaPublisher::init() {
  // The previous producer (fenced, failed, or of unknown state) goes first: its destructor
  // purges and waits for what it had in flight (the relay let every message be answered).
  producer_.reset();
  checkpoints_.clear();  // the old producer is gone: nothing points into them
  checkpoint_tag_.reset();
  checkpoint_result_.reset();
  try {
    producer_ = std::make_unique<KafkaPublisher>(kafka_, clock_);
  } catch (const std::exception& e) {
    throw core::UnavailableError(e.what());
  }
  rd_kafka_t* rk = handle();
  try {
    check_checkpoint_topic(rk);
  } catch (...) {
    producer_.reset();
    throw;
  }
  if (rd_kafka_error_t* error =
          sliced([rk](int timeout) { return rd_kafka_init_transactions(rk, timeout); })) {
    producer_.reset();
    throw core::UnavailableError("Kafka: init_transactions (transactional.id " +
                                 settings_.transactional_id + "): " + text_of(error));
  }
  common::crash_point("after_init_transactions");
}

std::unique_ptr<rd_kafka_t, TransactionalKafkaPublisher::ConsumerDeleter>
TransactionalKafkaPublisher::checkpoint_consumer(bool read_committed) const {
  Conf conf;
  try {
    conf = client_conf(ClientKind::consumer, plain_,
                       // No group.id: the partition is read with the simple consumer API,
                       // nothing committed. (With one, librdkafka ran a group coordinator
                       // it never used, whose thread could hold rd_kafka_destroy for a second
                       // at every recovery.)
                       {{"bootstrap.servers", plain_.bootstrap_servers},
                        {"client.id", "outbox-relay-checkpoint"},
                        {"log.connection.close", "false"}},
                       checkpoint_consumer_fixed(read_committed));
  } catch (const std::runtime_error& e) {
    throw core::UnavailableError(std::string("checkpoint consumer: ") + e.what());
  }
  char err[512];
  rd_kafka_t* raw = rd_kafka_new(RD_KAFKA_CONSUMER, conf.get(), err, sizeof err);
  if (raw == nullptr) throw core::UnavailableError(std::string("checkpoint consumer: ") + err);
  conf.release();  // rd_kafka_new took it
  return std::unique_ptr<rd_kafka_t, ConsumerDeleter>(raw);
}

core::CheckpointRead TransactionalKafkaPublisher::last_checkpoint() {
  const std::string& topic = settings_.checkpoint_topic;
  // The end first, then the last stable offset (ListOffsets answers by the asking client's
  // isolation.level: read_uncommitted gives the high watermark, read_committed the LSO).
  // Every record of ours is below that end: init_transactions returned only once our last
  // transaction was completed, markers written. An LSO at or past the end proves every
  // record below the end decided (the LSO never moves back), so the read_committed read
  // below sees every committed checkpoint of ours.
  std::int64_t low = 0, end = 0, unused = 0, stable = 0;
  {
    auto uncommitted = checkpoint_consumer(false);
    rd_kafka_resp_err_t code =
        rd_kafka_query_watermark_offsets(uncommitted.get(), topic.c_str(), 0, &low, &end, 10'000);
    if (code == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) return {};
    if (code != RD_KAFKA_RESP_ERR_NO_ERROR) {
      throw core::UnavailableError("checkpoint topic " + topic + ": " + rd_kafka_err2str(code));
    }
  }
  auto consumer = checkpoint_consumer(true);
  rd_kafka_t* raw = consumer.get();
  rd_kafka_resp_err_t code =
      rd_kafka_query_watermark_offsets(raw, topic.c_str(), 0, &unused, &stable, 10'000);
  if (code != RD_KAFKA_RESP_ERR_NO_ERROR) {
    throw core::UnavailableError("checkpoint topic " + topic + ": " + rd_kafka_err2str(code));
  }
  if (stable < end) {
    core::CheckpointRead hidden;
    hidden.proven = false;
    hidden.hidden = "partition 0 of " + topic + ": last stable offset " + std::to_string(stable) +
                    ", end " + std::to_string(end);
    return hidden;
  }
  // Scan back from the end: the newest record of our key is near it (each transaction adds
  // a record and a commit marker; other relays may share the topic).
  std::unique_ptr<rd_kafka_topic_t, decltype(&rd_kafka_topic_destroy)> rkt(
      rd_kafka_topic_new(raw, topic.c_str(), nullptr), &rd_kafka_topic_destroy);
  if (!rkt) {
    throw core::UnavailableError("checkpoint topic " + topic + ": " +
                                 rd_kafka_err2str(rd_kafka_last_error()));
  }
  std::int64_t window = 64;
  for (;;) {
    std::int64_t start = std::max(low, end - window);
    if (rd_kafka_consume_start(rkt.get(), 0, start) == -1) {
      throw core::UnavailableError("checkpoint topic " + topic + ": " +
                                   rd_kafka_err2str(rd_kafka_last_error()));
    }
    struct Stop {  // on every way out of this read, before the topic handle goes
      rd_kafka_topic_t* rkt;
      ~Stop() { rd_kafka_consume_stop(rkt, 0); }
    } stop{rkt.get()};
    std::optional<std::string> found;
    auto deadline = now_.now() + std::chrono::seconds(30);
    bool at_end = start >= end;
    while (!at_end) {
      if (now_.now() > deadline) {
        throw core::UnavailableError("checkpoint topic " + topic +
                                     ": could not read it to offset " + std::to_string(end) +
                                     " within 30 s, read_committed");
      }
      rd_kafka_message_t* m = rd_kafka_consume(rkt.get(), 0, 200);
      if (m == nullptr) continue;
      if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        at_end = m->offset >= end;
      } else if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        std::string text = rd_kafka_message_errstr(m);
        rd_kafka_message_destroy(m);
        throw core::UnavailableError("checkpoint topic " + topic + ": " + text);
      } else if (m->offset >= end) {
        at_end = true;  // written after init: another relay's (ours are all below the end)
      } else {
        std::string_view key(static_cast<const char*>(m->key), m->key_len);
        if (key == settings_.transactional_id) {
          found.emplace(static_cast<const char*>(m->payload), m->len);
        }
        if (m->offset + 1 >= end) at_end = true;
      }
      rd_kafka_message_destroy(m);
    }
    if (found || start <= low) {
      core::CheckpointRead read;
      read.record = found.value_or("");
      return read;
    }
    window *= 8;
  }
}

void TransactionalKafkaPublisher::begin() {
  if (rd_kafka_error_t* error = rd_kafka_begin_transaction(handle())) {
    throw core::UnavailableError("Kafka: begin_transaction: " + text_of(error));
  }
  checkpoint_tag_.reset();
  checkpoint_result_.reset();
}

void TransactionalKafkaPublisher::send_checkpoint(const std::string& checkpoint) {
  if (checkpoint_tag_) throw std::logic_error("send_checkpoint: sent already in this transaction");
  std::uint64_t tag =
      kCheckpointTagTop - (checkpoints_sent_++ % (kCheckpointTagTop - kCheckpointTagFloor));
  checkpoint_tag_ = tag;
  checkpoint_result_.reset();
  if (!producer_) {  // answered at once, as send() does: commit() reports it
    checkpoint_result_ = core::DeliveryResult{};
    checkpoint_result_->error = "Kafka: the transactional producer is not ready";
    return;
  }
  core::Message& record = checkpoints_[tag];
  record.topic = settings_.checkpoint_topic;
  record.key = settings_.transactional_id;
  record.payload = checkpoint;
  producer_->send(record, tag);
}

void TransactionalKafkaPublisher::take_checkpoint_reports(std::vector<core::Completion>& done) {
  done.erase(std::remove_if(done.begin(), done.end(),
                            [this](core::Completion& c) {
                              if (!is_checkpoint_tag(c.tag)) return false;
                              // librdkafka is done with it. A report of an earlier (aborted)
                              // transaction's checkpoint is dropped.
                              checkpoints_.erase(c.tag);
                              if (checkpoint_tag_ == c.tag)
                                checkpoint_result_ = std::move(c.result);
                              return true;
                            }),
             done.end());
}

void TransactionalKafkaPublisher::send(const core::Message& message, std::uint64_t tag) {
  if (!producer_) {
    core::Completion c;
    c.tag = tag;
    c.result.error = "Kafka: the transactional producer is not ready";
    not_sent_.push_back(std::move(c));
    return;
  }
  producer_->send(message, tag);
}

std::vector<core::Completion> TransactionalKafkaPublisher::poll(std::chrono::milliseconds timeout) {
  if (!producer_) return std::exchange(not_sent_, {});
  std::vector<core::Completion> done = producer_->poll(timeout);
  for (auto& c : std::exchange(not_sent_, {})) done.push_back(std::move(c));
  take_checkpoint_reports(done);
  return done;
}

void TransactionalKafkaPublisher::purge() {
  if (producer_) producer_->purge();
}

void TransactionalKafkaPublisher::commit(const std::string& checkpoint) {
  rd_kafka_t* rk = handle();
  if (!checkpoint_tag_) send_checkpoint(checkpoint);  // else sent already: the same text
  // The checkpoint's own report first (commit_transaction would flush it anyway): the
  // record must not be touched while librdkafka points into it. Every other message of the
  // transaction was answered before commit (the relay's contract): nothing else comes here.
  while (!checkpoint_result_) {
    tick();
    std::vector<core::Completion> done = producer_->poll(std::chrono::milliseconds(100));
    take_checkpoint_reports(done);
  }
  const std::optional<core::DeliveryResult>& result = checkpoint_result_;
  if (!result->ok) {
    if (result->kind == core::FailureKind::permanent ||
        result->kind == core::FailureKind::suspect) {
      // Refused for what it is (too large): the same read would make the same record, be
      // aborted, recovered and read again, forever.
      throw core::FatalError(
          "the checkpoint record (" + std::to_string(checkpoint.size()) + " bytes) was refused (" +
          result->error +
          "): lower source.polling.batch_size, or raise kafka.properties message.max.bytes and "
          "the checkpoint topic's max.message.bytes");
    }
    throw core::UnavailableError("the checkpoint record was not delivered (" + result->error + ")");
  }
  common::crash_point("before_commit");
  for (int attempt = 1;; ++attempt) {
    rd_kafka_error_t* error =
        sliced([rk](int timeout) { return rd_kafka_commit_transaction(rk, timeout); });
    if (error == nullptr) return;
    rd_kafka_resp_err_t code = rd_kafka_error_code(error);
    bool retriable = rd_kafka_error_is_retriable(error);
    bool is_fatal = rd_kafka_error_is_fatal(error);
    std::string text = text_of(error);
    if (fenced(code) || (is_fatal && fenced(rd_kafka_fatal_error(rk, nullptr, 0)))) {
      throw core::FencedError(
          "Kafka: commit refused, this producer was fenced: another instance "
          "with transactional.id " +
          settings_.transactional_id + " took over (" + text + ")");
    }
    if (retriable && attempt < 3) continue;  // outcome unknown: commit again
    throw core::UnavailableError("commit_transaction: " + text);
  }
}

bool TransactionalKafkaPublisher::abort() noexcept {
  if (!producer_) return false;
  try {
    rd_kafka_t* rk = handle();
    if (rd_kafka_error_t* error =
            sliced([rk](int timeout) { return rd_kafka_abort_transaction(rk, timeout); })) {
      logging::get("kafka")->warn("abort_transaction: {}", text_of(error));
      return false;
    }
    return true;
  } catch (...) {
    return false;
  }
}

std::optional<std::string> TransactionalKafkaPublisher::topic_problem(const std::string& topic) {
  if (!producer_) return std::nullopt;
  return producer_->topic_problem(topic);
}

std::optional<std::string> transactions_problem(const config::KafkaConfig& kafka,
                                                const std::string& probe_id, int timeout_ms) {
  TransactionalSettings settings;
  settings.transactional_id = probe_id;
  try {
    KafkaPublisher producer(transactional_kafka_config(kafka, settings));
    if (rd_kafka_error_t* error = rd_kafka_init_transactions(producer.handle(), timeout_ms)) {
      return text_of(error);
    }
  } catch (const std::exception& e) {
    return std::string(e.what());
  }
  return std::nullopt;
}

}  // namespace outbox::kafka
