#include "pg/conninfo.h"

#include <arpa/inet.h>
#include <libpq-fe.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "common/logging.h"
#include "common/secret_file.h"

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

// libpq's parse errors quote the offending token, which may be (part of) the password, e.g.
// `invalid percent-encoded token: "s3cr%t"`: keep a quoted token only when it is one of
// libpq's keywords or a single punctuation character.
std::string without_secrets(const std::string& message) {
  std::set<std::string> keywords;
  if (PQconninfoOption* defaults = PQconndefaults()) {
    for (PQconninfoOption* o = defaults; o->keyword != nullptr; ++o) keywords.insert(o->keyword);
    PQconninfoFree(defaults);
  }
  std::string out;
  std::size_t pos = 0;
  for (;;) {
    std::size_t open = message.find('"', pos);
    std::size_t close = open == std::string::npos ? open : message.find('"', open + 1);
    if (close == std::string::npos) break;
    std::string token = message.substr(open + 1, close - open - 1);
    bool safe = keywords.count(token) > 0 ||
                (token.size() == 1 && std::ispunct(static_cast<unsigned char>(token[0])));
    out.append(message, pos, open - pos);
    out += safe ? "\"" + token + "\"" : std::string("\"(hidden)\"");
    pos = close + 1;
  }
  return out + message.substr(pos);
}

Options parse(const std::string& dsn, std::string* error) {
  char* message = nullptr;
  Options options(PQconninfoParse(dsn.c_str(), &message));
  if (!options && error) {
    *error = message ? without_secrets(message) : "cannot parse the connection string";
    if (!error->empty() && error->back() == '\n') error->pop_back();
  }
  PQfreemem(message);
  return options;
}

// The value the dsn gives `keyword`, else the environment variable libpq would use.
std::string value_or_env(PQconninfoOption* options, const char* keyword, const char* env) {
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (std::string(o->keyword) == keyword && o->val != nullptr && *o->val != '\0') return o->val;
  }
  const char* v = std::getenv(env);
  return v ? v : "";
}

std::vector<std::string> split_commas(const std::string& list) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    std::size_t comma = list.find(',', start);
    out.push_back(list.substr(start, comma == std::string::npos ? comma : comma - start));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

bool is_loopback_address(const std::string& text) {
  unsigned char addr[16];
  if (inet_pton(AF_INET, text.c_str(), addr) == 1) return addr[0] == 127;
  if (inet_pton(AF_INET6, text.c_str(), addr) != 1) return false;
  static constexpr unsigned char kLoopback[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  static constexpr unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return std::equal(addr, addr + 16, kLoopback) ||
         (std::equal(addr, addr + 12, kMapped) && addr[12] == 127);
}

// A host entry that never leaves the machine: a Unix socket (empty = libpq's default
// socket directory, or a path), localhost, or a loopback address.
bool is_local(const std::string& host, const std::string& hostaddr) {
  if (!hostaddr.empty()) return is_loopback_address(hostaddr);
  return host.empty() || host[0] == '/' || host[0] == '@' || host == "localhost" ||
         is_loopback_address(host);
}

}  // namespace

std::optional<std::string> weak_tls_problem(const std::string& dsn) {
  Options options = parse(dsn, nullptr);
  if (!options) return std::nullopt;  // build_conninfo reports the parse error
  std::string sslmode = value_or_env(options.get(), "sslmode", "PGSSLMODE");
  if (sslmode == "verify-full") return std::nullopt;
  std::string host_list = value_or_env(options.get(), "host", "PGHOST");
  std::string addr_list = value_or_env(options.get(), "hostaddr", "PGHOSTADDR");
  bool service = !value_or_env(options.get(), "service", "PGSERVICE").empty();
  std::vector<std::string> hosts = split_commas(host_list);
  std::vector<std::string> addrs = split_commas(addr_list);
  std::string remote;
  if (service && host_list.empty() && addr_list.empty()) remote = "the service file's host";
  for (std::size_t i = 0; remote.empty() && i < std::max(hosts.size(), addrs.size()); ++i) {
    std::string host = i < hosts.size() ? hosts[i] : "";
    std::string addr = i < addrs.size() ? addrs[i] : "";
    if (!is_local(host, addr)) remote = "host " + (addr.empty() ? host : addr);
  }
  if (remote.empty()) return std::nullopt;  // Unix socket or loopback: nothing on the wire
  std::string mode = sslmode.empty() ? "sslmode=prefer (libpq's default)" : "sslmode=" + sslmode;
  std::string risk =
      sslmode == "disable" || sslmode == "allow" || sslmode.empty() || sslmode == "prefer"
          ? "may send the password and every row unencrypted, and does not check "
            "who answers"
      : sslmode == "verify-ca" ? "does not check the server's host name"
                               : "does not check the server's certificate";
  return mode + " to " + remote + " " + risk +
         ". Use sslmode=verify-full with sslrootcert=<CA file>, or set postgres.allow_weak_tls: "
         "true to accept this";
}

std::optional<std::string> build_conninfo(const std::string& dsn, const std::string& password,
                                          int connect_timeout_s, std::string* error,
                                          bool allow_weak_tls) {
  Options options = parse(dsn, error);
  if (!options) return std::nullopt;
  if (!allow_weak_tls) {
    if (auto problem = weak_tls_problem(dsn)) {
      if (error) *error = *problem;
      return std::nullopt;
    }
  }
  std::string out;
  std::set<std::string> given;
  std::optional<std::string> user_options;
  for (PQconninfoOption* o = options.get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    std::string keyword = o->keyword;
    if (keyword == "password" && !password.empty()) continue;
    if (keyword == "client_encoding") continue;  // always UTF-8, below
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
  // Keys and headers reach Kafka as UTF-8 whatever the database's encoding (the server
  // converts), and a client encoding that cannot hold a row's characters can never make
  // every read fail: the dsn's client_encoding and PGCLIENTENCODING are overridden.
  out += "client_encoding='UTF8' ";
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

struct Conninfo::State {
  ConninfoParts parts;       // fixed after make(); password_file empty: `built` never changes
  std::mutex mutex;          // guards what follows (the store, retention and monitor threads)
  std::string password;      // the last one read (or given)
  std::string built;         // build_conninfo of parts with `password`
  bool read_failed = false;  // the last read failed: warn once per failure streak
};

Conninfo::Conninfo(std::string fixed) : state_(std::make_shared<State>()) {
  state_->built = std::move(fixed);
}

Conninfo::Conninfo(std::shared_ptr<State> state) : state_(std::move(state)) {}

std::optional<Conninfo> Conninfo::make(const ConninfoParts& parts, std::string* error) {
  auto built = build_conninfo(parts.dsn, parts.password, parts.connect_timeout_s, error,
                              parts.allow_weak_tls);
  if (!built) return std::nullopt;
  auto state = std::make_shared<State>();
  state->parts = parts;
  state->password = parts.password;
  state->built = std::move(*built);
  return Conninfo(std::move(state));
}

std::string Conninfo::current() const {
  State& s = *state_;
  std::lock_guard lock(s.mutex);
  if (s.parts.password_file.empty()) return s.built;
  std::string why;
  std::optional<std::string> password = common::read_secret_file(s.parts.password_file, &why);
  if (!password) {
    if (!s.read_failed) {
      logging::get("pg")->warn(
          "postgres.password_file: cannot read {} ({}); connecting with the password read "
          "before",
          s.parts.password_file, why);
    }
    s.read_failed = true;
    return s.built;
  }
  s.read_failed = false;
  if (*password == s.password) return s.built;
  // The dsn was accepted by make() and only the password differs: build_conninfo cannot
  // refuse it now, but keep the last good string if it ever did.
  std::string error;
  auto built = build_conninfo(s.parts.dsn, *password, s.parts.connect_timeout_s, &error,
                              s.parts.allow_weak_tls);
  if (!built) return s.built;
  logging::get("pg")->info("postgres.password_file: {} holds a new password; connecting with it",
                           s.parts.password_file);
  s.password = std::move(*password);
  s.built = std::move(*built);
  return s.built;
}

}  // namespace outbox::pg
