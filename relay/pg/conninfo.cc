#include "pg/conninfo.h"

#include <libpq-fe.h>

#include <memory>

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
  bool has_timeout = false, has_app = false;
  for (PQconninfoOption* o = options.get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    std::string keyword = o->keyword;
    if (keyword == "password" && !password.empty()) continue;
    has_timeout |= keyword == "connect_timeout";
    has_app |= keyword == "application_name";
    out += keyword + "=" + quote(o->val) + " ";
  }
  if (!password.empty()) out += "password=" + quote(password) + " ";
  if (!has_timeout) out += "connect_timeout=" + std::to_string(connect_timeout_s) + " ";
  if (!has_app) out += "application_name='outbox-relay' ";
  if (!out.empty()) out.pop_back();
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
