#include "kafka/kafka_probe.h"

#include <memory>
#include <stdexcept>

#include "common/logging.h"
#include "kafka/client_conf.h"
#include "kafka/kafka_publisher.h"

namespace outbox::kafka {

namespace {

// The monitor logs reachability changes itself, once each: librdkafka's own reports of
// this handle's connections stay at debug.
void on_probe_log(const rd_kafka_t*, int, const char* facility, const char* text) {
  logging::get("kafka")->debug("health probe: {}: {}", facility, text);
}

void on_probe_error(rd_kafka_t*, int err, const char* reason, void*) {
  logging::get("kafka")->debug("health probe: {} ({})", reason,
                               rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err)));
}

}  // namespace

KafkaProbe::KafkaProbe(const config::KafkaConfig& config) {
  // The relay's connection settings (security, addresses), but a producer that never
  // produces: no idempotent producer id to acquire.
  Conf conf = client_conf(ClientKind::producer, config, default_properties(config),
                          {{"client.id", "outbox-relay-health"},
                           {"enable.gapless.guarantee", "false"},
                           {"enable.idempotence", "false"}});
  char err[512];
  rd_kafka_conf_set_log_cb(conf.get(), on_probe_log);
  rd_kafka_conf_set_error_cb(conf.get(), on_probe_error);
  rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf.get(), err, sizeof err);
  if (rk_ == nullptr)
    throw std::runtime_error(std::string("cannot create Kafka health probe: ") + err);
  conf.release();  // rd_kafka_new took it
}

KafkaProbe::~KafkaProbe() {
  if (rk_ != nullptr) rd_kafka_destroy(rk_);
}

KafkaProbe::Result KafkaProbe::probe(int timeout_ms) {
  const rd_kafka_metadata_t* md = nullptr;
  rd_kafka_resp_err_t e = rd_kafka_metadata(rk_, 0, nullptr, &md, timeout_ms);
  Result r;
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    r.error = rd_kafka_err2str(e);
    return r;
  }
  r.ok = md->broker_cnt > 0;
  r.brokers = md->broker_cnt;
  if (!r.ok) r.error = "no brokers in the cluster metadata";
  rd_kafka_metadata_destroy(md);
  return r;
}

}  // namespace outbox::kafka
