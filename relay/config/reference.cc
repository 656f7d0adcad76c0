// example.yaml and the reference page, rendered from the tables of key.h. Deterministic:
// the same tables give the same bytes, so a unit test can compare the committed copies.
#include "config/reference.h"

#include <algorithm>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "config/key.h"

namespace outbox::config {

namespace {

constexpr std::size_t kWidth = 96;

// The keys as a tree of sections, each child in the order its first key is declared.
struct Node {
  std::string name;  // the last component of the path
  std::string path;
  const Key* key = nullptr;
  std::vector<Node> children;
};

Node key_tree() {
  Node root;
  for (const Key& key : keys()) {
    Node* at = &root;
    for (std::size_t start = 0;;) {
      std::size_t dot = key.path.find('.', start);
      std::string name = key.path.substr(start, dot == std::string::npos ? dot : dot - start);
      auto it = std::find_if(at->children.begin(), at->children.end(),
                             [&](const Node& n) { return n.name == name; });
      if (it == at->children.end()) {
        std::string path = at->path.empty() ? name : at->path + "." + name;
        at->children.push_back({name, path, nullptr, {}});
        it = at->children.end() - 1;
      }
      at = &*it;
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    at->key = &key;
  }
  return root;
}

const Section* find_section(const std::string& path) {
  for (const Section& s : sections()) {
    if (s.path == path) return &s;
  }
  return nullptr;
}

std::string section_description(const std::string& path) {
  const Section* s = find_section(path);
  return s ? s->description : "";
}

// `text` as comment lines starting with `prefix`, words wrapped at kWidth.
std::string comment(std::string_view text, const std::string& prefix) {
  std::string out, line;
  for (std::size_t start = 0; start < text.size();) {
    std::size_t end = text.find(' ', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view word = text.substr(start, end - start);
    start = end + 1;
    if (word.empty()) continue;
    if (!line.empty() && prefix.size() + line.size() + 1 + word.size() > kWidth) {
      out += prefix + line + "\n";
      line.clear();
    }
    line += (line.empty() ? "" : " ") + std::string(word);
  }
  if (!line.empty()) out += prefix + line + "\n";
  return out;
}

// What a key accepts, as a sentence for example.yaml ("" for a boolean: true or false).
std::string accepted(const Key& key) {
  std::string out;
  if (key.required) out += " Required.";
  if (!key.allowed.empty() && key.type != "boolean") {
    out += (key.type == "one of" ? " One of: " : " Accepted: ") + key.allowed + ".";
  }
  return out;
}

void render_example(const Node& node, int depth, const Config& defaults, std::string& out) {
  std::string indent(static_cast<std::size_t>(depth) * 2, ' ');
  for (const Node& child : node.children) {
    if (child.key == nullptr) {
      if (depth == 0 && !out.empty()) out += "\n";
      out += comment(section_description(child.path), indent + "# ");
      out += indent + child.name + ":\n";
      render_example(child, depth + 1, defaults, out);
      continue;
    }
    const Key& key = *child.key;
    out += comment(key.description + accepted(key), indent + "# ");
    std::string value = key.example.empty() ? key.show(defaults) : key.example;
    out += indent + (key.commented ? "# " : "") + child.name + ": " + value + "\n";
  }
}

// A Markdown table cell: one line, pipes escaped.
std::string cell(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '|') out += '\\';
    out += c == '\n' ? ' ' : c;
  }
  return out;
}

std::string code(const std::string& text) { return text.empty() ? "" : "`" + cell(text) + "`"; }

void render_reference(const Node& node, const Config& defaults, std::string& out) {
  std::vector<const Node*> direct;
  for (const Node& child : node.children) {
    if (child.key != nullptr) direct.push_back(&child);
  }
  if (!direct.empty()) {
    out += "\n## `" + node.path + "`\n\n";
    if (const Section* s = find_section(node.path)) {
      out += s->description + (s->see.empty() ? "" : " See " + s->see + ".") + "\n\n";
    }
    out += "| key | type | default | accepted | description |\n|---|---|---|---|---|\n";
    for (const Node* child : direct) {
      const Key& key = *child->key;
      std::string shown = key.show(defaults);
      std::string fallback = key.required                       ? "required"
                             : shown.empty() || shown == "\"\"" ? "none"
                                                                : code(shown);
      std::string description = key.description;
      if (!key.deprecated.empty()) description += " Setting it logs a warning.";
      out += "| `" + key.path + "` | " + cell(key.type) + " | " + fallback + " | " +
             cell(key.allowed) + " | " + cell(description) + " |\n";
    }
  }
  for (const Node& child : node.children) {
    if (child.key == nullptr) render_reference(child, defaults, out);
  }
}

// What the relay prints for a file with mistakes, from the parser itself.
std::string sample_errors() {
  constexpr const char* kFile = "bad.yaml";
  ParseOptions options;
  options.env = [](const std::string&) { return std::nullopt; };
  options.read_file = [](const std::string&) { return std::nullopt; };
  ParseResult r = parse_config(R"(postgres:
  dsnn: "host=db dbname=app"
kafka:
  bootstrap_servers: "kafka:9092"
source:
  polling:
    batch_size: -5
)",
                               options);
  std::string out = "outbox-relay: invalid configuration " + std::string(kFile) + ":\n";
  for (const auto& e : r.errors) out += "  " + e.to_string() + "\n";
  return out;
}

}  // namespace

std::string example_yaml() {
  std::string out =
      "# outbox-relay configuration: every key with its default, except the two required "
      "ones.\n"
      "# ${VAR} and ${VAR:-default} are replaced from the environment. Generated from\n"
      "# relay/config/keys.cc by `cmake --build build --target config-docs`: edit there.\n";
  std::string body;
  render_example(key_tree(), 0, Config{}, body);
  return out + body;
}

std::string reference_markdown() {
  std::string out = R"(# Configuration reference

<!-- Generated from relay/config/keys.cc by `cmake --build build --target config-docs`;
     a unit test fails when this page is not current. Edit the table, not this page. -->

One YAML file, given with `--config FILE` (or `$OUTBOX_RELAY_CONFIG`);
[`relay/config/example.yaml`](../../relay/config/example.yaml) shows every key with its
default. Only `postgres.dsn` and `kafka.bootstrap_servers` are required. `${VAR}` and
`${VAR:-default}` are replaced from the environment in every value. Unknown keys, wrong types
and bad values stop the relay at start with every error at once, each naming key and line
(exit 2):

```
)" + sample_errors() +
                    R"(```

A YAML syntax error is given at its line and column as an editor counts them (an unclosed
`[` or `{` where it opens), with yaml-cpp's message and the file; a `--config` that cannot be
read (missing, a directory) says why. Durations are integers in the unit their name ends
with: `_ms` milliseconds, `_s` seconds.
)";
  render_reference(key_tree(), Config{}, out);
  out +=
      "\n## Rules between keys\n\nChecked once every key is read (an absent key has its "
      "default); the error names the first key.\n\n| keys | rule |\n|---|---|\n";
  for (const Rule& rule : rules()) {
    std::string names;
    for (const auto& k : rule.keys) names += (names.empty() ? "" : ", ") + code(k);
    out += "| " + names + " | " + cell(rule.description) + " |\n";
  }
  out +=
      "\n## Kafka properties the relay refuses\n\nIn `kafka.properties` and "
      "`kafka.secret_files`: the relay's promises depend on these. Every other property "
      "goes to librdkafka's own check.\n\n| property | accepted | why |\n|---|---|---|\n";
  for (const PropertyRule& rule : property_rules()) {
    std::string names;
    for (const auto& n : rule.names) names += (names.empty() ? "" : ", ") + code(n);
    out += "| " + names + " | " + cell(rule.allowed) + " | " + cell(rule.message) + " |\n";
  }
  out += R"(
## What the relay adds to the dsn

A network cut (a peer that vanished, not a closed socket) is noticed within about ten seconds
on both ends: the relay adds `keepalives=1 keepalives_idle=5 keepalives_interval=2
keepalives_count=3 tcp_user_timeout=10000` to the dsn, and appends `-c tcp_keepalives_idle=5
-c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 -c tcp_user_timeout=10000` to its
`options` (to `PGOPTIONS` when the dsn has none), so that the server ends a vanished relay's
session, with its leader lock and replication slot. Each is added only when the dsn (for a
server setting: `options`) does not set it already; the dsn's values win.

The relay's sessions always use `client_encoding=UTF8` (a dsn's `client_encoding` or
`PGCLIENTENCODING` is overridden): keys and headers reach Kafka as UTF-8 whatever the
database's encoding (a LATIN1 database included), and no row's characters can make a read fail.
)";
  return out;
}

}  // namespace outbox::config
