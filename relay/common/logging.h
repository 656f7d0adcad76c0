// One named spdlog logger per module, all writing to stderr in text or JSON lines.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <string_view>

namespace outbox::logging {

enum class Format { text, json };

//! Sets level and format for every logger, present and future. Call once at start.
void setup(const std::string& level, Format format);

//! The logger of module `name` ("core", "pg", "kafka", "cli"), created on first use.
std::shared_ptr<spdlog::logger> get(const std::string& name);

//! `text` on one line: each run of white space holding a line break becomes one space, and
//! trailing breaks go (libpq's messages end with one). Text log lines use it.
std::string fold_lines(std::string_view text);

//! `text` with control characters and quotes escaped for a JSON string.
std::string json_escape(const std::string& text);

}  // namespace outbox::logging
