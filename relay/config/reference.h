// The configuration's documents, rendered from the key table (keys.cc): the example file and
// the reference page. Their committed copies are checked against these by a unit test.
#pragma once

#include <string>

namespace outbox::config {

//! relay/config/example.yaml: every key with its default (or its example value), described.
std::string example_yaml();
//! docs/reference/configuration.md: every key, the rules between keys, the refused Kafka
//! properties.
std::string reference_markdown();

//! Where the two live, relative to the repository's root.
inline constexpr const char* kExamplePath = "relay/config/example.yaml";
inline constexpr const char* kReferencePath = "docs/reference/configuration.md";

}  // namespace outbox::config
