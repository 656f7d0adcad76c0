#include "config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <sstream>

namespace outbox::config {

std::string ConfigError::to_string() const {
  std::string where = line > 0 ? "line " + std::to_string(line) + ": " : "";
  return where + key + ": " + message;
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

namespace {

int line_of(const YAML::Node& node) { return node.IsDefined() ? node.Mark().line + 1 : 0; }

std::string join(const std::string& path, const std::string& name) {
  return path.empty() ? name : path + "." + name;
}

// Walks the document, collecting every error instead of stopping at the first.
class Reader {
 public:
  explicit Reader(const ParseOptions& options) : options_(options) {}

  std::vector<ConfigError> errors;
  std::vector<std::string> warnings;

  void error(const std::string& key, int line, std::string message) {
    errors.push_back({key, line, std::move(message)});
  }

  // True when `node` is a map (or absent); reports keys not in `known`.
  bool section(const YAML::Node& node, const std::string& path,
               std::initializer_list<std::string_view> known) {
    if (!node.IsDefined() || node.IsNull()) return false;
    if (!node.IsMap()) {
      error(path.empty() ? "(document)" : path, line_of(node), "must be a mapping of keys");
      return false;
    }
    for (auto it = node.begin(); it != node.end(); ++it) {
      std::string name = it->first.Scalar();
      if (std::find(known.begin(), known.end(), name) == known.end()) {
        std::string list;
        for (auto k : known) list += (list.empty() ? "" : ", ") + std::string(k);
        error(join(path, name), line_of(it->first), "unknown key (known here: " + list + ")");
      }
    }
    return true;
  }

  // The scalar at parent[name] after ${VAR} substitution; nullopt when absent or invalid.
  std::optional<std::string> scalar(const YAML::Node& parent, const std::string& path,
                                    const char* name) {
    if (!parent.IsDefined() || !parent.IsMap()) return std::nullopt;
    YAML::Node node = parent[name];
    if (!node.IsDefined() || node.IsNull()) return std::nullopt;
    std::string key = join(path, name);
    if (!node.IsScalar()) {
      error(key, line_of(node), "must be a single value, not a list or mapping");
      return std::nullopt;
    }
    return substituted(node.Scalar(), key, line_of(node));
  }

  std::optional<std::string> substituted(const std::string& raw, const std::string& key, int line) {
    std::string message;
    auto value = substitute_env(raw, env(), &message);
    if (!value) error(key, line, message);
    return value;
  }

  void read_string(const YAML::Node& parent, const std::string& path, const char* name,
                   std::string& out, bool required = false) {
    if (auto v = scalar(parent, path, name)) {
      if (v->empty() && required) {
        error(join(path, name), line_of(parent[name]), "must not be empty");
      }
      out = *v;
    } else if (required && !has(parent, name)) {
      error(join(path, name), line_of(parent), "is required");
    }
  }

  void read_int(const YAML::Node& parent, const std::string& path, const char* name, int& out,
                long min, long max) {
    auto v = scalar(parent, path, name);
    if (!v) return;
    long parsed = 0;
    auto [ptr, ec] = std::from_chars(v->data(), v->data() + v->size(), parsed);
    std::string key = join(path, name);
    int line = line_of(parent[name]);
    if (ec != std::errc() || ptr != v->data() + v->size()) {
      error(key, line, "must be an integer, got \"" + *v + "\"");
    } else if (parsed < min || parsed > max) {
      error(
          key, line,
          "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " + *v);
    } else {
      out = static_cast<int>(parsed);
    }
  }

  void read_ms(const YAML::Node& parent, const std::string& path, const char* name,
               milliseconds& out, long min, long max) {
    int value = static_cast<int>(out.count());
    read_int(parent, path, name, value, min, max);
    out = milliseconds(value);
  }

  void read_bool(const YAML::Node& parent, const std::string& path, const char* name, bool& out) {
    read_enum(parent, path, name, out, {{"true", true}, {"false", false}});
  }

  template <typename Enum>
  void read_enum(const YAML::Node& parent, const std::string& path, const char* name, Enum& out,
                 std::initializer_list<std::pair<std::string_view, Enum>> choices) {
    auto v = scalar(parent, path, name);
    if (!v) return;
    std::string list;
    for (const auto& [label, value] : choices) {
      if (*v == label) {
        out = value;
        return;
      }
      list += (list.empty() ? "" : ", ") + std::string(label);
    }
    error(join(path, name), line_of(parent[name]),
          "must be one of " + list + ", got \"" + *v + "\"");
  }

  // A mapping of string to string, e.g. kafka.properties.
  std::vector<std::pair<std::string, std::string>> read_string_map(const YAML::Node& parent,
                                                                   const std::string& path,
                                                                   const char* name) {
    std::vector<std::pair<std::string, std::string>> out;
    if (!parent.IsDefined() || !parent.IsMap()) return out;
    YAML::Node node = parent[name];
    std::string key = join(path, name);
    if (!node.IsDefined() || node.IsNull()) return out;
    if (!node.IsMap()) {
      error(key, line_of(node), "must be a mapping of names to values");
      return out;
    }
    for (auto it = node.begin(); it != node.end(); ++it) {
      std::string entry = key + "." + it->first.Scalar();
      if (!it->second.IsScalar()) {
        error(entry, line_of(it->second), "must be a single value");
        continue;
      }
      if (auto v = substituted(it->second.Scalar(), entry, line_of(it->second))) {
        out.emplace_back(it->first.Scalar(), *v);
      }
    }
    return out;
  }

  static bool has(const YAML::Node& parent, const char* name) {
    return parent.IsDefined() && parent.IsMap() && parent[name].IsDefined() &&
           !parent[name].IsNull();
  }

  const ParseOptions& options() const { return options_; }

 private:
  EnvLookup env() const {
    if (options_.env) return options_.env;
    return [](const std::string& name) -> std::optional<std::string> {
      const char* v = std::getenv(name.c_str());
      return v ? std::optional<std::string>(v) : std::nullopt;
    };
  }

  const ParseOptions& options_;
};

std::optional<std::string> read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void read_postgres(Reader& r, const YAML::Node& root, Config& c) {
  YAML::Node n = root["postgres"];
  if (!Reader::has(root, "postgres")) {
    r.error("postgres.dsn", 0, "is required");
    return;
  }
  if (!r.section(n, "postgres",
                 {"dsn", "password", "password_file", "connect_timeout_s", "admin_dsn"})) {
    return;
  }
  r.read_string(n, "postgres", "dsn", c.postgres.dsn, /*required=*/true);
  // Optional, and empty means unset, so that ${ADMIN_DSN:-} can leave it out.
  r.read_string(n, "postgres", "admin_dsn", c.postgres.admin_dsn);
  r.read_string(n, "postgres", "password", c.postgres.password);
  std::string file;
  r.read_string(n, "postgres", "password_file", file);
  if (!file.empty()) {
    if (Reader::has(n, "password")) {
      r.error("postgres.password_file", line_of(n["password_file"]),
              "give either postgres.password or postgres.password_file, not both");
    }
    auto reader = r.options().read_file ? r.options().read_file : read_whole_file;
    if (auto secret = reader(file)) {
      while (!secret->empty() && (secret->back() == '\n' || secret->back() == '\r')) {
        secret->pop_back();
      }
      c.postgres.password = *secret;
    } else {
      r.error("postgres.password_file", line_of(n["password_file"]), "cannot read file " + file);
    }
  }
  r.read_int(n, "postgres", "connect_timeout_s", c.postgres.connect_timeout_s, 1, 3600);
}

// Properties the relay's promise depends on: refusing them beats a silent downgrade.
void check_kafka_property(Reader& r, const std::string& name, const std::string& value, int line) {
  std::string key = "kafka.properties." + name;
  if (name == "enable.idempotence" && value != "true") {
    r.error(key, line,
            "must stay true: without the idempotent producer a retried send can duplicate or "
            "reorder events of one key");
  } else if ((name == "acks" || name == "request.required.acks") && value != "all" &&
             value != "-1") {
    r.error(key, line,
            "must stay all: a row is marked published only once every in-sync replica has it");
  } else if (name == "bootstrap.servers" || name == "metadata.broker.list") {
    r.error(key, line, "set kafka.bootstrap_servers instead");
  } else if ((name == "message.timeout.ms" || name == "delivery.timeout.ms") && value != "0") {
    r.error(key, line,
            "must stay 0 (no timeout): a message that timed out while later ones of its "
            "partition succeeded would be sent again after them, out of key order. The relay "
            "waits for Kafka, and gives up only at shutdown (relay.shutdown_timeout_ms)");
  } else if (name == "enable.gapless.guarantee" && value != "true") {
    r.error(key, line,
            "must stay true: a gap in a partition would be filled by a re-send out of key "
            "order");
  } else if (name == "transactional.id") {
    r.error(key, line, "is not supported yet: the relay uses the idempotent producer");
  } else if (r.options().kafka_check) {
    if (auto problem = r.options().kafka_check(name, value)) r.error(key, line, *problem);
  }
}

void read_kafka(Reader& r, const YAML::Node& root, Config& c) {
  YAML::Node n = root["kafka"];
  if (!Reader::has(root, "kafka")) {
    r.error("kafka.bootstrap_servers", 0, "is required");
    return;
  }
  if (!r.section(n, "kafka", {"bootstrap_servers", "properties", "topic_map"})) return;
  r.read_string(n, "kafka", "bootstrap_servers", c.kafka.bootstrap_servers, /*required=*/true);
  c.kafka.properties = r.read_string_map(n, "kafka", "properties");
  if (Reader::has(n, "properties") && n["properties"].IsMap()) {
    for (const auto& [name, value] : c.kafka.properties) {
      check_kafka_property(r, name, value, line_of(n["properties"][name]));
    }
  }
  for (auto& [from, to] : r.read_string_map(n, "kafka", "topic_map")) {
    if (to.empty()) {
      r.error("kafka.topic_map." + from, line_of(n["topic_map"][from]), "must not be empty");
    }
    c.kafka.topic_map[from] = to;
  }
}

bool is_identifier(const std::string& name) {
  return !name.empty() && name.size() <= 63 && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  }) && !(name[0] >= '0' && name[0] <= '9');
}

void read_source(Reader& r, const YAML::Node& root, Config& c) {
  YAML::Node n = root["source"];
  if (!r.section(n, "source", {"mode", "polling", "replication"})) return;
  r.read_enum(n, "source", "mode", c.source.mode,
              {{"polling", SourceMode::polling}, {"replication", SourceMode::replication}});
  YAML::Node p = n["polling"];
  if (r.section(p, "source.polling", {"batch_size", "batch_max_bytes", "interval_ms"})) {
    r.read_int(p, "source.polling", "batch_size", c.source.polling.batch_size, 1, 100'000);
    r.read_int(p, "source.polling", "batch_max_bytes", c.source.polling.batch_max_bytes, 1 << 16,
               1 << 30);
    r.read_ms(p, "source.polling", "interval_ms", c.source.polling.interval, 10, 3'600'000);
  }
  YAML::Node rep = n["replication"];
  const std::string path = "source.replication";
  if (!r.section(rep, path,
                 {"slot_name", "publication_name", "create_slot", "create_publication",
                  "status_interval_ms", "heartbeat_interval_ms"})) {
    return;
  }
  ReplicationConfig& rc = c.source.replication;
  for (auto [name, out] : {std::pair<const char*, std::string*>{"slot_name", &rc.slot_name},
                           {"publication_name", &rc.publication_name}}) {
    r.read_string(rep, path, name, *out);
    if (!is_identifier(*out)) {
      r.error(path + "." + name, line_of(rep[name]),
              "must be 1-63 characters of a-z, 0-9 and _, not starting with a digit");
    }
  }
  r.read_bool(rep, path, "create_slot", rc.create_slot);
  r.read_bool(rep, path, "create_publication", rc.create_publication);
  r.read_ms(rep, path, "status_interval_ms", rc.status_interval, 100, 3'600'000);
  r.read_ms(rep, path, "heartbeat_interval_ms", rc.heartbeat_interval, 100, 3'600'000);
}

void read_relay(Reader& r, const YAML::Node& root, Config& c) {
  YAML::Node n = root["relay"];
  if (!r.section(n, "relay",
                 {"max_attempts", "backoff_initial_ms", "backoff_max_ms", "shutdown_timeout_ms"})) {
    return;
  }
  r.read_int(n, "relay", "max_attempts", c.relay.max_attempts, 1, 1'000'000);
  if (n["max_attempts"]) {
    r.warnings.push_back(
        "relay.max_attempts (line " + std::to_string(n["max_attempts"].Mark().line + 1) +
        ") has no effect any more and can be removed: a row is dead-lettered only for a "
        "reason proven its own, at once, and a topic that cannot take messages waits");
  }
  r.read_ms(n, "relay", "backoff_initial_ms", c.relay.backoff_initial, 1, 3'600'000);
  r.read_ms(n, "relay", "backoff_max_ms", c.relay.backoff_max, 1, 3'600'000);
  r.read_ms(n, "relay", "shutdown_timeout_ms", c.relay.shutdown_timeout, 0, 3'600'000);
  if (c.relay.backoff_max < c.relay.backoff_initial) {
    r.error("relay.backoff_max_ms", line_of(n["backoff_max_ms"]),
            "must not be smaller than relay.backoff_initial_ms");
  }
}

void read_retention(Reader& r, const YAML::Node& root, Config& c) {
  YAML::Node n = root["retention"];
  const std::string path = "retention";
  if (!r.section(
          n, path,
          {"enabled", "published_after_s", "dead_lettered_after_s", "interval_ms", "batch_size"})) {
    return;
  }
  RetentionConfig& rc = c.retention;
  r.read_bool(n, path, "enabled", rc.enabled);
  int published = static_cast<int>(rc.published_after.count());
  r.read_int(n, path, "published_after_s", published, 1, 10 * 365 * 24 * 3600);
  rc.published_after = std::chrono::seconds(published);
  int dead = static_cast<int>(rc.dead_lettered_after.count());
  r.read_int(n, path, "dead_lettered_after_s", dead, 0, 10 * 365 * 24 * 3600);
  rc.dead_lettered_after = std::chrono::seconds(dead);
  if (dead > 0 && dead < published) {
    r.error(path + ".dead_lettered_after_s", line_of(n["dead_lettered_after_s"]),
            "must be 0 (keep them) or at least retention.published_after_s (" +
                std::to_string(published) + "): dead-lettered rows wait for a replay");
  }
  r.read_ms(n, path, "interval_ms", rc.interval, 100, 24 * 3'600'000);
  r.read_int(n, path, "batch_size", rc.batch_size, 1, 100'000);
}

}  // namespace

bool is_log_level(const std::string& level) {
  static constexpr std::string_view kLevels[] = {"trace", "debug", "info", "warn", "error", "off"};
  return std::find(std::begin(kLevels), std::end(kLevels), level) != std::end(kLevels);
}

namespace {

void read_log(Reader& r, const YAML::Node& root, Config& c) {
  YAML::Node n = root["log"];
  if (!r.section(n, "log", {"level", "format"})) return;
  if (auto level = r.scalar(n, "log", "level")) {
    if (!is_log_level(*level)) {
      r.error("log.level", line_of(n["level"]),
              "must be one of trace, debug, info, warn, error, off, got \"" + *level + "\"");
    } else {
      c.log.level = *level;
    }
  }
  r.read_enum(n, "log", "format", c.log.format,
              {{"text", LogFormat::text}, {"json", LogFormat::json}});
}

}  // namespace

ParseResult parse_config(std::string_view yaml_text, const ParseOptions& options) {
  ParseResult result;
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    result.errors.push_back({"(document)", e.mark.line + 1, "invalid YAML: " + e.msg});
    return result;
  }
  Reader r(options);
  Config c;
  if (!root.IsDefined() || root.IsNull()) {
    r.error("postgres.dsn", 0, "is required");
    r.error("kafka.bootstrap_servers", 0, "is required");
  } else if (r.section(root, "", {"postgres", "kafka", "source", "relay", "log", "retention"})) {
    read_postgres(r, root, c);
    read_kafka(r, root, c);
    read_source(r, root, c);
    read_relay(r, root, c);
    read_log(r, root, c);
    read_retention(r, root, c);
  }
  result.errors = std::move(r.errors);
  result.warnings = std::move(r.warnings);
  std::stable_sort(result.errors.begin(), result.errors.end(),
                   [](const ConfigError& a, const ConfigError& b) { return a.line < b.line; });
  if (result.errors.empty()) result.config = std::move(c);
  return result;
}

ParseResult load_config_file(const std::string& path, const ParseOptions& options) {
  auto text = read_whole_file(path);
  if (!text) {
    ParseResult result;
    result.errors.push_back({"--config", 0, "cannot read " + path});
    return result;
  }
  return parse_config(*text, options);
}

}  // namespace outbox::config
