// The key source.tables: a list of mappings, each read into a SourceTableConfig. Every
// mistake names its entry's key (source.tables[0].topic) and line.
#include <yaml-cpp/yaml.h>

#include <set>

#include "config/key_builders.h"
#include "config/validators.h"

namespace outbox::config::build {

namespace {

constexpr const char* kFields = "table, event_id, topic, key, payload, created_at, headers";
constexpr const char* kColumnRule =
    "must be a column name the relay can use unquoted: 1-63 of a-z, 0-9 and _, not starting "
    "with a digit";

// "schema.table", both parts plain identifiers.
std::optional<std::string> qualified_table(const std::string& value) {
  auto dot = value.find('.');
  if (dot == std::string::npos) {
    return "must be schema-qualified, e.g. public." + value + " (got \"" + value + "\")";
  }
  std::string schema = value.substr(0, dot), table = value.substr(dot + 1);
  if (!is_identifier(schema) || !is_identifier(table)) {
    return "must be schema.table, each 1-63 of a-z, 0-9 and _, not starting with a digit "
           "(got \"" +
           value + "\")";
  }
  if (schema == "outbox") {
    return "must be a service's table, not one of schema outbox (got \"" + value + "\")";
  }
  return std::nullopt;
}

std::optional<std::string> header_name(const std::string& value) {
  if (value.empty()) return "must not be empty";
  if (value == "outbox-event-id" || value == "outbox-id") {
    return "header " + value + " is set by the relay; choose another name";
  }
  return std::nullopt;
}

void read_entry(ParseContext& ctx, const std::string& at, const YAML::Node& node,
                SourceTableConfig& out) {
  if (!node.IsMap()) {
    ctx.error(at, line_of(node),
              "must be a mapping, e.g. {table: public.outboxevent} (fields: " +
                  std::string(kFields) + ")");
    return;
  }
  const std::pair<const char*, std::string*> columns[] = {{"event_id", &out.event_id},
                                                          {"topic", &out.topic},
                                                          {"key", &out.key},
                                                          {"payload", &out.payload},
                                                          {"created_at", &out.created_at}};
  bool has_table = false;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string name = it->first.Scalar();
    const std::string path = at + "." + name;
    const YAML::Node value = it->second;
    if (name == "table") {
      if (auto text = scalar(ctx, path, value)) {
        has_table = true;
        if (auto problem = qualified_table(*text)) ctx.error(path, line_of(value), *problem);
        out.table = *text;
      }
      continue;
    }
    if (name == "headers") {
      for (const MapEntry& e : read_mapping(ctx, path, value, header_name)) {
        if (!is_identifier(e.name)) {
          ctx.error(path + "." + e.name, e.line,
                    std::string("the column name ") + kColumnRule + " (column -> header name)");
        }
        out.headers.emplace_back(e.name, e.value);
      }
      continue;
    }
    bool known = false;
    for (const auto& [field, target] : columns) {
      if (name != field) continue;
      known = true;
      if (auto text = scalar(ctx, path, value)) {
        if (!is_identifier(*text)) ctx.error(path, line_of(value), kColumnRule);
        *target = *text;
      }
    }
    if (!known) {
      ctx.error(path, line_of(it->first),
                "unknown field (known here: " + std::string(kFields) + ")");
    }
  }
  if (!has_table) ctx.error(at + ".table", line_of(node), "is required (schema.table)");
}

}  // namespace

Key table_list(std::string path, Doc doc) {
  Key k = base(std::move(path), std::move(doc));
  k.type = "list of mappings";
  k.allowed = std::string("each: ") + kFields;
  k.read = [key = k.path](ParseContext& ctx, const YAML::Node& node) {
    if (!node.IsSequence()) {
      ctx.error(key, line_of(node),
                "must be a list of tables, e.g. [{table: public.outboxevent}]");
      return;
    }
    std::set<std::string> seen;
    for (std::size_t i = 0; i < node.size(); ++i) {
      std::string at = key + "[" + std::to_string(i) + "]";
      SourceTableConfig entry;
      read_entry(ctx, at, node[i], entry);
      if (!entry.table.empty() && !seen.insert(entry.table).second) {
        ctx.error(at + ".table", line_of(node[i]["table"]),
                  "table " + entry.table + " is listed twice; give each table once");
      }
      ctx.config.source.tables.push_back(std::move(entry));
    }
  };
  k.show = [](const Config&) { return std::string("[]"); };
  return k;
}

}  // namespace outbox::config::build
