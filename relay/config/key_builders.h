// Builders of Key (key.h) for keys.cc: each binds a key to its field of Config through an
// accessor `[](auto& c) -> auto& { return c.FIELD; }`, reads the field's type from it, and
// takes the default from the field's initializer. Internal to relay/config/.
#pragma once

#include <yaml-cpp/yaml.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "config/key.h"
#include "config/parse_context.h"

namespace outbox::config::build {

//! What the documentation says of a key besides its type and default.
struct Doc {
  std::string description;
  bool required = false;
  std::string example = {};  //!< example.yaml's value instead of the default
  bool commented = false;    //!< example.yaml shows it commented out
  std::string deprecated = {};
};

//! Accepted range of a number, both ends included.
struct Bounds {
  long min;
  long max;
};

//! A check of one value: the error message after the key, or nullopt when it is accepted.
using Check = std::function<std::optional<std::string>(const std::string& value)>;

template <typename Get>
using field_t = std::remove_cvref_t<std::invoke_result_t<Get, Config&>>;

inline int line_of(const YAML::Node& node) { return node.IsDefined() ? node.Mark().line + 1 : 0; }

//! The scalar text of `node` after ${VAR} substitution, recorded as the value of `path`;
//! nullopt (with an error naming path and line) for a list, a mapping or a bad ${VAR}.
std::optional<std::string> scalar(ParseContext& ctx, const std::string& path,
                                  const YAML::Node& node);
//! `text` as an integer within `bounds`; nullopt with an error naming key and line.
std::optional<long> integer(ParseContext& ctx, const std::string& key, int line,
                            const std::string& text, Bounds bounds);
//! `text` as YAML writes a plain scalar, quoted when it would otherwise read differently.
std::string yaml_quoted(const std::string& text);

inline Key base(std::string path, Doc doc) {
  Key k;
  k.path = std::move(path);
  k.description = std::move(doc.description);
  k.required = doc.required;
  k.example = std::move(doc.example);
  k.commented = doc.commented;
  k.deprecated = std::move(doc.deprecated);
  return k;
}

template <typename T>
struct NumberUnit;
template <>
struct NumberUnit<int> {
  static constexpr const char* type = "integer";
  static long count(int v) { return v; }
};
template <>
struct NumberUnit<std::chrono::milliseconds> {
  static constexpr const char* type = "integer (milliseconds)";
  static long count(std::chrono::milliseconds v) { return static_cast<long>(v.count()); }
};
template <>
struct NumberUnit<std::chrono::seconds> {
  static constexpr const char* type = "integer (seconds)";
  static long count(std::chrono::seconds v) { return static_cast<long>(v.count()); }
};

//! An int, milliseconds or seconds field (the key's name says the unit: _ms, _s).
template <typename Get>
Key number(std::string path, Get get, Bounds bounds, Doc doc) {
  using T = field_t<Get>;
  Key k = base(std::move(path), std::move(doc));
  k.type = NumberUnit<T>::type;
  k.allowed = std::to_string(bounds.min) + " to " + std::to_string(bounds.max);
  k.read = [key = k.path, get, bounds](ParseContext& ctx, const YAML::Node& node) {
    auto text = scalar(ctx, key, node);
    if (!text) return;
    if (auto v = integer(ctx, key, line_of(node), *text, bounds)) {
      if constexpr (std::is_same_v<T, int>) {
        get(ctx.config) = static_cast<int>(*v);
      } else {
        get(ctx.config) = T(static_cast<typename T::rep>(*v));
      }
    }
  };
  k.show = [get](const Config& d) { return std::to_string(NumberUnit<T>::count(get(d))); };
  return k;
}

//! A field taking one of a fixed set of words (an enum, or a string such as log.level).
template <typename Get>
Key choice(std::string path, Get get, std::vector<std::pair<std::string, field_t<Get>>> choices,
           Doc doc) {
  Key k = base(std::move(path), std::move(doc));
  k.type = "one of";
  for (const auto& [label, value] : choices) k.allowed += (k.allowed.empty() ? "" : ", ") + label;
  k.read = [key = k.path, get, choices, list = k.allowed](ParseContext& ctx,
                                                          const YAML::Node& node) {
    auto text = scalar(ctx, key, node);
    if (!text) return;
    for (const auto& [label, value] : choices) {
      if (*text == label) {
        get(ctx.config) = value;
        return;
      }
    }
    ctx.error(key, line_of(node), "must be one of " + list + ", got \"" + *text + "\"");
  };
  k.show = [get, choices](const Config& d) {
    for (const auto& [label, value] : choices) {
      if (get(d) == value) return label;
    }
    return std::string();
  };
  return k;
}

//! A bool field: true or false.
template <typename Get>
Key boolean(std::string path, Get get, Doc doc) {
  Key k = choice(std::move(path), get, {{"true", true}, {"false", false}}, std::move(doc));
  k.type = "boolean";
  return k;
}

//! A string field, with an optional check of its value (`allowed` describes what it accepts).
template <typename Get>
Key text(std::string path, Get get, Doc doc, Check check = {}, std::string allowed = {}) {
  Key k = base(std::move(path), std::move(doc));
  k.type = "string";
  k.allowed = std::move(allowed);
  k.read = [key = k.path, get, check](ParseContext& ctx, const YAML::Node& node) {
    auto text = scalar(ctx, key, node);
    if (!text) return;
    if (check) {
      if (auto problem = check(*text)) ctx.error(key, line_of(node), *problem);
    }
    get(ctx.config) = *text;
  };
  k.show = [get](const Config& d) { return yaml_quoted(get(d)); };
  return k;
}

//! A string key with no field of its own: a rule (rules.cc) reads it from the context.
inline Key text_for_rules(std::string path, Doc doc) {
  Key k = base(std::move(path), std::move(doc));
  k.type = "string";
  k.read = [key = k.path](ParseContext& ctx, const YAML::Node& node) { scalar(ctx, key, node); };
  k.show = [](const Config&) { return std::string(); };
  return k;
}

//! Reads a mapping of names to values, each entry substituted and checked; records them.
std::vector<MapEntry> read_mapping(ParseContext& ctx, const std::string& path,
                                   const YAML::Node& node, const Check& check);
std::string show_mapping(const std::vector<std::pair<std::string, std::string>>& entries);

//! A mapping of names to values into a std::map or a vector of pairs (file order), or, with
//! `get` = nullptr, into the context only (a rule reads it).
template <typename Get>
Key mapping(std::string path, Get get, Doc doc, Check check = {}, std::string allowed = {}) {
  Key k = base(std::move(path), std::move(doc));
  k.type = "mapping of names to strings";
  k.mapping = true;
  k.allowed = std::move(allowed);
  k.read = [key = k.path, get, check](ParseContext& ctx, const YAML::Node& node) {
    std::vector<MapEntry> entries = read_mapping(ctx, key, node, check);
    if constexpr (!std::is_null_pointer_v<Get>) {
      auto& out = get(ctx.config);
      for (const auto& e : entries) {
        if constexpr (std::is_same_v<field_t<Get>, std::map<std::string, std::string>>) {
          out[e.name] = e.value;
        } else {
          out.emplace_back(e.name, e.value);
        }
      }
    }
    ctx.set_entries(key, std::move(entries));
  };
  k.show = [get](const Config& d) {
    if constexpr (std::is_null_pointer_v<Get>) {
      return std::string("{}");
    } else {
      const auto& field = get(d);
      return show_mapping({field.begin(), field.end()});
    }
  };
  return k;
}

//! source.tables: a list of mappings, each a SourceTableConfig (source_tables.cc).
Key table_list(std::string path, Doc doc);

}  // namespace outbox::config::build
