#include "kafka/error_class.h"

namespace outbox::kafka {

core::FailureKind classify(rd_kafka_resp_err_t err, bool local) {
  switch (err) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
      return local ? core::FailureKind::permanent : core::FailureKind::suspect;
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:  // invalid topic name: the row chose it
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
      return core::FailureKind::permanent;
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
      return core::FailureKind::topic_blocked;
    default:
      return core::FailureKind::transient;
  }
}

}  // namespace outbox::kafka
