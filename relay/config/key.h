// The configuration's keys, declared once each (keys.cc), and the rules between keys
// (rules.cc). Everything else is derived from these tables: the parsing into Config, the
// unknown-key errors, relay/config/example.yaml and docs/reference/configuration.md.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "config/config.h"

namespace YAML {
class Node;
}

namespace outbox::config {

class ParseContext;

//! One configuration key: what the relay knows about it. Built by the helpers of
//! key_builders.h, which bind it to its field of Config: the field's type decides how the
//! value is read, and the field's initializer is the default.
struct Key {
  std::string path;         //!< dotted, e.g. "source.polling.batch_size"
  std::string type;         //!< as the reference shows it: "integer (milliseconds)", ...
  std::string allowed;      //!< the values accepted, e.g. "1 to 100000"; empty: any
  std::string description;  //!< for the reference and the comments of example.yaml
  bool required = false;
  //! A mapping of names to values (kafka.properties): its entries are not keys.
  bool mapping = false;
  //! example.yaml shows this value instead of the default (the dsn, a sample property).
  std::string example;
  //! example.yaml shows the key commented out (a key without a default, set for a reason).
  bool commented = false;
  //! Accepted so that older files load, with a warning saying this; no effect.
  std::string deprecated;
  //! Reads the present, non-null value: checks it, stores it in ctx.config, or reports an
  //! error naming the key and its line.
  std::function<void(ParseContext& ctx, const YAML::Node& value)> read;
  //! The default as YAML text, from a default-constructed Config ("" when there is none).
  std::function<std::string(const Config& defaults)> show;
};

//! A mapping of keys (postgres, source.polling, ...), shown as a heading.
struct Section {
  std::string path;
  std::string description;
  std::string see = {};  //!< the reference's link to the guide, Markdown
};

//! A check between keys, run after every key was read (with defaults for the keys absent).
struct Rule {
  std::vector<std::string> keys;  //!< the keys it concerns (the first: where it reports)
  std::string description;        //!< for the reference
  std::function<void(ParseContext& ctx)> check;
};

//! A librdkafka property whose value the relay's promises depend on (kafka_rules.cc).
struct PropertyRule {
  std::vector<std::string> names;  //!< the property and its aliases
  std::string allowed;             //!< for the reference: what may be given
  //! True when `value` is refused (with `config` as read: the kafka.allow_* keys).
  std::function<bool(const std::string& value, const Config& config)> refused;
  std::string message;  //!< the error, after the key
};

//! Every key, in the order of example.yaml and the reference.
const std::vector<Key>& keys();
//! Every section with a description, in the same order.
const std::vector<Section>& sections();
//! The rules between keys, in the order they are checked.
const std::vector<Rule>& rules();
//! The relay's own rules on kafka.properties and kafka.secret_files.
const std::vector<PropertyRule>& property_rules();

//! The key declared with this dotted path, or nullptr.
const Key* find_key(const std::string& path);

}  // namespace outbox::config
