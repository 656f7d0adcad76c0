#include <catch2/catch.hpp>

#include <sstream>

#include "metrics/registry.h"
#include "metrics/relay_metrics.h"

using namespace outbox::metrics;

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

bool has_line(const std::string& text, const std::string& line) {
  for (const auto& l : lines_of(text)) {
    if (l == line) return true;
  }
  return false;
}

// The value of the sample line starting with `series` + " ", or NaN.
double sample(const std::string& text, const std::string& series) {
  for (const auto& l : lines_of(text)) {
    if (l.rfind(series + " ", 0) == 0) return std::stod(l.substr(series.size() + 1));
  }
  return std::nan("");
}

struct FakeTime {
  std::chrono::steady_clock::time_point now{std::chrono::hours(1000)};
};

RelayMetricsOptions options_with(FakeTime& t) {
  RelayMetricsOptions o;
  o.version = "1.2.3";
  o.librdkafka_version = "2.8.0";
  o.mode = "polling";
  o.max_topic_labels = 2;
  o.now = [&t] { return t.now; };
  return o;
}

}  // namespace

TEST_CASE("label values and help texts are escaped as the text format wants", "[metrics]") {
  CHECK(escape_label_value("a\\b\"c\nd") == "a\\\\b\\\"c\\nd");
  CHECK(escape_help("x\\y\nz \"q\"") == "x\\\\y\\nz \"q\"");
  Registry r;
  r.counter("t_total", "help with \\ and\nnewline", {{"topic", "we\"ird\\top\nic"}}).inc(3);
  std::string text = r.expose();
  CHECK(has_line(text, "# HELP t_total help with \\\\ and\\nnewline"));
  CHECK(has_line(text, "# TYPE t_total counter"));
  CHECK(has_line(text, "t_total{topic=\"we\\\"ird\\\\top\\nic\"} 3"));
}

TEST_CASE("values: integers plainly, infinities and NaN by name", "[metrics]") {
  CHECK(format_value(0) == "0");
  CHECK(format_value(42) == "42");
  CHECK(format_value(-7) == "-7");
  CHECK(format_value(0.25) == "0.25");
  CHECK(format_value(1.0 / 0.0) == "+Inf");
  CHECK(format_value(-1.0 / 0.0) == "-Inf");
  CHECK(format_value(std::nan("")) == "NaN");
}

TEST_CASE("histogram buckets are cumulative and end with +Inf == _count", "[metrics]") {
  Registry r;
  Histogram& h = r.histogram("lat_seconds", "latency", {0.1, 1, 10});
  for (double v : {0.05, 0.1, 0.5, 2.0, 20.0, 30.0}) h.observe(v);
  std::string text = r.expose();
  CHECK(has_line(text, "# TYPE lat_seconds histogram"));
  CHECK(has_line(text, "lat_seconds_bucket{le=\"0.1\"} 2"));  // le: 0.1 itself counts
  CHECK(has_line(text, "lat_seconds_bucket{le=\"1\"} 3"));
  CHECK(has_line(text, "lat_seconds_bucket{le=\"10\"} 4"));
  CHECK(has_line(text, "lat_seconds_bucket{le=\"+Inf\"} 6"));
  CHECK(has_line(text, "lat_seconds_count 6"));
  CHECK(sample(text, "lat_seconds_sum") == Approx(52.65));
  // Labels of the series come before le.
  r.histogram("lat_seconds", "latency", {0.1, 1, 10}, {{"op", "mark"}}).observe(0.2);
  text = r.expose();
  CHECK(has_line(text, "lat_seconds_bucket{op=\"mark\",le=\"0.1\"} 0"));
  CHECK(has_line(text, "lat_seconds_bucket{op=\"mark\",le=\"+Inf\"} 1"));
  CHECK(has_line(text, "lat_seconds_sum{op=\"mark\"} 0.2"));
}

TEST_CASE("a family's HELP and TYPE come once, before all its series", "[metrics]") {
  Registry r;
  r.gauge("g", "a gauge", {{"k", "a"}}).set(1);
  r.counter("c_total", "a counter").inc();
  r.gauge("g", "a gauge", {{"k", "b"}}).set(2.5);
  auto lines = lines_of(r.expose());
  REQUIRE(lines.size() == 7);
  CHECK(lines[0] == "# HELP g a gauge");
  CHECK(lines[1] == "# TYPE g gauge");
  CHECK(lines[2] == "g{k=\"a\"} 1");
  CHECK(lines[3] == "g{k=\"b\"} 2.5");
  CHECK(lines[4] == "# HELP c_total a counter");
  CHECK(lines[6] == "c_total 1");
}

TEST_CASE("bad names and conflicting registrations are refused", "[metrics]") {
  Registry r;
  CHECK_THROWS_AS(r.counter("1bad", "x"), std::invalid_argument);
  CHECK_THROWS_AS(r.counter("ok_total", "x", {{"bad-label", "v"}}), std::invalid_argument);
  CHECK_THROWS_AS(r.histogram("h", "x", {1}, {{"le", "v"}}), std::invalid_argument);
  r.counter("same", "x");
  CHECK_THROWS_AS(r.gauge("same", "x"), std::invalid_argument);
  CHECK_THROWS_AS(Histogram({1, 1}), std::invalid_argument);
}

TEST_CASE("the observer counts what the loop reports", "[metrics][observer]") {
  FakeTime t;
  Registry reg;
  RelayMetrics m(reg, options_with(t));
  using namespace std::chrono_literals;
  m.on_read(0, 0, 1ms);  // idle reads are not batches
  m.on_read(3, 300, 2ms);
  m.on_delivery("orders", true, outbox::core::FailureKind::transient, 4ms);
  m.on_delivery("orders", false, outbox::core::FailureKind::transient, 5ms);
  m.on_delivery("orders", false, outbox::core::FailureKind::permanent, 5ms);
  m.on_recorded(1, 1, 1, 3ms);
  m.on_dead_lettered("orders", 1);
  m.on_dead_lettered("a", 1);
  m.on_dead_lettered("b", 2);  // past the cap of 2 topics: "other"
  m.on_dead_lettered("orders", 1);
  m.on_topic_blocked("x", true);
  m.on_topic_blocked("y", true);
  m.on_topic_blocked("x", false);
  CHECK(sample(m.expose(), "outbox_relay_rows_vanished_total") == 0);  // exposed from the start
  m.on_vanished(2);
  std::string text = m.expose();
  CHECK(sample(text, "outbox_relay_rows_vanished_total") == 2);
  CHECK(sample(text, "outbox_relay_events_published_total") == 1);
  CHECK(sample(text, "outbox_relay_events_retried_total") == 1);
  CHECK(sample(text, "outbox_relay_events_failed_total{reason=\"transient\"}") == 1);
  CHECK(sample(text, "outbox_relay_events_failed_total{reason=\"permanent\"}") == 1);
  CHECK(sample(text, "outbox_relay_events_dead_lettered_total{topic=\"orders\"}") == 2);
  CHECK(sample(text, "outbox_relay_events_dead_lettered_total{topic=\"a\"}") == 1);
  CHECK(sample(text, "outbox_relay_events_dead_lettered_total{topic=\"other\"}") == 2);
  CHECK(text.find("topic=\"b\"") == std::string::npos);
  CHECK(sample(text, "outbox_relay_batch_size_count") == 1);
  CHECK(sample(text, "outbox_relay_batch_size_bucket{le=\"5\"}") == 1);
  CHECK(sample(text, "outbox_relay_batch_size_bucket{le=\"1\"}") == 0);
  CHECK(sample(text, "outbox_relay_publish_duration_seconds_count") == 3);
  CHECK(sample(text, "outbox_relay_publish_duration_seconds_bucket{le=\"0.004\"}") == 1);
  CHECK(sample(text, "outbox_relay_mark_duration_seconds_count") == 1);
  CHECK(sample(text, "outbox_relay_blocked_topics") == 1);
  CHECK(has_line(text,
                 "outbox_relay_build_info{version=\"1.2.3\",librdkafka_version=\"2.8.0\","
                 "mode=\"polling\"} 1"));
  CHECK(sample(text, "outbox_relay_process_start_time_seconds") > 1.7e9);
  // Slot gauges exist in replication mode only.
  CHECK(text.find("replication_slot") == std::string::npos);
}

TEST_CASE("healthz: fails once the loop has not ticked for stuck_after", "[metrics][health]") {
  FakeTime t;
  Registry reg;
  RelayMetrics m(reg, options_with(t));
  CHECK(m.healthy());
  t.now += std::chrono::seconds(59);
  CHECK(m.healthy());
  t.now += std::chrono::seconds(2);
  CHECK_FALSE(m.healthy());
  m.on_tick();
  CHECK(m.healthy());
}

TEST_CASE("readyz: PostgreSQL, Kafka, and leader publishing or a healthy standby",
          "[metrics][health]") {
  FakeTime t;
  Registry reg;
  RelayMetrics m(reg, options_with(t));
  Role role = Role::disconnected;
  m.set_role_source([&role] { return role; });
  CHECK(m.not_ready_reason() == std::optional<std::string>("PostgreSQL not checked yet"));
  m.set_postgres(false, "connection refused\n\tIs the server running?");
  CHECK(*m.not_ready_reason() ==
        "PostgreSQL unreachable: connection refused \tIs the server running?");  // one line
  m.set_postgres(true, "");
  CHECK(*m.not_ready_reason() == "Kafka not checked yet");
  m.set_kafka(false, "Local: Broker transport failure");
  CHECK(*m.not_ready_reason() == "Kafka unreachable: Local: Broker transport failure");
  m.set_kafka(true, "");
  CHECK(m.not_ready_reason()->find("no PostgreSQL session") == 0);
  role = Role::standby;
  CHECK_FALSE(m.not_ready_reason());
  CHECK(sample(m.expose(), "outbox_relay_role{role=\"standby\"}") == 1);
  role = Role::leader;
  CHECK_FALSE(m.not_ready_reason());
  std::string text = m.expose();
  CHECK(sample(text, "outbox_relay_role{role=\"leader\"}") == 1);
  CHECK(sample(text, "outbox_relay_role{role=\"standby\"}") == 0);
  // A leader whose loop fails is not ready until it publishes (or reads an empty outbox).
  m.on_failure("Kafka did not deliver 3 messages");
  CHECK(*m.not_ready_reason() == "leader, not publishing: Kafka did not deliver 3 messages");
  m.on_read(3, 30, std::chrono::milliseconds(1));
  m.on_recorded(0, 0, 0, std::chrono::milliseconds(1));
  CHECK(m.not_ready_reason());  // rows read but nothing published: still failing
  m.on_recorded(3, 0, 0, std::chrono::milliseconds(1));
  CHECK_FALSE(m.not_ready_reason());
  m.on_failure("PostgreSQL: gone");
  m.on_read(0, 0, std::chrono::milliseconds(1));
  CHECK_FALSE(m.not_ready_reason());
}

TEST_CASE("replication mode exposes the slot gauges", "[metrics]") {
  FakeTime t;
  Registry reg;
  RelayMetricsOptions o = options_with(t);
  o.mode = "replication";
  RelayMetrics m(reg, o);
  m.set_slot(4096, 128);
  m.set_outbox(7, 1.5, 2);
  std::string text = m.expose();
  CHECK(sample(text, "outbox_relay_replication_slot_retained_wal_bytes") == 4096);
  CHECK(sample(text, "outbox_relay_replication_slot_confirmed_lag_bytes") == 128);
  CHECK(sample(text, "outbox_relay_pending_events") == 7);
  CHECK(sample(text, "outbox_relay_oldest_pending_age_seconds") == 1.5);
  CHECK(sample(text, "outbox_relay_dead_lettered_events") == 2);
}
