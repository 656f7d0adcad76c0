#include "kafka/kafka_publisher.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string_view>
#include <utility>

#include "common/crash_point.h"
#include "common/logging.h"
#include "common/secret_file.h"
#include "core/steady_clock.h"
#include "kafka/client_conf.h"
#include "kafka/error_class.h"
#include "kafka/tls_diagnostics.h"

namespace outbox::kafka {

namespace {

// A delivery report: the message's tag travels as msg_opaque, the publisher's list of
// completions as the producer's opaque. Served only from poll() (and the producer's
// destructor), on the worker thread.
void on_delivery(rd_kafka_t*, const rd_kafka_message_t* msg, void* opaque) {
  auto* inbox = static_cast<KafkaPublisher::Inbox*>(opaque);
  if (inbox == nullptr) return;
  core::Completion c;
  c.tag = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(msg->_private));
  if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    c.result.ok = true;
  } else {
    c.result.ok = false;
    c.result.kind = classify(msg->err);
    c.result.error = std::string("Kafka: ") + rd_kafka_err2str(msg->err);
  }
  inbox->done.push_back(std::move(c));
  if (inbox->outstanding > 0) --inbox->outstanding;
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

void on_error(rd_kafka_t*, int err, const char* reason, void* opaque) {
  if (err == RD_KAFKA_RESP_ERR__AUTHENTICATION && opaque != nullptr) {
    // Served by rd_kafka_poll on the caller's thread: poll() reads the files again after it.
    static_cast<KafkaPublisher::Inbox*>(opaque)->authentication_failed = true;
  }
  // Connection trouble is retried by librdkafka itself; say so at warn, not error.
  logging::get("kafka")->warn("{} ({})", reason,
                              rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err)));
}

}  // namespace

std::vector<std::pair<std::string, std::string>> default_properties(
    const config::KafkaConfig& config) {
  return {
      {"bootstrap.servers", config.bootstrap_servers},
      {"client.id", "outbox-relay"},
      {"enable.idempotence", "true"},
      {"acks", "all"},
      // 1 ms, not librdkafka's 5: at low rates the linger is most of a message's way to the
      // consumer (the bench's per-stage split: produce -> ack 6.3 of 9.4 ms p50 at 1,000
      // events/s); at high rates batches fill while earlier requests are in flight anyway
      // (5 in flight with idempotence), so the drain is not slower.
      {"linger.ms", "1"},
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

const char* ProducerStateTraits::name(ProducerState s) {
  switch (s) {
    case ProducerState::none:
      return "none";
    case ProducerState::ready:
      return "ready";
    case ProducerState::fatal:
      return "fatal";
    case ProducerState::fatal_purged:
      return "fatal_purged";
  }
  return "?";
}

bool ProducerStateTraits::allowed(ProducerState from, ProducerState to) {
  using P = ProducerState;
  switch (from) {
    case P::none:  // created
      return to == P::ready;
    case P::ready:  // a fatal error
      return to == P::fatal;
    case P::fatal:  // the drain's deadline passed; every message answered: destroyed
      return to == P::fatal_purged || to == P::none;
    case P::fatal_purged:
      return to == P::none;
  }
  return false;
}

namespace {
core::Clock& default_clock() {
  static core::SteadyClock clock;
  return clock;
}
}  // namespace

struct KafkaPublisher::Producer {
  rd_kafka_t* rk = nullptr;
  ~Producer() {
    if (rk == nullptr) return;
    // Every message gets its report (purged ones included) before the messages may go.
    rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_flush(rk, 1000);
    rd_kafka_destroy(rk);
  }
};

KafkaPublisher::KafkaPublisher(config::KafkaConfig config, core::Clock* clock)
    : config_(std::move(config)), clock_(clock != nullptr ? *clock : default_clock()) {
  ensure_producer();
}

KafkaPublisher::~KafkaPublisher() = default;

void KafkaPublisher::ensure_producer() {
  if (producer_) return;
  // A new producer (at start, after a fatal error) takes every secret file as it is now.
  reread_secret_files();
  Conf conf = client_conf(ClientKind::producer, config_, default_properties(config_), {});
  char err[512];
  rd_kafka_conf_set_dr_msg_cb(conf.get(), on_delivery);
  rd_kafka_conf_set_log_cb(conf.get(), on_log);
  rd_kafka_conf_set_error_cb(conf.get(), on_error);
  install_certificate_diagnostics(conf.get());
  rd_kafka_conf_set_opaque(conf.get(), &inbox_);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf.get(), err, sizeof err);
  if (rk == nullptr) throw std::runtime_error(std::string("cannot create Kafka producer: ") + err);
  conf.release();  // rd_kafka_new took it
  producer_ = std::make_unique<Producer>();
  producer_->rk = rk;
  state_.set(ProducerState::ready, "created");
}

void KafkaPublisher::enter_fatal(const std::string& reason) {
  // Idempotence state lost: re-create the producer (librdkafka's INTRODUCTION.md), once
  // every message of this one was answered. Only the messages not sent yet are purged
  // (transient, sent again later; librdkafka purges them too): those already sent get
  // their real report. Purging them as well reported as failed messages the broker had
  // written, and the next producer (a new producer id, so no deduplication by the broker)
  // wrote them again: hundreds of duplicates for one bad row.
  logging::get("kafka")->error(
      "fatal producer error, re-creating the producer once the messages already sent are "
      "answered: {}",
      reason);
  state_.set(ProducerState::fatal, reason);
  fatal_deadline_ = clock_.now() + kFatalDrain;
  rd_kafka_purge(producer_->rk, RD_KAFKA_PURGE_F_QUEUE);
}

void KafkaPublisher::fail_now(std::uint64_t tag, core::FailureKind kind, std::string error) {
  core::Completion c;
  c.tag = tag;
  c.result.ok = false;
  c.result.kind = kind;
  c.result.error = std::move(error);
  inbox_.done.push_back(std::move(c));
}

void KafkaPublisher::send(const core::Message& m, std::uint64_t tag) {
  if (state_.is(ProducerState::fatal) || state_.is(ProducerState::fatal_purged)) {
    // the producer is re-created once its last message was answered
    fail_now(tag, core::FailureKind::transient, "Kafka: not sent (the producer failed)");
    return;
  }
  try {
    ensure_producer();
  } catch (const std::exception& e) {
    fail_now(tag, core::FailureKind::transient, e.what());
    return;
  }
  rd_kafka_t* rk = producer_->rk;
  rd_kafka_headers_t* headers = rd_kafka_headers_new(m.headers.size());
  for (const auto& [name, value] : m.headers) {
    rd_kafka_header_add(headers, name.data(), static_cast<ssize_t>(name.size()), value.data(),
                        static_cast<ssize_t>(value.size()));
  }
  // No copy of the payload (flags 0): librdkafka points into `m`, which the caller keeps
  // until poll() returned its completion. The RD_KAFKA_V_* macros cast their arguments
  // unparenthesised: pass plain variables.
  void* key = m.key ? const_cast<char*>(m.key->data()) : nullptr;
  std::size_t key_len = m.key ? m.key->size() : 0;
  void* value = m.payload ? const_cast<char*>(m.payload->data()) : nullptr;
  std::size_t value_len = m.payload ? m.payload->size() : 0;
  void* opaque = reinterpret_cast<void*>(static_cast<std::uintptr_t>(tag));
  rd_kafka_resp_err_t err;
  for (;;) {
    err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(m.topic.c_str()), RD_KAFKA_V_KEY(key, key_len),
                            RD_KAFKA_V_VALUE(value, value_len), RD_KAFKA_V_HEADERS(headers),
                            RD_KAFKA_V_MSGFLAGS(0), RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
    if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) break;
    // The local queue is full (a window above queue.buffering.max.messages): serve reports
    // to make room; they are returned by the next poll().
    rd_kafka_poll(rk, 100);
  }
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    ++inbox_.outstanding;  // headers now belong to librdkafka
    common::crash_point("after_produce");
    return;
  }
  rd_kafka_headers_destroy(headers);
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    char fatal[512];
    rd_kafka_resp_err_t code = rd_kafka_fatal_error(rk, fatal, sizeof fatal);
    enter_fatal(code != RD_KAFKA_RESP_ERR_NO_ERROR ? fatal : rd_kafka_err2str(err));
  }
  fail_now(tag, classify(err, /*local=*/true), std::string("Kafka: ") + rd_kafka_err2str(err));
}

std::vector<core::Completion> KafkaPublisher::poll(std::chrono::milliseconds timeout) {
  if (producer_) {
    rd_kafka_t* rk = producer_->rk;
    int wait =
        (inbox_.done.empty() && inbox_.outstanding > 0) ? static_cast<int>(timeout.count()) : 0;
    rd_kafka_poll(rk, wait);
    if (inbox_.authentication_failed) {
      inbox_.authentication_failed = false;
      refresh_sasl_credentials(rk);
    }
    char fatal[512];
    if (state_.is(ProducerState::ready) &&
        rd_kafka_fatal_error(rk, fatal, sizeof fatal) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      enter_fatal(fatal);
    }
    if (state_.is(ProducerState::fatal) && inbox_.outstanding > 0 &&
        clock_.now() >= fatal_deadline_) {
      // Liveness only: messages still unanswered after this long are purged (and may come
      // again as duplicates, never as losses).
      rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
      state_.set(ProducerState::fatal_purged, "the fatal drain's deadline passed");
    }
    if ((state_.is(ProducerState::fatal) || state_.is(ProducerState::fatal_purged)) &&
        inbox_.outstanding == 0) {
      producer_.reset();
      state_.set(ProducerState::none, "every message of the failed producer was answered");
    }
  }
  return std::exchange(inbox_.done, {});
}

std::vector<std::string> KafkaPublisher::reread_secret_files() {
  std::vector<std::string> changed;
  for (const auto& [name, path] : config_.secret_files) {
    std::string why;
    std::optional<std::string> value = common::read_secret_file(path, &why);
    if (!value) {
      logging::get("kafka")->warn(
          "kafka.secret_files.{}: cannot read {} ({}); keeping the value "
          "read before",
          name, path, why);
      continue;
    }
    for (auto& [property, current] : config_.properties) {
      if (property != name || current == *value) continue;
      current = *value;
      changed.push_back(name);
    }
  }
  return changed;
}

void KafkaPublisher::refresh_sasl_credentials(rd_kafka_t* rk) {
  auto log = logging::get("kafka");
  std::vector<std::string> changed = reread_secret_files();
  bool sasl = std::any_of(changed.begin(), changed.end(), [](const std::string& n) {
    return n == "sasl.username" || n == "sasl.password";
  });
  if (!sasl) {
    if (config_.secret_files.count("sasl.password") ||
        config_.secret_files.count("sasl.username")) {
      log->warn(
          "Kafka refused the credentials and their files hold the same ones: nothing new "
          "to try until a file changes");
    }
    return;
  }
  std::string username, password;
  for (const auto& [name, value] : config_.properties) {
    if (name == "sasl.username") username = value;
    if (name == "sasl.password") password = value;
  }
  if (rd_kafka_error_t* error =
          rd_kafka_sasl_set_credentials(rk, username.c_str(), password.c_str())) {
    log->warn(
        "kafka.secret_files: new SASL credentials read, but librdkafka cannot take them "
        "without a restart ({}): they apply to PLAIN and SCRAM only",
        rd_kafka_error_string(error));
    rd_kafka_error_destroy(error);
    return;
  }
  log->info(
      "kafka.secret_files: Kafka refused the credentials and a file holds new ones; the "
      "next authentication uses them");
}

void KafkaPublisher::purge() {
  if (producer_) rd_kafka_purge(producer_->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
}

std::vector<core::DeliveryResult> KafkaPublisher::publish(
    const std::vector<core::Message>& messages, const std::function<bool()>& give_up) {
  std::vector<core::DeliveryResult> results(messages.size());
  std::vector<bool> answered(messages.size(), false);
  std::size_t left = messages.size();
  for (std::size_t i = 0; i < messages.size(); ++i) send(messages[i], i);
  bool purged = false;
  while (left > 0) {
    if (!purged && give_up()) {
      purge();
      purged = true;
    }
    for (auto& c : poll(std::chrono::milliseconds(100))) {
      if (c.tag >= messages.size() || answered[c.tag]) continue;
      answered[c.tag] = true;
      results[c.tag] = std::move(c.result);
      --left;
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
  rd_kafka_resp_err_t err = rd_kafka_metadata(producer_->rk, 0, rkt, &md, kTopicAskWaitMs);
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

rd_kafka_t* KafkaPublisher::handle() {
  ensure_producer();
  return producer_->rk;
}

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
