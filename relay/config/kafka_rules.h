// The relay's own rules on librdkafka properties (the table: property_rules() in key.h).
#pragma once

#include <string>

namespace outbox::config {

class ParseContext;

//! Checks one librdkafka property given at `key` (kafka.properties.NAME or
//! kafka.secret_files.NAME) on `line`: the relay's rules, then the injected librdkafka check
//! (ParseOptions::kafka_check), whose message never shows a value that may be a secret.
void check_kafka_property(ParseContext& ctx, const std::string& key, const std::string& name,
                          const std::string& value, int line);

}  // namespace outbox::config
