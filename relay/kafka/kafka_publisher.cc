#include "kafka/kafka_publisher.h"

#include <chrono>
#include <stdexcept>
#include <string_view>

#include "common/crash_point.h"
#include "common/logging.h"
#include "kafka/error_class.h"
#include "kafka/tls_diagnostics.h"

namespace outbox::kafka {

namespace {

// Where one message's delivery report lands: librdkafka hands this back as msg_opaque.
struct Slot {
  core::DeliveryResult* result;
  std::size_t* outstanding;
};

void on_delivery(rd_kafka_t*, const rd_kafka_message_t* msg, void*) {
  auto* slot = static_cast<Slot*>(msg->_private);
  if (slot == nullptr) return;
  if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    slot->result->ok = true;
  } else {
    slot->result->ok = false;
    slot->result->kind = classify(msg->err);
    slot->result->error = std::string("Kafka: ") + rd_kafka_err2str(msg->err);
  }
  --*slot->outstanding;
}

void on_log(const rd_kafka_t*, int level, const char* facility, const char* text) {
  auto log = logging::get("kafka");
  // Connection failures also come through on_error: once, at warn, is enough. The relay
  // sets enable.gapless.guarantee on purpose: librdkafka's "experimental" notice is noise.
  if (std::string_view(facility) == "FAIL") level = 7;
  if (std::string_view(facility) == "CONFWARN" &&
      std::string_view(text).find("enable.gapless.guarantee") != std::string_view::npos) {
    level = 7;
  }
  auto lvl = level <= 3   ? spdlog::level::err
             : level <= 4 ? spdlog::level::warn
             : level <= 6 ? spdlog::level::info
                          : spdlog::level::debug;
  log->log(lvl, "{}: {}", facility, text);
}

void on_error(rd_kafka_t*, int err, const char* reason, void*) {
  // Connection trouble is retried by librdkafka itself; say so at warn, not error.
  logging::get("kafka")->warn("{} ({})", reason,
                              rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err)));
}

struct ConfDeleter {
  void operator()(rd_kafka_conf_t* c) const { rd_kafka_conf_destroy(c); }
};
using Conf = std::unique_ptr<rd_kafka_conf_t, ConfDeleter>;

}  // namespace

std::vector<std::pair<std::string, std::string>> default_properties(
    const config::KafkaConfig& config) {
  return {
      {"bootstrap.servers", config.bootstrap_servers},
      {"client.id", "outbox-relay"},
      {"enable.idempotence", "true"},
      {"acks", "all"},
      {"linger.ms", "5"},
      // Per-key order under any failure: a message never times out while later ones of its
      // partition may still succeed (the relay waits for Kafka and gives up only at
      // shutdown, by purging), and a permanent failure in a partition stops the producer
      // (re-created) instead of leaving a gap that a re-send would fill out of order.
      {"message.timeout.ms", "0"},
      {"enable.gapless.guarantee", "true"},
      {"log.connection.close", "false"},
  };
}

std::optional<std::string> librdkafka_version_problem(int version) {
  if (version >= kMinLibrdkafkaVersion) return std::nullopt;
  auto part = [&](int shift) { return std::to_string((version >> shift) & 0xff); };
  return "librdkafka " + part(24) + "." + part(16) + "." + part(8) +
         " is too old: outbox-relay needs 2.6.1 or newer (older versions cannot authenticate "
         "with SCRAM to Kafka 4 brokers). Install the librdkafka1 package built by "
         "integration/env/librdkafka.sh, or use the container image";
}

std::optional<std::string> check_property(const std::string& name, const std::string& value) {
  Conf conf(rd_kafka_conf_new());
  char err[512];
  if (rd_kafka_conf_set(conf.get(), name.c_str(), value.c_str(), err, sizeof err) !=
      RD_KAFKA_CONF_OK) {
    return std::string(err);
  }
  return std::nullopt;
}

struct KafkaPublisher::Producer {
  rd_kafka_t* rk = nullptr;
  ~Producer() {
    if (rk == nullptr) return;
    // Reports of purged messages point into batches that are gone: detach them first.
    rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_flush(rk, 1000);
    rd_kafka_destroy(rk);
  }
};

KafkaPublisher::KafkaPublisher(config::KafkaConfig config) : config_(std::move(config)) {
  ensure_producer();
}

KafkaPublisher::~KafkaPublisher() = default;

void KafkaPublisher::ensure_producer() {
  if (producer_) return;
  Conf conf(rd_kafka_conf_new());
  char err[512];
  auto set = [&](const std::string& name, const std::string& value) {
    if (rd_kafka_conf_set(conf.get(), name.c_str(), value.c_str(), err, sizeof err) !=
        RD_KAFKA_CONF_OK) {
      throw std::runtime_error("kafka property " + name + ": " + err);
    }
  };
  for (const auto& [name, value] : default_properties(config_)) set(name, value);
  for (const auto& [name, value] : config_.properties) set(name, value);
  rd_kafka_conf_set_dr_msg_cb(conf.get(), on_delivery);
  rd_kafka_conf_set_log_cb(conf.get(), on_log);
  rd_kafka_conf_set_error_cb(conf.get(), on_error);
  install_certificate_diagnostics(conf.get());
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf.get(), err, sizeof err);
  if (rk == nullptr) throw std::runtime_error(std::string("cannot create Kafka producer: ") + err);
  conf.release();  // rd_kafka_new took it
  producer_ = std::make_unique<Producer>();
  producer_->rk = rk;
}

std::vector<core::DeliveryResult> KafkaPublisher::publish(
    const std::vector<core::Message>& messages, const std::function<bool()>& give_up) {
  try {
    ensure_producer();
  } catch (const std::exception& e) {
    throw core::UnavailableError(e.what());
  }
  rd_kafka_t* rk = producer_->rk;
  std::vector<core::DeliveryResult> results(messages.size());
  std::vector<Slot> slots(messages.size());
  std::size_t outstanding = 0;
  bool abandoned = false;

  for (std::size_t i = 0; i < messages.size(); ++i) {
    const core::Message& m = messages[i];
    slots[i] = Slot{&results[i], &outstanding};
    rd_kafka_headers_t* headers = rd_kafka_headers_new(m.headers.size());
    for (const auto& [name, value] : m.headers) {
      rd_kafka_header_add(headers, name.data(), static_cast<ssize_t>(name.size()), value.data(),
                          static_cast<ssize_t>(value.size()));
    }
    // No copy (flags 0): librdkafka points into `messages`, which outlives every delivery
    // report (publish() returns only after the last one, purged ones included).
    // The RD_KAFKA_V_* macros cast their arguments unparenthesised: pass plain variables.
    void* key = m.key ? const_cast<char*>(m.key->data()) : nullptr;
    std::size_t key_len = m.key ? m.key->size() : 0;
    void* value = m.payload ? const_cast<char*>(m.payload->data()) : nullptr;
    std::size_t value_len = m.payload ? m.payload->size() : 0;
    rd_kafka_resp_err_t err;
    for (;;) {
      err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(m.topic.c_str()), RD_KAFKA_V_KEY(key, key_len),
                              RD_KAFKA_V_VALUE(value, value_len), RD_KAFKA_V_HEADERS(headers),
                              RD_KAFKA_V_MSGFLAGS(0), RD_KAFKA_V_OPAQUE(&slots[i]), RD_KAFKA_V_END);
      if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || give_up()) break;
      rd_kafka_poll(rk, 50);  // the local queue is full: serve reports to make room
    }
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      ++outstanding;  // headers now belong to librdkafka
      continue;
    }
    rd_kafka_headers_destroy(headers);
    results[i].kind = classify(err, /*local=*/true);
    results[i].error = std::string("Kafka: ") + rd_kafka_err2str(err);
    if (err == RD_KAFKA_RESP_ERR__FATAL) break;
  }
  common::crash_point("after_produce");

  // Every report, or give up (shutdown deadline) and purge what is left.
  while (outstanding > 0) {
    if (!abandoned && give_up()) {
      abandoned = true;
      rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    }
    rd_kafka_poll(rk, 100);
  }

  char fatal[512];
  if (rd_kafka_fatal_error(rk, fatal, sizeof fatal) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    logging::get("kafka")->error("fatal producer error, re-creating the producer: {}", fatal);
    producer_.reset();
  }
  for (auto& r : results) {
    if (!r.ok && r.error.empty()) {
      r.kind = core::FailureKind::transient;
      r.error = "Kafka: not sent (producer failed before this message)";
    }
  }
  return results;
}

std::optional<std::string> KafkaPublisher::topic_problem(const std::string& topic) {
  try {
    ensure_producer();
  } catch (const std::exception&) {
    return std::nullopt;  // the next publish says what is wrong
  }
  rd_kafka_topic_t* rkt = rd_kafka_topic_new(producer_->rk, topic.c_str(), nullptr);
  if (rkt == nullptr) return std::nullopt;
  const rd_kafka_metadata_t* md = nullptr;
  rd_kafka_resp_err_t err = rd_kafka_metadata(producer_->rk, 0, rkt, &md, 10'000);
  std::optional<std::string> problem;
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1) {
    rd_kafka_resp_err_t terr = md->topics[0].err;
    if (classify(terr) == core::FailureKind::topic_blocked) {
      problem = std::string("Kafka: ") + rd_kafka_err2str(terr);
    }
  }
  if (md != nullptr) rd_kafka_metadata_destroy(md);
  rd_kafka_topic_destroy(rkt);
  return problem;
}

namespace {

// What librdkafka knew about a failed probe: the error events its broker threads raised
// ("127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused",
// an SSL or SASL failure), which rd_kafka_metadata() sums up as "Broker transport failure".
// They wait on the main queue until something polls it; here they are taken as events (not
// served to the error callback), the last specific one winning over "N/N brokers are down".
// Waits at most `wait_ms` for the first one. Only for a producer with nothing in flight:
// delivery reports on that queue would be taken too.
std::string probe_failure_detail(rd_kafka_t* rk, int wait_ms) {
  rd_kafka_queue_t* queue = rd_kafka_queue_get_main(rk);
  std::string specific, summary;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    bool waiting = specific.empty() && left > 0;
    rd_kafka_event_t* event = rd_kafka_queue_poll(queue, waiting ? static_cast<int>(left) : 0);
    if (event == nullptr) {
      if (waiting) continue;
      break;
    }
    if (rd_kafka_event_type(event) == RD_KAFKA_EVENT_ERROR) {
      const char* text = rd_kafka_event_error_string(event);
      (rd_kafka_event_error(event) == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN ? summary : specific) =
          text != nullptr ? text : "";
    }
    rd_kafka_event_destroy(event);
  }
  rd_kafka_queue_destroy(queue);
  return specific.empty() ? summary : specific;
}

}  // namespace

std::pair<int, std::string> KafkaPublisher::probe_cluster(int timeout_ms) {
  ensure_producer();
  const rd_kafka_metadata_t* md = nullptr;
  rd_kafka_resp_err_t err = rd_kafka_metadata(producer_->rk, 0, nullptr, &md, timeout_ms);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    std::string detail = probe_failure_detail(producer_->rk, 1000);
    return {0, rd_kafka_err2str(err) + (detail.empty() ? "" : " (" + detail + ")")};
  }
  int brokers = md->broker_cnt;
  rd_kafka_metadata_destroy(md);
  return {brokers, ""};
}

}  // namespace outbox::kafka
