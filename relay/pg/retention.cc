#include "pg/retention.h"

#include <memory>

#include "common/logging.h"

namespace outbox::pg {

namespace {

constexpr const char* kDeletePublished = "outbox.delete_published";
constexpr const char* kDeleteDeadLettered = "outbox.delete_dead_lettered";
// How often leadership is looked at while this process stands by.
constexpr std::chrono::milliseconds kLeaderCheck{1000};
// Rounds that deleted something are summed up in one log line this often.
constexpr std::chrono::seconds kReportEvery{60};

std::string one_line(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

}  // namespace

Retention::Retention(Conninfo conninfo, std::string redacted, RetentionSettings settings,
                     std::function<bool()> is_leader, std::function<bool()> stopping,
                     core::Clock& clock)
    : conninfo_(std::move(conninfo)),
      redacted_(std::move(redacted)),
      settings_(settings),
      is_leader_(std::move(is_leader)),
      stopping_(stopping ? std::move(stopping) : [] { return false; }),
      clock_(clock) {}

Retention::~Retention() { stop(); }

void Retention::start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { loop(); });
}

void Retention::stop() noexcept {
  stop_ = true;  // the pause's clock looks at it between slices
  if (thread_.joinable()) thread_.join();
}

bool Retention::should_stop() { return stop_.load() || stopping_(); }

bool Retention::pause(std::chrono::milliseconds d) {
  clock_.sleep_for(d, [this] { return should_stop(); });
  return should_stop();
}

std::uint64_t Retention::delete_all(pqxx::connection& conn, const char* function,
                                    std::chrono::seconds age) {
  std::uint64_t total = 0;
  const std::string sql = std::string("SELECT ") + function + "(make_interval(secs => $1), $2)";
  // Between two calls: still the leader, not stopping. Each call is its own transaction.
  while (!should_stop() && is_leader_()) {
    pqxx::nontransaction n(conn);
    int deleted =
        n.exec_params1(sql, static_cast<double>(age.count()), settings_.batch_size)[0].as<int>();
    total += static_cast<std::uint64_t>(deleted);
    if (deleted < settings_.batch_size) break;
  }
  return total;
}

void Retention::loop() {
  auto log = logging::get("retention");
  log->info("retention on: published rows deleted {} s after publishing, dead-lettered rows {}",
            settings_.published_after.count(),
            settings_.dead_lettered_after.count() > 0
                ? "after " + std::to_string(settings_.dead_lettered_after.count()) + " s"
                : std::string("kept"));
  std::unique_ptr<pqxx::connection> conn;
  std::uint64_t unreported_published = 0;
  std::uint64_t unreported_dead = 0;
  auto last_report = clock_.now();
  std::string last_error;
  while (!should_stop()) {
    if (!is_leader_()) {
      conn.reset();  // a standby holds no extra session
      if (pause(kLeaderCheck)) break;
      continue;
    }
    try {
      if (!conn) {
        conn = std::make_unique<pqxx::connection>(conninfo_.current());
        pqxx::nontransaction n(*conn);
        // A call never waits long: rows locked by others are skipped, and a table lock
        // (DDL, a migration) makes the call fail and wait for the next round instead.
        n.exec("SET lock_timeout = '1s'");
        n.exec("SET statement_timeout = '60s'");
        n.exec("SET application_name = 'outbox-relay retention'");
      }
      std::uint64_t published = delete_all(*conn, kDeletePublished, settings_.published_after);
      std::uint64_t dead = 0;
      if (settings_.dead_lettered_after.count() > 0) {
        dead = delete_all(*conn, kDeleteDeadLettered, settings_.dead_lettered_after);
      }
      deleted_published_ += published;
      deleted_dead_lettered_ += dead;
      unreported_published += published;
      unreported_dead += dead;
      if (!last_error.empty()) {
        log->info("retention works again");
        last_error.clear();
      }
      log->debug("retention round: deleted {} published and {} dead-lettered rows", published,
                 dead);
    } catch (const std::exception& e) {
      conn.reset();
      std::string what = one_line(e.what());
      if (what != last_error) {  // once per distinct error, not every round
        std::string hint;
        if (dynamic_cast<const pqxx::undefined_function*>(&e) ||
            dynamic_cast<const pqxx::insufficient_privilege*>(&e)) {
          hint =
              " (the retention functions come with schema 0006: run `outbox-relay migrate` "
              "with a privileged role, or set retention.enabled: false)";
        }
        log->warn("retention: {}{}; trying again every {} ms", what, hint,
                  settings_.interval.count());
        last_error = what;
      }
    }
    auto now = clock_.now();
    if (now - last_report >= kReportEvery && (unreported_published || unreported_dead)) {
      log->info("retention deleted {} published and {} dead-lettered rows in the last {} s",
                unreported_published, unreported_dead,
                std::chrono::duration_cast<std::chrono::seconds>(now - last_report).count());
      unreported_published = unreported_dead = 0;
      last_report = now;
    }
    if (pause(settings_.interval)) break;
  }
  if (unreported_published || unreported_dead) {
    log->info("retention deleted {} published and {} dead-lettered rows since its last report",
              unreported_published, unreported_dead);
  }
}

}  // namespace outbox::pg
