#include "pg/conninfo.h"

#include <libpq-fe.h>

#include <cctype>
#include <cstdlib>
#include <memory>
#include <set>
#include <vector>

namespace outbox::pg {

namespace {

// Single-quoted value with \ and ' escaped, as libpq's key=value syntax wants.
std::string quote(const std::string& value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\\' || c == '\'') out += '\\';
    out += c;
  }
  return out + "'";
}

struct Setting {
  const char* name;
  const char* value;
};

// Client side: libpq's TCP keepalives and TCP_USER_TIMEOUT (ms), so that a call on a
// connection whose peer vanished (network cut, not a closed socket) fails within seconds
// instead of blocking until the kernel gives up (many minutes).
constexpr Setting kClientDefaults[] = {{"keepalives", "1"},
                                       {"keepalives_idle", "5"},
                                       {"keepalives_interval", "2"},
                                       {"keepalives_count", "3"},
                                       {"tcp_user_timeout", "10000"}};

// Server side, as -c settings in `options`: the server ends the session of a relay that
// vanished within seconds, which frees its leader lock (and replication slot) for the relay
// once it reconnects.
constexpr Setting kServerDefaults[] = {{"tcp_keepalives_idle", "5"},
                                       {"tcp_keepalives_interval", "2"},
                                       {"tcp_keepalives_count", "3"},
                                       {"tcp_user_timeout", "10000"}};

// What the server makes of a setting's name: case-insensitive, - as _ (from --name=value).
std::string setting_name(const std::string& assignment) {
  std::string name = assignment.substr(0, assignment.find('='));
  for (char& c : name) {
    c = c == '-' ? '_' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return name;
}

// The settings an `options` value sets, split as the server does (whitespace separates
// arguments, a backslash escapes the next character): "-c name=value", "-cname=value" and
// "--name=value".
std::set<std::string> settings_in(const std::string& options) {
  std::vector<std::string> args;
  std::string arg;
  bool in_arg = false;
  for (std::size_t i = 0; i < options.size(); ++i) {
    char c = options[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (in_arg) args.push_back(arg);
      arg.clear();
      in_arg = false;
      continue;
    }
    if (c == '\\' && i + 1 < options.size()) c = options[++i];
    arg += c;
    in_arg = true;
  }
  if (in_arg) args.push_back(arg);
  std::set<std::string> names;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-c" && i + 1 < args.size()) {
      names.insert(setting_name(args[++i]));
    } else if (a.rfind("--", 0) == 0 && a.size() > 2) {
      names.insert(setting_name(a.substr(2)));
    } else if (a.rfind("-c", 0) == 0 && a.size() > 2) {
      names.insert(setting_name(a.substr(2)));
    }
  }
  return names;
}

// `options` with the server-side defaults it does not set appended.
std::string with_server_defaults(const std::string& options) {
  std::set<std::string> set = settings_in(options);
  std::string out = options;
  for (const Setting& s : kServerDefaults) {
    if (set.count(s.name)) continue;
    if (!out.empty()) out += ' ';
    out += std::string("-c ") + s.name + "=" + s.value;
  }
  return out;
}

struct OptionsDeleter {
  void operator()(PQconninfoOption* options) const { PQconninfoFree(options); }
};
using Options = std::unique_ptr<PQconninfoOption, OptionsDeleter>;

Options parse(const std::string& dsn, std::string* error) {
  char* message = nullptr;
  Options options(PQconninfoParse(dsn.c_str(), &message));
  if (!options) {
    if (error) *error = message ? message : "cannot parse the connection string";
    if (error && !error->empty() && error->back() == '\n') error->pop_back();
  }
  PQfreemem(message);
  return options;
}

}  // namespace

std::optional<std::string> build_conninfo(const std::string& dsn, const std::string& password,
                                          int connect_timeout_s, std::string* error) {
  Options options = parse(dsn, error);
  if (!options) return std::nullopt;
  std::string out;
  std::set<std::string> given;
  std::optional<std::string> user_options;
  for (PQconninfoOption* o = options.get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    std::string keyword = o->keyword;
    if (keyword == "password" && !password.empty()) continue;
    given.insert(keyword);
    if (keyword == "options") {
      user_options = o->val;  // merged with the server-side defaults below
      continue;
    }
    out += keyword + "=" + quote(o->val) + " ";
  }
  if (!password.empty()) out += "password=" + quote(password) + " ";
  if (!given.count("connect_timeout")) {
    out += "connect_timeout=" + std::to_string(connect_timeout_s) + " ";
  }
  if (!given.count("application_name")) out += "application_name='outbox-relay' ";
  for (const Setting& s : kClientDefaults) {
    if (!given.count(s.name)) out += std::string(s.name) + "=" + s.value + " ";
  }
  // Setting `options` here hides PGOPTIONS from libpq: take it in as the user's options.
  if (!user_options) {
    const char* env = std::getenv("PGOPTIONS");
    user_options = env ? env : "";
  }
  out += "options=" + quote(with_server_defaults(*user_options));
  return out;
}

std::string redact_dsn(const std::string& dsn) {
  Options options = parse(dsn, nullptr);
  if (!options) return "(unparsable connection string)";
  std::string out;
  for (PQconninfoOption* o = options.get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    std::string keyword = o->keyword;
    std::string value = keyword == "password" ? "***" : o->val;
    out += keyword + "=" + value + " ";
  }
  if (!out.empty()) out.pop_back();
  return out;
}

}  // namespace outbox::pg
