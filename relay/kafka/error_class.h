// Which librdkafka errors a row can be blamed for, and which it cannot.
#pragma once

#include <librdkafka/rdkafka.h>

#include "core/event.h"

namespace outbox::kafka {

//! What `err` proves (see core::FailureKind). `local`: librdkafka refused the message itself
//! at produce time (it looked at this message alone), rather than a broker answering for a
//! produce request that may have carried others.
core::FailureKind classify(rd_kafka_resp_err_t err, bool local = false);

}  // namespace outbox::kafka
