// outbox-relay: publishes committed PostgreSQL outbox rows to Kafka.
// The command line (CLI11): one subcommand per command, each with its own --help.
#include <CLI/CLI.hpp>

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "audit/audit.h"
#include "cli/commands.h"
#include "common/logging.h"
#include "kafka/kafka_publisher.h"

namespace {

constexpr const char* kFooter = R"(Exit codes:
  0  success (run: stopped by a signal after finishing its batch)
  1  a check failed, a migration failed, or run stopped on an error it cannot retry
     (replication slot invalidated or used by another process, undecodable stream, a
     connection pooler in transaction or statement mode, a pooler in replication mode);
     audit found lost rows or order violations (duplicates alone pass), or could not
     read PostgreSQL or Kafka; status could not read PostgreSQL; takeover refused or
     failed (nothing changed)
  2  bad command line or invalid configuration (every error is printed with key and line)

The smallest configuration:
  postgres:
    dsn: "host=db dbname=app user=relay"
  kafka:
    bootstrap_servers: "kafka:9092"
)";

constexpr const char* kRunHelp =
    "Read committed rows of outbox.events (source.mode: polling, or replication through a "
    "logical slot), publish each to Kafka with the idempotent producer (acks=all), mark it "
    "published once Kafka acknowledged it. Runs until SIGTERM or SIGINT, then waits up to "
    "relay.shutdown_timeout_ms for the messages in flight, marks what Kafka acknowledged and "
    "leaves the rest pending. Serves /metrics, /healthz and /readyz on "
    "http.address:http.port unless http.enabled is false.";
constexpr const char* kMigrateHelp =
    "Apply the SQL migrations of schema/ (embedded) that are missing. Safe to run twice and "
    "from two processes at once. Connects with --dsn, else postgres.admin_dsn, else "
    "postgres.dsn.";
constexpr const char* kCheckHelp =
    "Check the config, that PostgreSQL answers, that the relay's session is its own (no "
    "connection pooler in transaction or statement mode between), its version is supported in "
    "the configured mode (13 to 18; the line also says whether CI tests it) and it "
    "takes writes (not a hot standby, sessions not read-only), that "
    "Kafka answers, that the schema is present and that the relay's role may read and mark "
    "rows, whether polling reads keep a read floor (and if not, why); in replication mode also "
    "wal_level, the REPLICATION privilege (on RDS and Aurora "
    "membership of rds_replication), the publication and the slot (wal_status, retained WAL), "
    "with the fixes of a managed service (RDS, Aurora, Cloud SQL, Azure) where one is "
    "recognised; with delivery.guarantee: exactly_once, that the "
    "cluster allows Kafka transactions. One line per check, a fix under each failure.";
constexpr const char* kStatusHelp =
    "Show the outbox as PostgreSQL sees it (read-only): pending rows and the age of the "
    "oldest, dead-lettered rows, which session leads (pid, application_name, client address "
    "of the holder of the leader lock), and in replication mode the slot (wal_status, "
    "confirmed position, retained WAL).";
constexpr const char* kReplayHelp =
    "Make dead-lettered rows pending again, after fixing what made them fail: exactly one of "
    "--id, --topic, --all-dead-lettered. Works in both source modes while a relay runs: each "
    "row is re-inserted with the same outbox-event-id and a new id (published after the rows "
    "before it).";
constexpr const char* kAuditHelp =
    "Compare outbox.events with the Kafka topics its rows went to (reads both, changes "
    "nothing): rows, messages, published, pending, dead-lettered, lost (marked published, no "
    "message), duplicates, per-key order violations.";
constexpr const char* kTakeoverHelp =
    "Take over from a stopped Debezium PostgreSQL connector (pgoutput, outbox EventRouter) "
    "reading outbox.events or a source table: refused while its slot is in use, or, for a "
    "source table, before the slot confirmed the position where the copy trigger was "
    "installed. Decodes the slot without consuming it, in one snapshot: the pending rows "
    "Debezium confirmed are marked published (published_by names the slot), the rest stay "
    "pending for the relay (at most Debezium's messages past its last confirmed position are "
    "published twice). One transaction; safe to run again. Connects with --dsn, else "
    "postgres.admin_dsn, else postgres.dsn (a role with REPLICATION).";

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
  std::string config_path, log_level;
  if (const char* env = std::getenv("OUTBOX_RELAY_CONFIG")) config_path = env;
  std::vector<std::string> replay_ids;
  std::string replay_topic;
  bool replay_all = false;
  std::optional<std::string> audit_since;
  std::optional<std::string> migrate_dsn;
  std::optional<std::string> takeover_dsn;
  replication::TakeoverOptions takeover_options;
  bool json = false;

  CLI::App app{"outbox-relay: publishes committed PostgreSQL outbox rows to Kafka.",
               "outbox-relay"};
  app.footer(kFooter);
  app.set_version_flag("--version", std::string("outbox-relay ") + OUTBOX_RELAY_VERSION,
                       "The version.");
  app.set_help_flag("-h,--help", "This text (with a command: that command's options).");
  app.require_subcommand(0, 1);
  // --config and --log-level are taken before the command or after it.
  auto common = [&](CLI::App* a) {
    a->add_option("--config", config_path, "YAML configuration (default: $OUTBOX_RELAY_CONFIG).")
        ->type_name("FILE");
    a->add_option("--log-level", log_level,
                  "Overrides log.level: trace, debug, info, warn, error, off.")
        ->type_name("LEVEL");
  };
  common(&app);
  CLI::App* run = app.add_subcommand("run", kRunHelp);
  CLI::App* migrate = app.add_subcommand("migrate", kMigrateHelp);
  CLI::App* check = app.add_subcommand("check", kCheckHelp);
  CLI::App* status = app.add_subcommand("status", kStatusHelp);
  CLI::App* replay = app.add_subcommand("replay", kReplayHelp);
  CLI::App* audit = app.add_subcommand("audit", kAuditHelp);
  CLI::App* takeover = app.add_subcommand("takeover", kTakeoverHelp);
  for (CLI::App* sub : {run, migrate, check, status, replay, audit, takeover}) common(sub);
  migrate
      ->add_option("--dsn", migrate_dsn,
                   "libpq connection string of a role allowed to create the schema (overrides "
                   "postgres.admin_dsn).")
      ->type_name("DSN");
  status->add_flag("--json", json, "The status as one JSON object.");
  replay->add_option("--id", replay_ids, "These rows: --id N [--id N ...] or --id N,M,...")
      ->type_name("N[,N...]")
      ->allow_extra_args(false);
  replay->add_option("--topic", replay_topic, "Every dead-lettered row of row topic T.")
      ->type_name("T");
  replay->add_flag("--all-dead-lettered", replay_all, "Every dead-lettered row.");
  audit
      ->add_option("--since", audit_since,
                   "Only rows created since VALUE, an ISO timestamp (2024-05-01T12:00:00Z) or a "
                   "time ago (90s, 30m, 12h, 7d).")
      ->type_name("VALUE");
  audit->add_flag("--json", json, "The report as one JSON object.");
  takeover
      ->add_option("--slot", takeover_options.slot,
                   "Debezium's replication slot (its slot.name; Debezium's default: debezium).")
      ->type_name("NAME")
      ->required();
  takeover
      ->add_option("--publication", takeover_options.publication,
                   "Debezium's publication (its publication.name; Debezium's default: "
                   "dbz_publication).")
      ->type_name("NAME")
      ->required();
  takeover->add_flag("--drop-slot", takeover_options.drop_slot,
                     "Drop the slot once the rows are marked (Debezium cannot resume from it).");
  takeover
      ->add_option("--dsn", takeover_dsn,
                   "libpq connection string of a role with REPLICATION and UPDATE on "
                   "outbox.events (overrides postgres.admin_dsn).")
      ->type_name("DSN");

  if (argc == 2 && std::string(argv[1]) == "help") {
    std::fputs(app.help().c_str(), stdout);
    return cli::kOk;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return usage_error(e.what());
  }

  CLI::App* command = app.get_subcommands().empty() ? nullptr : app.get_subcommands().front();
  if (command == nullptr) {
    return usage_error("no command given (run, migrate, check, status, replay, audit or takeover)");
  }
  pg::ReplaySelection selection;
  if (command == replay) {
    for (const auto& text : replay_ids) {
      if (!parse_ids(text, selection.ids)) return usage_error("--id takes row ids, got " + text);
    }
    if (replay->count("--topic") > 0) selection.topic = replay_topic;
    selection.all = replay_all;
    int selectors = (replay_ids.empty() ? 0 : 1) + (replay->count("--topic") > 0 ? 1 : 0) +
                    (replay_all ? 1 : 0);
    if (selectors != 1) {
      return usage_error("replay needs exactly one of --id N, --topic T, --all-dead-lettered");
    }
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

  if (command == run) return cli::run_relay(config);
  if (command == migrate) {
    if (migrate_dsn) config.postgres.admin_dsn = *migrate_dsn;
    return cli::run_migrate(config);
  }
  if (command == replay) return cli::run_replay(config, selection);
  if (command == takeover) {
    if (takeover_dsn) config.postgres.admin_dsn = *takeover_dsn;
    return cli::run_takeover(config, takeover_options);
  }
  if (command == status) return cli::run_status(config, json);
  if (command == audit) {
    audit::AuditOptions audit_options;
    audit_options.since = audit_since;
    audit_options.json = json;
    return audit::run_audit(config, audit_options);
  }
  return cli::run_check(config);
}
