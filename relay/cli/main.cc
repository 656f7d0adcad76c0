// outbox-relay: publishes committed PostgreSQL outbox rows to Kafka.
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "audit/audit.h"
#include "cli/commands.h"
#include "common/logging.h"
#include "kafka/kafka_publisher.h"

namespace {

constexpr const char* kHelp = R"(outbox-relay: publishes committed PostgreSQL outbox rows to Kafka.

Usage: outbox-relay <command> --config FILE [--log-level LEVEL] [command options]

Commands:
  run       Read committed rows of outbox.events (source.mode: polling, or replication
            through a logical slot), publish each to Kafka with the idempotent producer
            (acks=all), mark it published once Kafka acknowledged it. Runs until SIGTERM or
            SIGINT, then finishes the batch in flight (relay.shutdown_timeout_ms).
  migrate   Apply the SQL migrations of schema/ (embedded) that are missing. Safe to run
            twice and from two processes at once.
  check     Check the config, that PostgreSQL and Kafka answer, that the schema is present
            and that the relay's role may read and mark rows; in replication mode also
            wal_level, the REPLICATION privilege, the publication and the slot (wal_status,
            retained WAL). One line per check.
  replay    Make dead-lettered rows pending again, after fixing what made them fail:
              replay --id N [--id N ...]     these rows (also --id N,M,...)
              replay --topic T               every dead-lettered row of row topic T
              replay --all-dead-lettered     every dead-lettered row
            Works in both source modes while a relay runs: each row is re-inserted with
            the same outbox-event-id and a new id (published after the rows before it).
  audit     Compare outbox.events with the Kafka topics its rows went to (reads both,
            changes nothing): rows, messages, published, pending, dead-lettered, lost
            (marked published, no message), duplicates, per-key order violations.

Options:
  --config FILE       YAML configuration (default: $OUTBOX_RELAY_CONFIG).
  --log-level LEVEL   Overrides log.level: trace, debug, info, warn, error, off.
  --since VALUE       audit: only rows created since VALUE, an ISO timestamp
                      (2024-05-01T12:00:00Z) or a time ago (90s, 30m, 12h, 7d).
  --json              audit: the report as one JSON object.
  -h, --help          This text.
  --version           The version.

Exit codes:
  0  success (run: stopped by a signal after finishing its batch)
  1  a check failed, a migration failed, or run stopped on an error it cannot retry
     (replication slot invalidated or used by another process, undecodable stream);
     audit found lost rows or order violations (duplicates alone pass), or could not
     read PostgreSQL or Kafka
  2  bad command line or invalid configuration (every error is printed with key and line)

The smallest configuration:
  postgres:
    dsn: "host=db dbname=app user=relay"
  kafka:
    bootstrap_servers: "kafka:9092"
)";

// "12" or "12,13,14" appended to `ids`; false when a part is not a positive number.
bool parse_ids(const std::string& text, std::vector<std::int64_t>& ids) {
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    std::int64_t id = 0;
    auto [ptr, ec] = std::from_chars(text.data() + start, text.data() + end, id);
    if (ec != std::errc() || ptr != text.data() + end || id <= 0) return false;
    ids.push_back(id);
    start = end + 1;
  }
  return true;
}

int usage_error(const std::string& message) {
  std::fprintf(stderr, "outbox-relay: %s\nTry 'outbox-relay --help'.\n", message.c_str());
  return outbox::cli::kUsage;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace outbox;
  std::string command, config_path, log_level;
  pg::ReplaySelection replay;
  int replay_selectors = 0;
  std::optional<std::string> audit_since;  // audit's options
  bool audit_json = false;
  if (const char* env = std::getenv("OUTBOX_RELAY_CONFIG")) config_path = env;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help" || arg == "help") {
      std::fputs(kHelp, stdout);
      return cli::kOk;
    } else if (arg == "--version") {
      std::printf("outbox-relay %s\n", OUTBOX_RELAY_VERSION);
      return cli::kOk;
    } else if (arg == "--config" || arg == "--log-level") {
      if (i + 1 >= argc) return usage_error(arg + " needs a value");
      (arg == "--config" ? config_path : log_level) = argv[++i];
    } else if (arg == "--id" || arg == "--topic") {
      if (i + 1 >= argc) return usage_error(arg + " needs a value");
      std::string value = argv[++i];
      if (arg == "--topic") {
        replay.topic = value;
        ++replay_selectors;
        continue;
      }
      if (replay.ids.empty()) ++replay_selectors;
      if (!parse_ids(value, replay.ids)) return usage_error("--id takes row ids, got " + value);
    } else if (arg == "--all-dead-lettered") {
      replay.all = true;
      ++replay_selectors;
    } else if (arg.rfind("--config=", 0) == 0) {
      config_path = arg.substr(9);
    } else if (arg.rfind("--log-level=", 0) == 0) {
      log_level = arg.substr(12);
    } else if (arg == "--since") {
      if (i + 1 >= argc) return usage_error(arg + " needs a value");
      audit_since = argv[++i];
    } else if (arg.rfind("--since=", 0) == 0) {
      audit_since = arg.substr(8);
    } else if (arg == "--json") {
      audit_json = true;
    } else if (!arg.empty() && arg[0] == '-') {
      return usage_error("unknown option " + arg);
    } else if (command.empty()) {
      command = arg;
    } else {
      return usage_error("unexpected argument " + arg);
    }
  }
  if (command.empty()) {
    return usage_error("no command given (run, migrate, check, replay or audit)");
  }
  if (command != "run" && command != "migrate" && command != "check" && command != "replay" &&
      command != "audit") {
    return usage_error("unknown command " + command);
  }
  if (command == "replay" && replay_selectors != 1) {
    return usage_error("replay needs exactly one of --id N, --topic T, --all-dead-lettered");
  }
  if (command != "replay" && replay_selectors != 0) {
    return usage_error("--id, --topic and --all-dead-lettered belong to replay");
  }
  if ((audit_since || audit_json) && command != "audit") {
    return usage_error("--since and --json are options of audit");
  }
  if (config_path.empty()) return usage_error("--config FILE is required");
  if (!log_level.empty() && !config::is_log_level(log_level)) {
    return usage_error("--log-level must be one of trace, debug, info, warn, error, off, got " +
                       log_level);
  }

  if (auto problem = kafka::librdkafka_version_problem()) {
    std::fprintf(stderr, "outbox-relay: %s\n", problem->c_str());
    return cli::kFailure;
  }

  config::ParseOptions options;
  options.kafka_check = kafka::check_property;
  config::ParseResult parsed = config::load_config_file(config_path, options);
  if (!parsed.config) {
    std::fprintf(stderr, "outbox-relay: invalid configuration %s:\n", config_path.c_str());
    for (const auto& e : parsed.errors) std::fprintf(stderr, "  %s\n", e.to_string().c_str());
    return cli::kUsage;
  }
  config::Config& config = *parsed.config;
  if (!log_level.empty()) config.log.level = log_level;
  logging::setup(config.log.level, config.log.format == config::LogFormat::json
                                       ? logging::Format::json
                                       : logging::Format::text);
  for (const auto& w : parsed.warnings) logging::get("cli")->warn("{}", w);

  if (command == "run") return cli::run_relay(config);
  if (command == "migrate") return cli::run_migrate(config);
  if (command == "replay") return cli::run_replay(config, replay);
  if (command == "audit") {
    audit::AuditOptions audit_options;
    audit_options.since = audit_since;
    audit_options.json = audit_json;
    return audit::run_audit(config, audit_options);
  }
  return cli::run_check(config);
}
