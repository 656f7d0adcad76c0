// Which librdkafka errors a row can be blamed for, and which it cannot.
#pragma once

#include <librdkafka/rdkafka.h>

#include "core/event.h"

namespace outbox::kafka {

//! permanent: the message can never be produced (dead-letter now). row_retriable: specific
//! to the message's topic but possibly temporary (counts towards relay.max_attempts).
//! transient: the cluster or network; the row is not at fault and is simply retried.
core::FailureKind classify(rd_kafka_resp_err_t err);

}  // namespace outbox::kafka
