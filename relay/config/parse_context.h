// The state of one parse: the config being filled, every error and warning so far, and where
// each key was found. Lives for one parse_config call, on its thread.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "config/config.h"

namespace outbox::config {

//! One entry of a mapping key (kafka.properties.linger.ms), after ${VAR} substitution.
struct MapEntry {
  std::string name;
  std::string value;
  int line = 0;
};

class ParseContext {
 public:
  explicit ParseContext(const ParseOptions& options) : options_(options) {}

  Config config;
  std::vector<ConfigError> errors;
  std::vector<std::string> warnings;

  void error(const std::string& key, int line, std::string message) {
    errors.push_back({key, line, std::move(message)});
  }

  //! `raw` with ${VAR} replaced; nullopt (and an error naming key and line) when it cannot be.
  std::optional<std::string> substituted(const std::string& raw, const std::string& key, int line);
  //! A secret file's content without its trailing newline; nullopt (and an error naming key
  //! and line) when it cannot be read.
  std::optional<std::string> read_secret(const std::string& path, const std::string& key, int line);

  //! The 1-based line of the key or section at `path` when the file has it, else 0.
  int line(const std::string& path) const;
  //! True when the file gives a value (not null) for the key at `path`.
  bool present(const std::string& path) const { return present_.count(path) > 0; }
  //! The scalar value the file gives for `path` (after substitution), or nullptr.
  const std::string* value(const std::string& path) const;
  //! The entries of the mapping key at `path` the file gives, in file order.
  const std::vector<MapEntry>& entries(const std::string& path) const;

  const ParseOptions& options() const { return options_; }

  // Filled while the document is walked (parser.cc) and the keys read.
  void set_line(const std::string& path, int line) { lines_[path] = line; }
  void set_present(const std::string& path) { present_.insert(path); }
  void set_value(const std::string& path, std::string value) { values_[path] = std::move(value); }
  void set_entries(const std::string& path, std::vector<MapEntry> entries) {
    entries_[path] = std::move(entries);
  }

 private:
  const ParseOptions& options_;
  std::map<std::string, int> lines_;
  std::set<std::string> present_;
  std::map<std::string, std::string> values_;
  std::map<std::string, std::vector<MapEntry>> entries_;
};

}  // namespace outbox::config
