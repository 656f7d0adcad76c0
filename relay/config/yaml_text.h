// The configuration file as text: reading it, and placing a YAML syntax error where an
// editor shows it.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "config/config.h"

namespace YAML {
class Exception;
}

namespace outbox::config {

//! The file's bytes, or nullopt with the reason in *error (an ifstream "opens" a directory
//! and reads nothing from it, which would look like an empty config).
std::optional<std::string> read_file_or_error(const std::string& path, std::string* error);
//! The file's bytes, or nullopt: the default FileReader of secret files.
std::optional<std::string> read_whole_file(const std::string& path);
//! A yaml-cpp syntax error in `text` as a ConfigError: 1-based line and column, yaml-cpp's
//! message; an unclosed [ or { is placed where it opens.
ConfigError syntax_error(std::string_view text, const YAML::Exception& e);

}  // namespace outbox::config
