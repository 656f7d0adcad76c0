#include "kafka/client_conf.h"

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <unordered_set>

namespace outbox::kafka {

bool is_producer_only_property(const std::string& name) {
  // librdkafka's own table of properties, with a C/P column ("P": producer only).
  static const std::unordered_set<std::string> producer_only = [] {
    std::unordered_set<std::string> names;
    char* buf = nullptr;
    std::size_t len = 0;
    FILE* f = open_memstream(&buf, &len);
    if (f == nullptr) return names;
    rd_kafka_conf_properties_show(f);
    std::fclose(f);
    std::istringstream table(std::string(buf, len));
    std::free(buf);
    std::string line;
    while (std::getline(table, line)) {
      auto bar = line.find('|');
      if (bar == std::string::npos || bar + 1 >= line.size()) continue;
      auto end = line.find('|', bar + 1);
      if (end == std::string::npos) continue;
      std::string scope = line.substr(bar + 1, end - bar - 1);
      std::string prop = line.substr(0, bar);
      prop.erase(prop.find_last_not_of(' ') + 1);
      if (scope.find('P') != std::string::npos && scope.find('C') == std::string::npos &&
          scope.find('*') == std::string::npos) {
        names.insert(prop);
      }
    }
    return names;
  }();
  return producer_only.count(name) > 0;
}

Conf client_conf(ClientKind kind, const config::KafkaConfig& kafka, const Properties& defaults,
                 const Properties& fixed) {
  Conf conf(rd_kafka_conf_new());
  char err[512];
  auto set = [&](const std::string& name, const std::string& value, const std::string& where) {
    if (rd_kafka_conf_set(conf.get(), name.c_str(), value.c_str(), err, sizeof err) !=
        RD_KAFKA_CONF_OK) {
      throw std::runtime_error(where + name + ": " + err);
    }
  };
  for (const auto& [name, value] : defaults) set(name, value, "kafka property ");
  for (const auto& [name, value] : kafka.properties) {
    if (kind == ClientKind::consumer && is_producer_only_property(name)) continue;
    set(name, value, "kafka.properties.");
  }
  for (const auto& [name, value] : fixed) set(name, value, "kafka property ");
  return conf;
}

}  // namespace outbox::kafka
