#include "config/yaml_text.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <tuple>
#include <vector>

namespace outbox::config {

namespace {

// The 1-based line and column of byte `pos` of `text` (the last line when pos is past the end).
std::pair<int, int> line_and_column(std::string_view text, std::size_t pos) {
  pos = std::min(pos, text.size());
  if (pos == text.size() && pos > 0 && text[pos - 1] == '\n') --pos;  // not past the last line
  auto line_start = pos == 0 ? std::string_view::npos : text.rfind('\n', pos - 1);
  line_start = line_start == std::string_view::npos ? 0 : line_start + 1;
  int line = static_cast<int>(std::count(text.begin(), text.begin() + line_start, '\n')) + 1;
  return {line, static_cast<int>(pos - line_start) + 1};
}

// The [ or { still open at byte `end` (outside quotes and comments), or npos. yaml-cpp
// reports an unclosed flow collection where it gave up looking for its end, which can be
// many lines later or past the end of the file; the place to fix is the bracket.
std::size_t unclosed_bracket(std::string_view text, std::size_t end) {
  std::vector<std::size_t> open;
  end = std::min(end, text.size());
  for (std::size_t i = 0; i < end; ++i) {
    char c = text[i];
    bool token_start =
        i == 0 || std::string_view(" \t\n[{,:").find(text[i - 1]) != std::string_view::npos;
    if (c == '#' && (i == 0 || text[i - 1] == ' ' || text[i - 1] == '\t' || text[i - 1] == '\n')) {
      while (i < end && text[i] != '\n') ++i;
    } else if ((c == '"' || c == '\'') && token_start) {
      for (++i; i < end && text[i] != c; ++i) {
        if (c == '"' && text[i] == '\\') ++i;  // \" inside "..."; '' inside '...' is two quotes
      }
    } else if (c == '[' || c == '{') {
      open.push_back(i);
    } else if ((c == ']' || c == '}') && !open.empty()) {
      open.pop_back();
    }
  }
  return open.empty() ? std::string_view::npos : open.back();
}

}  // namespace

std::optional<std::string> read_file_or_error(const std::string& path, std::string* error) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    *error = "it is a directory, not a YAML file";
    return std::nullopt;
  }
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"),
                                                       &std::fclose);
  if (!file) {
    *error = std::strerror(errno);
    return std::nullopt;
  }
  std::string text;
  char buffer[8192];
  while (std::size_t n = std::fread(buffer, 1, sizeof buffer, file.get())) text.append(buffer, n);
  if (std::ferror(file.get())) {
    *error = std::strerror(errno);
    return std::nullopt;
  }
  return text;
}

std::optional<std::string> read_whole_file(const std::string& path) {
  std::string ignored;
  return read_file_or_error(path, &ignored);
}

ConfigError syntax_error(std::string_view text, const YAML::Exception& e) {
  ConfigError error{"", 0, "invalid YAML: " + e.msg};
  if (e.mark.is_null()) return error;
  std::size_t pos = static_cast<std::size_t>(e.mark.pos);
  bool unclosed_flow =
      e.msg == YAML::ErrorMsg::END_OF_SEQ_FLOW || e.msg == YAML::ErrorMsg::END_OF_MAP_FLOW;
  if (std::size_t bracket = unclosed_flow ? unclosed_bracket(text, pos) : std::string_view::npos;
      bracket != std::string_view::npos) {
    error.message = "invalid YAML: this " + std::string(1, text[bracket]) +
                    " is never closed (yaml-cpp: " + e.msg + ")";
    pos = bracket;
  }
  std::tie(error.line, error.column) = line_and_column(text, pos);
  return error;
}

}  // namespace outbox::config
