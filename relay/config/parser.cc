// parse_config: walks the YAML document against the key table (keys.cc), reads each key,
// then checks the rules between keys (rules.cc). Never stops at the first problem.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <map>
#include <set>

#include "config/config.h"
#include "config/key.h"
#include "config/key_builders.h"
#include "config/parse_context.h"
#include "config/yaml_text.h"

namespace outbox::config {

std::string ConfigError::to_string() const {
  std::string where = line > 0 ? "line " + std::to_string(line) : "";
  if (line > 0 && column > 0) where += ", column " + std::to_string(column);
  if (!where.empty()) where += ": ";
  return where + (key.empty() ? "" : key + ": ") + message;
}

std::optional<std::string> substitute_env(const std::string& value, const EnvLookup& env,
                                          std::string* error) {
  std::string out;
  std::size_t pos = 0;
  while (pos < value.size()) {
    std::size_t start = value.find("${", pos);
    if (start == std::string::npos) {
      out.append(value, pos);
      break;
    }
    out.append(value, pos, start - pos);
    std::size_t end = value.find('}', start + 2);
    if (end == std::string::npos) {
      *error = "unterminated ${ in \"" + value + "\"";
      return std::nullopt;
    }
    std::string inner = value.substr(start + 2, end - start - 2);
    std::optional<std::string> fallback;
    if (auto sep = inner.find(":-"); sep != std::string::npos) {
      fallback = inner.substr(sep + 2);
      inner.resize(sep);
    }
    bool valid_name = !inner.empty() && std::all_of(inner.begin(), inner.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
    });
    if (!valid_name) {
      *error = "invalid environment variable name \"" + inner + "\"";
      return std::nullopt;
    }
    std::optional<std::string> found = env(inner);
    if (!found || (found->empty() && fallback)) found = fallback;
    if (!found) {
      *error = "environment variable " + inner + " is not set";
      return std::nullopt;
    }
    out += *found;
    pos = end + 1;
  }
  return out;
}

std::optional<std::string> ParseContext::substituted(const std::string& raw, const std::string& key,
                                                     int line) {
  EnvLookup env = options_.env;
  if (!env) {
    env = [](const std::string& name) -> std::optional<std::string> {
      const char* v = std::getenv(name.c_str());
      return v ? std::optional<std::string>(v) : std::nullopt;
    };
  }
  std::string message;
  auto value = substitute_env(raw, env, &message);
  if (!value) error(key, line, message);
  return value;
}

std::optional<std::string> ParseContext::read_secret(const std::string& path,
                                                     const std::string& key, int line) {
  auto secret = options_.read_file ? options_.read_file(path) : read_whole_file(path);
  if (!secret) {
    error(key, line, "cannot read file " + path);
    return std::nullopt;
  }
  while (!secret->empty() && (secret->back() == '\n' || secret->back() == '\r')) {
    secret->pop_back();
  }
  return secret;
}

int ParseContext::line(const std::string& path) const {
  auto it = lines_.find(path);
  return it == lines_.end() ? 0 : it->second;
}

const std::string* ParseContext::value(const std::string& path) const {
  auto it = values_.find(path);
  return it == values_.end() ? nullptr : &it->second;
}

const std::vector<MapEntry>& ParseContext::entries(const std::string& path) const {
  static const std::vector<MapEntry> kNone;
  auto it = entries_.find(path);
  return it == entries_.end() ? kNone : it->second;
}

namespace build {

std::optional<std::string> scalar(ParseContext& ctx, const std::string& path,
                                  const YAML::Node& node) {
  if (!node.IsScalar()) {
    ctx.error(path, line_of(node), "must be a single value, not a list or mapping");
    return std::nullopt;
  }
  auto value = ctx.substituted(node.Scalar(), path, line_of(node));
  if (value) ctx.set_value(path, *value);
  return value;
}

std::optional<long> integer(ParseContext& ctx, const std::string& key, int line,
                            const std::string& text, Bounds bounds) {
  long parsed = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), parsed);
  if (ec != std::errc() || ptr != text.data() + text.size()) {
    ctx.error(key, line, "must be an integer, got \"" + text + "\"");
    return std::nullopt;
  }
  if (parsed < bounds.min || parsed > bounds.max) {
    ctx.error(key, line,
              "must be between " + std::to_string(bounds.min) + " and " +
                  std::to_string(bounds.max) + ", got " + text);
    return std::nullopt;
  }
  return parsed;
}

std::string yaml_quoted(const std::string& text) {
  static const std::set<std::string> kWords = {"true", "false", "yes", "no", "on",
                                               "off",  "null",  "~",   "y",  "n"};
  bool plain = !text.empty() && text.front() != ' ' && text.back() != ' ' &&
               text.find_first_of(":#{}[],&*!|>'\"%@`") == std::string::npos &&
               !kWords.count(text) && !std::all_of(text.begin(), text.end(), [](char c) {
                 return std::isdigit(static_cast<unsigned char>(c));
               });
  if (plain) return text;
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::vector<MapEntry> read_mapping(ParseContext& ctx, const std::string& path,
                                   const YAML::Node& node, const Check& check) {
  std::vector<MapEntry> out;
  if (!node.IsMap()) {
    ctx.error(path, line_of(node), "must be a mapping of names to values");
    return out;
  }
  for (auto it = node.begin(); it != node.end(); ++it) {
    std::string entry = path + "." + it->first.Scalar();
    int line = line_of(it->second);
    if (!it->second.IsScalar()) {
      ctx.error(entry, line, "must be a single value");
      continue;
    }
    if (auto v = ctx.substituted(it->second.Scalar(), entry, line)) {
      if (check) {
        if (auto problem = check(*v)) ctx.error(entry, line, *problem);
      }
      out.push_back({it->first.Scalar(), *v, line});
    }
  }
  return out;
}

std::string show_mapping(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::string out;
  for (const auto& [name, value] : entries) {
    out += (out.empty() ? "{" : ", ") + name + ": " + yaml_quoted(value);
  }
  return out.empty() ? "{}" : out + "}";
}

}  // namespace build

namespace {

using build::line_of;

std::string parent_of(const std::string& path) {
  auto dot = path.rfind('.');
  return dot == std::string::npos ? "" : path.substr(0, dot);
}

std::string join(const std::string& path, const std::string& name) {
  return path.empty() ? name : path + "." + name;
}

// What may appear where, derived from the key table: the names under each section.
struct Schema {
  std::map<std::string, std::vector<std::string>> children;  // section ("": the file) -> names
  std::map<std::string, const Key*> keys;

  Schema() {
    for (const Key& key : config::keys()) {
      keys[key.path] = &key;
      std::string section;
      for (std::size_t start = 0;;) {
        std::size_t dot = key.path.find('.', start);
        std::string name = key.path.substr(start, dot == std::string::npos ? dot : dot - start);
        auto& names = children[section];
        if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
        if (dot == std::string::npos) break;
        section = join(section, name);
        start = dot + 1;
      }
    }
  }

  bool is_section(const std::string& path) const { return children.count(path) > 0; }
};

const Schema& schema() {
  static const Schema s;
  return s;
}

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// "unknown key (did you mean X? known here: ...)": X is a name of this section a typo or
// two away, else the keys or sections of the same name elsewhere (batch_size under source:
// source.polling.batch_size or retention.batch_size).
std::string unknown_key_message(const std::string& section, const std::string& name) {
  const auto& known = schema().children.at(section);
  std::string suggestion;
  std::size_t best = std::max<std::size_t>(1, std::min<std::size_t>(2, name.size() / 3)) + 1;
  for (const std::string& k : known) {
    if (std::size_t d = edit_distance(name, k); d < best) {
      best = d;
      suggestion = k;
    }
  }
  if (suggestion.empty()) {
    std::vector<std::string> elsewhere;  // in the order of the key table
    for (const Key& key : keys()) {
      for (std::size_t at = key.path.find(name); at != std::string::npos;
           at = key.path.find(name, at + 1)) {
        std::size_t end = at + name.size();
        bool whole = (at == 0 || key.path[at - 1] == '.') &&
                     (end == key.path.size() || key.path[end] == '.');
        std::string path = key.path.substr(0, end);
        if (whole && parent_of(path) != section &&
            std::find(elsewhere.begin(), elsewhere.end(), path) == elsewhere.end()) {
          elsewhere.push_back(path);
        }
      }
    }
    for (const std::string& path : elsewhere) {
      suggestion += (suggestion.empty() ? "" : " or ") + path;
    }
  }
  std::string list;
  for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
  return "unknown key (" + (suggestion.empty() ? "" : "did you mean " + suggestion + "? ") +
         "known here: " + list + ")";
}

// Walks one section of the document: records where each key and section is, reports the
// names that are neither, and collects the keys' value nodes (the first of a repeated name).
void walk(ParseContext& ctx, const YAML::Node& node, const std::string& path,
          std::map<std::string, YAML::Node>& found, std::set<std::string>& bad_sections) {
  if (!node.IsMap()) {
    ctx.error(path, line_of(node),
              path.empty() ? "the file must be a mapping of keys (postgres:, kafka:, ...)"
                           : "must be a mapping of keys");
    bad_sections.insert(path);
    return;
  }
  ctx.set_line(path, line_of(node));
  for (auto it = node.begin(); it != node.end(); ++it) {
    std::string name = it->first.Scalar();
    std::string full = join(path, name);
    YAML::Node value = it->second;
    if (schema().keys.count(full)) {
      if (found.count(full) || value.IsNull()) continue;
      ctx.set_line(full, line_of(value));
      found.emplace(full, value);
    } else if (schema().is_section(full)) {
      if (!value.IsNull()) walk(ctx, value, full, found, bad_sections);
    } else {
      ctx.error(full, line_of(it->first), unknown_key_message(path, name));
    }
  }
}

bool under_bad_section(const std::string& path, const std::set<std::string>& bad_sections) {
  for (std::string p = parent_of(path);; p = parent_of(p)) {
    if (bad_sections.count(p)) return true;
    if (p.empty()) return false;
  }
}

void read_document(ParseContext& ctx, const YAML::Node& root) {
  std::map<std::string, YAML::Node> found;
  std::set<std::string> bad_sections;
  if (root.IsDefined() && !root.IsNull()) walk(ctx, root, "", found, bad_sections);
  for (const Key& key : keys()) {
    auto it = found.find(key.path);
    if (it != found.end()) {
      ctx.set_present(key.path);
      key.read(ctx, it->second);
      if (!key.deprecated.empty()) {
        ctx.warnings.push_back(key.path + " (line " + std::to_string(ctx.line(key.path)) + ") " +
                               key.deprecated);
      }
    } else if (key.required && !under_bad_section(key.path, bad_sections)) {
      ctx.error(key.path, ctx.line(parent_of(key.path)), "is required");
    }
  }
  for (const Rule& rule : rules()) rule.check(ctx);
}

}  // namespace

ParseResult parse_config(std::string_view yaml_text, const ParseOptions& options) {
  ParseResult result;
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    result.errors.push_back(syntax_error(yaml_text, e));
    return result;
  }
  ParseContext ctx(options);
  read_document(ctx, root);
  result.errors = std::move(ctx.errors);
  result.warnings = std::move(ctx.warnings);
  std::stable_sort(result.errors.begin(), result.errors.end(),
                   [](const ConfigError& a, const ConfigError& b) { return a.line < b.line; });
  if (result.errors.empty()) result.config = std::move(ctx.config);
  return result;
}

ParseResult load_config_file(const std::string& path, const ParseOptions& options) {
  std::string why;
  auto text = read_file_or_error(path, &why);
  if (!text) {
    ParseResult result;
    result.errors.push_back({"--config", 0, "cannot read " + path + ": " + why});
    return result;
  }
  ParseResult result = parse_config(*text, options);
  for (auto& e : result.errors) {
    if (e.key.empty() && e.message.rfind("invalid YAML: ", 0) == 0) {
      e.message.insert(std::string_view("invalid YAML").size(), " in " + path);
    }
  }
  return result;
}

}  // namespace outbox::config
