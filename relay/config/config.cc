#include "config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <tuple>

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

namespace {

int line_of(const YAML::Node& node) { return node.IsDefined() ? node.Mark().line + 1 : 0; }

std::string join(const std::string& path, const std::string& name) {
  return path.empty() ? name : path + "." + name;
}

// Kafka's own rule (core::is_valid_topic_name; config/ calls nothing else of the relay): a
// name it refuses would dead-letter every row sent to it, so it is a configuration error.
bool is_kafka_topic_name(const std::string& topic) {
  if (topic.empty() || topic.size() > 249 || topic == "." || topic == "..") return false;
  return std::all_of(topic.begin(), topic.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '_' || ch == '-';
  });
}

std::string not_a_topic_name(const std::string& topic) {
  std::string shown = topic.size() > 80 ? topic.substr(0, 80) + "..." : topic;
  return "must be a Kafka topic name (1-249 characters of a-z, A-Z, 0-9, '.', '_' and '-', "
         "not \".\" or \"..\"), got \"" +
         shown + "\"";
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
      error(path, line_of(node),
            path.empty() ? "the file must be a mapping of keys (postgres:, kafka:, ...)"
                         : "must be a mapping of keys");
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

// The file's bytes, or nullopt with the reason in *error (an ifstream "opens" a directory
// and reads nothing from it, which would look like an empty config).
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

// A yaml-cpp syntax error as a ConfigError: 1-based line and column, yaml-cpp's message.
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

// A secret file's content without its trailing newline; an error naming `key` when unreadable.
std::optional<std::string> read_secret(Reader& r, const std::string& path, const std::string& key,
                                       int line) {
  auto reader = r.options().read_file ? r.options().read_file : read_whole_file;
  auto secret = reader(path);
  if (!secret) {
    r.error(key, line, "cannot read file " + path);
    return std::nullopt;
  }
  while (!secret->empty() && (secret->back() == '\n' || secret->back() == '\r')) {
    secret->pop_back();
  }
  return secret;
}

bool is_identifier(const std::string& name);

void read_postgres(Reader& r, const YAML::Node& root, Config& c) {
  YAML::Node n = root["postgres"];
  if (!Reader::has(root, "postgres")) {
    r.error("postgres.dsn", 0, "is required");
    return;
  }
  if (!r.section(n, "postgres",
                 {"dsn", "password", "password_file", "connect_timeout_s", "allow_weak_tls",
                  "admin_dsn", "relay_role", "writer_role"})) {
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
    if (auto secret = read_secret(r, file, "postgres.password_file", line_of(n["password_file"]))) {
      c.postgres.password = *secret;
      c.postgres.password_file = file;
    }
  }
  r.read_int(n, "postgres", "connect_timeout_s", c.postgres.connect_timeout_s, 1, 3600);
  r.read_bool(n, "postgres", "allow_weak_tls", c.postgres.allow_weak_tls);
  for (auto [name, out] :
       {std::pair<const char*, std::string*>{"relay_role", &c.postgres.relay_role},
        {"writer_role", &c.postgres.writer_role}}) {
    r.read_string(n, "postgres", name, *out);
    if (!is_identifier(*out)) {
      r.error(std::string("postgres.") + name, line_of(n[name]),
              "must be 1-63 characters of a-z, 0-9 and _, not starting with a digit");
    }
  }
  if (c.postgres.relay_role == c.postgres.writer_role) {
    r.error("postgres.writer_role", line_of(n["writer_role"]),
            "must differ from postgres.relay_role: the relay and the services need different "
            "privileges");
  }
}

// Properties the relay's promise depends on: refusing them beats a silent downgrade.
// `key` is where the value came from (kafka.properties.NAME or kafka.secret_files.NAME).
void check_kafka_property(Reader& r, const Config& c, const std::string& key,
                          const std::string& name, const std::string& value, int line) {
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
  } else if (name == "partitioner" && value == "random") {
    // (found by trying it as a user would) every other partitioner hashes the key when there is
    // one.
    r.error(key, line,
            "random ignores the message key: one key's events would land on different "
            "partitions, so per-key order would not hold. Use the default (consistent_random) "
            "or murmur2_random (the Java client's)");
  } else if (name == "transactional.id") {
    r.error(key, line,
            "is set by the relay: use delivery.guarantee: exactly_once (and "
            "delivery.transactional_id to choose it)");
  } else if (name == "ssl.endpoint.identification.algorithm" && value == "none" &&
             !c.kafka.allow_no_hostname_verification) {
    r.error(key, line,
            "none turns off the check that the broker's certificate names the host connected "
            "to: any server with a certificate from a trusted CA could pose as the broker. Set "
            "kafka.allow_no_hostname_verification: true to accept this");
  } else if (name == "enable.ssl.certificate.verification" && value == "false" &&
             !c.kafka.allow_unverified_certificates) {
    r.error(key, line,
            "false accepts any certificate, so anyone on the network path can pose as the "
            "broker. Set kafka.allow_unverified_certificates: true to accept this");
  } else if (r.options().kafka_check) {
    if (auto problem = r.options().kafka_check(name, value)) {
      // librdkafka quotes a refused value: never show one that may be a secret.
      bool secret =
          key.rfind("kafka.secret_files.", 0) == 0 || name.find("password") != std::string::npos ||
          name.find("secret") != std::string::npos || name.find(".pem") != std::string::npos;
      for (std::size_t at;
           secret && !value.empty() && (at = problem->find(value)) != std::string::npos;) {
        problem->replace(at, value.size(), "(hidden)");
      }
      r.error(key, line, *problem);
    }
  }
}

void read_kafka(Reader& r, const YAML::Node& root, Config& c) {
  YAML::Node n = root["kafka"];
  if (!Reader::has(root, "kafka")) {
    r.error("kafka.bootstrap_servers", 0, "is required");
    return;
  }
  if (!r.section(n, "kafka",
                 {"bootstrap_servers", "properties", "topic_map", "secret_files",
                  "allow_no_hostname_verification", "allow_unverified_certificates"})) {
    return;
  }
  r.read_string(n, "kafka", "bootstrap_servers", c.kafka.bootstrap_servers, /*required=*/true);
  r.read_bool(n, "kafka", "allow_no_hostname_verification", c.kafka.allow_no_hostname_verification);
  r.read_bool(n, "kafka", "allow_unverified_certificates", c.kafka.allow_unverified_certificates);
  c.kafka.properties = r.read_string_map(n, "kafka", "properties");
  if (Reader::has(n, "properties") && n["properties"].IsMap()) {
    for (const auto& [name, value] : c.kafka.properties) {
      check_kafka_property(r, c, "kafka.properties." + name, name, value,
                           line_of(n["properties"][name]));
    }
  }
  // kafka.secret_files: property -> file holding its value (sasl.password, ssl.key.password...).
  for (const auto& [name, path] : r.read_string_map(n, "kafka", "secret_files")) {
    std::string key = "kafka.secret_files." + name;
    int line = line_of(n["secret_files"][name]);
    bool twice = std::any_of(c.kafka.properties.begin(), c.kafka.properties.end(),
                             [&](const auto& p) { return p.first == name; });
    if (twice) {
      r.error(key, line, "give kafka.properties." + name + " or " + key + ", not both");
    } else if (auto secret = read_secret(r, path, key, line)) {
      check_kafka_property(r, c, key, name, *secret, line);
      c.kafka.properties.emplace_back(name, *secret);
      c.kafka.secret_files[name] = path;
    }
  }
  for (auto& [from, to] : r.read_string_map(n, "kafka", "topic_map")) {
    if (to.empty()) {
      r.error("kafka.topic_map." + from, line_of(n["topic_map"][from]), "must not be empty");
    } else if (!is_kafka_topic_name(to)) {
      r.error("kafka.topic_map." + from, line_of(n["topic_map"][from]), not_a_topic_name(to));
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
  if (!r.section(n, "source", {"mode", "polling", "replication", "pipeline"})) return;
  r.read_enum(n, "source", "mode", c.source.mode,
              {{"polling", SourceMode::polling}, {"replication", SourceMode::replication}});
  YAML::Node p = n["polling"];
  if (r.section(p, "source.polling",
                {"batch_size", "batch_max_bytes", "interval_ms", "shards",
                 "shards_rebalance_interval_ms"})) {
    r.read_int(p, "source.polling", "batch_size", c.source.polling.batch_size, 1, 100'000);
    r.read_int(p, "source.polling", "batch_max_bytes", c.source.polling.batch_max_bytes, 1 << 16,
               1 << 30);
    r.read_ms(p, "source.polling", "interval_ms", c.source.polling.interval, 10, 3'600'000);
    r.read_int(p, "source.polling", "shards", c.source.polling.shards, 1, 1024);
    if (c.source.mode == SourceMode::replication && c.source.polling.shards > 1) {
      r.error("source.polling.shards", line_of(p["shards"]),
              "must be 1 in replication mode (one slot, one relay; see README \"Scaling out\")");
    }
    r.read_ms(p, "source.polling", "shards_rebalance_interval_ms",
              c.source.polling.shards_rebalance_interval, 100, 600'000);
  }
  YAML::Node pl = n["pipeline"];
  if (r.section(pl, "source.pipeline", {"max_in_flight_rows", "max_in_flight_bytes"})) {
    r.read_int(pl, "source.pipeline", "max_in_flight_rows", c.source.pipeline.max_in_flight_rows, 1,
               1'000'000);
    r.read_int(pl, "source.pipeline", "max_in_flight_bytes", c.source.pipeline.max_in_flight_bytes,
               1 << 16, 1 << 30);
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

void read_http(Reader& r, const YAML::Node& root, Config& c) {
  YAML::Node n = root["http"];
  if (!r.section(n, "http", {"enabled", "address", "port", "stats_interval_ms"})) return;
  r.read_bool(n, "http", "enabled", c.http.enabled);
  r.read_string(n, "http", "address", c.http.address);
  if (Reader::has(n, "address") && c.http.address.empty()) {
    r.error("http.address", line_of(n["address"]), "must not be empty");
  }
  r.read_int(n, "http", "port", c.http.port, 0, 65535);
  r.read_ms(n, "http", "stats_interval_ms", c.http.stats_interval, 100, 3'600'000);
}

void read_delivery(Reader& r, const YAML::Node& root, Config& c) {
  YAML::Node n = root["delivery"];
  const std::string path = "delivery";
  if (!r.section(n, path,
                 {"guarantee", "transactional_id", "checkpoint_topic", "transaction_timeout_ms"})) {
    return;
  }
  DeliveryConfig& d = c.delivery;
  r.read_enum(n, path, "guarantee", d.guarantee,
              {{"at_least_once", DeliveryGuarantee::at_least_once},
               {"exactly_once", DeliveryGuarantee::exactly_once}});
  r.read_string(n, path, "transactional_id", d.transactional_id);
  r.read_string(n, path, "checkpoint_topic", d.checkpoint_topic);
  if (!is_kafka_topic_name(d.checkpoint_topic)) {
    r.error(path + ".checkpoint_topic", line_of(n["checkpoint_topic"]),
            not_a_topic_name(d.checkpoint_topic));
  }
  r.read_ms(n, path, "transaction_timeout_ms", d.transaction_timeout, 1'000, 900'000);
  bool eos = d.guarantee == DeliveryGuarantee::exactly_once;
  if (eos && c.source.polling.shards > 1) {  // one transactional.id: one publishing relay
    r.error(path + ".guarantee", line_of(n["guarantee"]),
            "exactly_once needs one publishing relay (one transactional.id), so not with "
            "source.polling.shards above 1");
  }
  // (checkpoint_topic and transaction_timeout_ms have defaults, shown in example.yaml)
  if (!eos && Reader::has(n, "transactional_id")) {
    r.warnings.push_back("delivery.transactional_id (line " +
                         std::to_string(line_of(n["transactional_id"])) +
                         ") has no effect unless delivery.guarantee is exactly_once");
  }
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
  Reader r(options);
  Config c;
  if (!root.IsDefined() || root.IsNull()) {
    r.error("postgres.dsn", 0, "is required");
    r.error("kafka.bootstrap_servers", 0, "is required");
  } else if (r.section(root, "",
                       {"postgres", "kafka", "source", "relay", "log", "http", "retention",
                        "delivery"})) {
    read_postgres(r, root, c);
    read_kafka(r, root, c);
    read_source(r, root, c);
    read_relay(r, root, c);
    read_log(r, root, c);
    read_http(r, root, c);
    read_retention(r, root, c);
    read_delivery(r, root, c);
  }
  result.errors = std::move(r.errors);
  result.warnings = std::move(r.warnings);
  std::stable_sort(result.errors.begin(), result.errors.end(),
                   [](const ConfigError& a, const ConfigError& b) { return a.line < b.line; });
  if (result.errors.empty()) result.config = std::move(c);
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
