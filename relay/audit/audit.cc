#include "audit/audit.h"

#include <librdkafka/rdkafka.h>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <map>
#include <memory>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <unordered_set>
#include <vector>

#include "common/logging.h"
#include "core/message_mapping.h"
#include "kafka/client_conf.h"
#include "pg/conninfo.h"

namespace outbox::audit {

namespace {

// ------------------------------------------------------------------------ PostgreSQL
// The audited id range: the first row created at or after the cutoff, and the last row.
constexpr const char* kRangeSql =
    "SELECT min(id), max(id) FROM outbox.events WHERE created_at >= $1::timestamptz";
// One keyset page; rows of the range created before the cutoff come back to be skipped.
constexpr const char* kPageSql =
    "SELECT id, topic, published_at IS NOT NULL, dead_lettered_at IS NOT NULL, "
    "created_at >= $3::timestamptz, published_by IS NOT NULL FROM outbox.events "
    "WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $4";
// Before schema 0015 no row names another publisher.
constexpr const char* kPageSqlBefore0015 =
    "SELECT id, topic, published_at IS NOT NULL, dead_lettered_at IS NOT NULL, "
    "created_at >= $3::timestamptz, false FROM outbox.events "
    "WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $4";

// Rows the relay found gone when marking (schema 0008), noticed at or after the cutoff.
constexpr const char* kVanishedSql =
    "SELECT id, coalesce(event_id::text, ''), coalesce(topic, ''), acknowledged, "
    "coalesce(reused_by::text, ''), noticed_at::text FROM outbox.vanished "
    "WHERE noticed_at >= $1::timestamptz ORDER BY noticed_at, id";

// Before schema 0008 there is no such table: nothing was recorded.
void scan_vanished(pqxx::nontransaction& n, const std::string& cutoff, AuditLedger& ledger) {
  if (n.exec1("SELECT to_regclass('outbox.vanished') IS NULL")[0].as<bool>()) return;
  for (const auto& row : n.exec_params(kVanishedSql, cutoff)) {
    VanishedExample v;
    v.id = row[0].as<std::int64_t>();
    v.event_id = row[1].as<std::string>();
    v.topic = row[2].as<std::string>();
    v.acknowledged = row[3].as<bool>();
    v.reused_by = row[4].as<std::string>();
    v.noticed_at = row[5].as<std::string>();
    ledger.add_vanished(std::move(v));
  }
}

struct TableScan {
  std::set<std::string> topics;  //!< Kafka topics (after topic_map) of the audited rows
  std::optional<std::int64_t> first_id;
};

// The cutoff as PostgreSQL's text of a timestamptz ("-infinity" without --since).
std::string cutoff_text(pqxx::nontransaction& n, const std::optional<Since>& since) {
  if (!since) return "-infinity";
  if (const auto* text = std::get_if<std::string>(&*since)) {
    return n.exec_params1("SELECT $1::timestamptz::text", *text)[0].as<std::string>();
  }
  return n
      .exec_params1("SELECT (now() - $1 * interval '1 second')::text",
                    static_cast<long>(std::get<std::int64_t>(*since)))[0]
      .as<std::string>();
}

TableScan scan_rows(pqxx::nontransaction& n, const std::string& cutoff,
                    const config::Config& config, std::size_t page_size, AuditLedger& ledger) {
  TableScan scan;
  auto range = n.exec_params1(kRangeSql, cutoff);
  if (range[0].is_null()) return scan;
  const auto first = range[0].as<long>();
  const auto last = range[1].as<long>();
  scan.first_id = first;
  ledger.reserve(static_cast<std::size_t>(last - first) + 1);
  std::set<std::string> row_topics;
  long after = first - 1;
  const char* page_sql =
      n.exec1(
           "SELECT to_regclass('outbox.events') IS NOT NULL AND EXISTS (SELECT 1 FROM "
           "pg_attribute WHERE attrelid = 'outbox.events'::regclass AND attname = "
           "'published_by' AND NOT attisdropped)")[0]
              .as<bool>()
          ? kPageSql
          : kPageSqlBefore0015;
  for (;;) {
    pqxx::result page = n.exec_params(page_sql, after, last, cutoff, static_cast<long>(page_size));
    for (const auto& row : page) {
      const auto id = row[0].as<long>();
      if (row[4].as<bool>()) {
        ledger.add_row(id, row[2].as<bool>(), row[3].as<bool>(), row[5].as<bool>());
        row_topics.insert(row[1].as<std::string>());
      } else {
        ledger.skip_row(id);
      }
      after = id;
    }
    if (page.size() < page_size) break;
  }
  for (const auto& topic : row_topics) {
    std::string kafka_topic =
        core::kafka_topic(topic, config.kafka.topic_map, config.message.topic_template);
    // A row with an invalid topic name is dead-lettered, never written anywhere.
    if (core::is_valid_topic_name(kafka_topic)) scan.topics.insert(kafka_topic);
  }
  return scan;
}

// --------------------------------------------------------------------------- Kafka
void on_log(const rd_kafka_t*, int level, const char* facility, const char* text) {
  auto lvl = level <= 3   ? spdlog::level::err
             : level <= 4 ? spdlog::level::warn
             : level <= 6 ? spdlog::level::info
                          : spdlog::level::debug;
  logging::get("kafka")->log(lvl, "{}: {}", facility, text);
}

struct ConsumerDeleter {
  void operator()(rd_kafka_t* rk) const {
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
  }
};
struct MessageDeleter {
  void operator()(rd_kafka_message_t* m) const { rd_kafka_message_destroy(m); }
};
struct PartitionListDeleter {
  void operator()(rd_kafka_topic_partition_list_t* l) const {
    rd_kafka_topic_partition_list_destroy(l);
  }
};
using Consumer = std::unique_ptr<rd_kafka_t, ConsumerDeleter>;
using PartitionList = std::unique_ptr<rd_kafka_topic_partition_list_t, PartitionListDeleter>;

std::string random_group_id() {
  std::random_device rd;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%08x%08x", rd(), rd());
  return std::string("outbox-relay-audit-") + buf;
}

Consumer make_consumer(const config::KafkaConfig& kafka) {
  // A group id is required by librdkafka for assign(); nothing is ever committed to it.
  // A group.id of kafka.properties wins (group ACLs).
  kafka::Conf conf = kafka::client_conf(kafka::ClientKind::consumer, kafka,
                                        {{"bootstrap.servers", kafka.bootstrap_servers},
                                         {"client.id", "outbox-relay-audit"},
                                         {"log.connection.close", "false"},
                                         {"group.id", random_group_id()}},
                                        {{"isolation.level", "read_committed"},
                                         {"enable.auto.commit", "false"},
                                         {"enable.auto.offset.store", "false"},
                                         {"enable.partition.eof", "true"},
                                         {"auto.offset.reset", "earliest"}});
  char err[512];
  rd_kafka_conf_set_log_cb(conf.get(), on_log);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf.get(), err, sizeof err);
  if (rk == nullptr) throw std::runtime_error(std::string("cannot create a consumer: ") + err);
  conf.release();  // rd_kafka_new took it
  rd_kafka_poll_set_consumer(rk);
  return Consumer(rk);
}

struct PartitionState {
  std::int64_t high = 0;  //!< high watermark at start: read up to here
  std::int64_t next = 0;  //!< next offset expected
  bool done = true;
};
using TopicPartitions = std::map<std::string, std::vector<PartitionState>, std::less<>>;

// The partitions of `topics` and their watermarks. A topic Kafka does not know is left out
// with a warning (its published rows then count as lost).
TopicPartitions query_watermarks(rd_kafka_t* rk, const std::set<std::string>& topics,
                                 int timeout_ms, std::ostream& err_out) {
  TopicPartitions parts;
  for (const auto& topic : topics) {
    std::unique_ptr<rd_kafka_topic_t, void (*)(rd_kafka_topic_t*)> rkt(
        rd_kafka_topic_new(rk, topic.c_str(), nullptr), rd_kafka_topic_destroy);
    const rd_kafka_metadata_t* md = nullptr;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt.get(), &md, timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
      throw std::runtime_error("metadata of topic " + topic + ": " + rd_kafka_err2str(e));
    }
    std::unique_ptr<const rd_kafka_metadata_t, void (*)(const rd_kafka_metadata_t*)> guard(
        md, rd_kafka_metadata_destroy);
    if (md->topic_cnt != 1) throw std::runtime_error("no metadata for topic " + topic);
    const auto& tm = md->topics[0];
    if (tm.err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
      err_out << "audit: warning: topic " << topic
              << " does not exist in Kafka; its published rows count as lost\n";
      continue;
    }
    if (tm.err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      throw std::runtime_error("topic " + topic + ": " + rd_kafka_err2str(tm.err));
    }
    std::vector<PartitionState>& states = parts[topic];
    for (int i = 0; i < tm.partition_cnt; ++i) {
      std::int32_t p = tm.partitions[i].id;
      std::int64_t low = 0, high = 0;
      e = rd_kafka_query_watermark_offsets(rk, topic.c_str(), p, &low, &high, timeout_ms);
      if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        throw std::runtime_error("watermarks of " + topic + "/" + std::to_string(p) + ": " +
                                 rd_kafka_err2str(e));
      }
      if (static_cast<std::size_t>(p) >= states.size()) states.resize(p + 1);
      states[p] = PartitionState{high, low, high <= low};
    }
  }
  return parts;
}

bool is_hard_error(rd_kafka_resp_err_t e) {
  switch (e) {
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR__FATAL:
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
      return true;
    default:
      return false;
  }
}

// Reads every assigned partition from its beginning to its watermark into the ledger.
void consume(rd_kafka_t* rk, TopicPartitions& parts, std::chrono::milliseconds stall_limit,
             AuditLedger& ledger) {
  PartitionList assignment(rd_kafka_topic_partition_list_new(0));
  std::size_t remaining = 0;
  for (const auto& [topic, states] : parts) {
    for (std::size_t p = 0; p < states.size(); ++p) {
      if (states[p].done) continue;
      rd_kafka_topic_partition_list_add(assignment.get(), topic.c_str(),
                                        static_cast<std::int32_t>(p))
          ->offset = RD_KAFKA_OFFSET_BEGINNING;
      ++remaining;
    }
  }
  if (remaining == 0) return;
  rd_kafka_resp_err_t e = rd_kafka_assign(rk, assignment.get());
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    throw std::runtime_error(std::string("assign: ") + rd_kafka_err2str(e));
  }
  auto finish = [&](const std::string& topic, std::int32_t partition, PartitionState& state) {
    state.done = true;
    --remaining;
    PartitionList one(rd_kafka_topic_partition_list_new(1));
    rd_kafka_topic_partition_list_add(one.get(), topic.c_str(), partition);
    rd_kafka_pause_partitions(rk, one.get());  // no need to fetch what came after the start
  };
  std::string last_error;
  auto last_progress = std::chrono::steady_clock::now();
  while (remaining > 0) {
    std::unique_ptr<rd_kafka_message_t, MessageDeleter> m(rd_kafka_consumer_poll(rk, 200));
    auto now = std::chrono::steady_clock::now();
    if (now - last_progress > stall_limit) {
      std::string behind;
      for (const auto& [topic, states] : parts) {
        for (std::size_t p = 0; p < states.size(); ++p) {
          if (states[p].done) continue;
          if (!behind.empty()) behind += ", ";
          behind += topic + "/" + std::to_string(p) + " at offset " +
                    std::to_string(states[p].next) + " of " + std::to_string(states[p].high);
        }
      }
      throw std::runtime_error("no progress for " + std::to_string(stall_limit.count() / 1000) +
                               " s: " + behind +
                               (last_error.empty() ? "" : "; last error: " + last_error));
    }
    if (!m) continue;
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      char fatal[512];
      if (rd_kafka_fatal_error(rk, fatal, sizeof fatal) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        throw std::runtime_error(fatal);
      }
      last_error = rd_kafka_message_errstr(m.get());
      if (m->rkt != nullptr) {
        last_error = std::string(rd_kafka_topic_name(m->rkt)) + "/" + std::to_string(m->partition) +
                     ": " + last_error;
      }
      if (is_hard_error(m->err)) throw std::runtime_error(last_error);
      logging::get("audit")->debug("consumer: {}", last_error);  // librdkafka retries
      continue;
    }
    if (m->rkt == nullptr) continue;
    const char* topic = rd_kafka_topic_name(m->rkt);
    auto it = parts.find(std::string_view(topic));
    if (it == parts.end() || m->partition < 0 ||
        static_cast<std::size_t>(m->partition) >= it->second.size()) {
      continue;
    }
    PartitionState& state = it->second[static_cast<std::size_t>(m->partition)];
    if (state.done) continue;
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      // read_committed: the end is the last stable offset, below the watermark while a
      // transaction is open; aborted or control records leave no message behind.
      if (m->offset >= state.high) finish(it->first, m->partition, state);
      continue;
    }
    last_progress = now;
    state.next = m->offset + 1;
    if (m->offset >= state.high) {  // written after the audit started
      finish(it->first, m->partition, state);
      continue;
    }
    std::optional<std::int64_t> outbox_id;
    rd_kafka_headers_t* headers = nullptr;
    if (rd_kafka_message_headers(m.get(), &headers) == RD_KAFKA_RESP_ERR_NO_ERROR) {
      const void* value = nullptr;
      std::size_t size = 0;
      if (rd_kafka_header_get_last(headers, core::kOutboxIdHeader, &value, &size) ==
              RD_KAFKA_RESP_ERR_NO_ERROR &&
          value != nullptr) {
        outbox_id = parse_outbox_id(std::string_view(static_cast<const char*>(value), size));
      }
    }
    std::optional<std::string_view> key;
    if (m->key != nullptr) key = std::string_view(static_cast<const char*>(m->key), m->key_len);
    ledger.add_message(topic, m->partition, key, outbox_id, m->offset);
    if (state.next >= state.high) finish(it->first, m->partition, state);
  }
}

// An exception's text without the newline libpq ends its messages with.
std::string trimmed(const char* what) {
  std::string text = what;
  text.erase(text.find_last_not_of("\n\t ") + 1);
  return text;
}

void write_count(std::ostringstream& out, const char* name, std::uint64_t value,
                 const std::string& note = "") {
  out << std::left << std::setw(18) << name << std::right << std::setw(12) << value;
  if (!note.empty()) out << "  " << note;
  out << '\n';
}

}  // namespace

// --------------------------------------------------------------------------- public
std::optional<Since> parse_since(std::string_view text, std::string* error) {
  static const std::regex kAgo(R"(([0-9]{1,9})([smhd]))");
  static const std::regex kTimestamp(
      R"([0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?)"
      R"((Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?)");
  std::string s(text);
  std::smatch match;
  if (std::regex_match(s, match, kAgo)) {
    std::int64_t n = std::stoll(match[1].str());
    switch (match[2].str()[0]) {
      case 'm':
        return n * 60;
      case 'h':
        return n * 3600;
      case 'd':
        return n * 86400;
      default:
        return n;
    }
  }
  if (std::regex_match(s, kTimestamp)) return s;
  if (error) {
    *error = "--since " + s +
             ": expected an ISO timestamp (2024-05-01, 2024-05-01T12:00:00Z) or a number "
             "followed by s, m, h or d (30m)";
  }
  return std::nullopt;
}

std::string format_text(const AuditReport& r) {
  std::ostringstream out;
  std::string range;
  if (r.first_id) range = "ids " + std::to_string(*r.first_id) + ".." + std::to_string(*r.last_id);
  write_count(out, "rows", r.rows, range);
  write_count(out, "messages", r.messages);
  write_count(out, "published", r.published,
              r.published_by_other ? std::to_string(r.published_by_other) +
                                         " by another publisher before `takeover` (published_by)"
                                   : "");
  write_count(out, "pending", r.pending);
  write_count(out, "dead-lettered", r.dead_lettered);
  write_count(out, "lost", r.lost);
  write_count(out, "duplicates", r.duplicates,
              r.duplicates ? std::to_string(r.duplicated_rows) +
                                 " row(s) delivered more than once (allowed: at-least-once)"
                           : "");
  write_count(out, "order violations", r.order_violations);
  write_count(out, "unknown", r.unknown, r.unknown ? "outbox-id of no audited row" : "");
  write_count(out, "foreign", r.foreign, r.foreign ? "no outbox-id header" : "");
  if (r.ignored) write_count(out, "ignored", r.ignored, "rows outside the audit");
  if (r.vanished) {
    write_count(out, "vanished", r.vanished,
                "row(s) gone before their mark (outbox.vanished); " +
                    std::to_string(r.vanished_messages) + " of their messages in Kafka");
  }
  if (!r.lost_examples.empty()) {
    out << "lost ids:";
    for (std::size_t i = 0; i < r.lost_examples.size(); ++i) {
      out << (i ? ", " : " ") << r.lost_examples[i];
    }
    if (r.lost > r.lost_examples.size()) out << ", ...";
    out << '\n';
  }
  for (const auto& v : r.order_violation_examples) {
    out << "order violation: topic " << v.topic << " partition " << v.partition;
    if (v.offset >= 0) out << " offset " << v.offset;
    out << " key \"" << v.key << "\": outbox-id " << v.outbox_id
        << " first delivered after outbox-id " << v.after_outbox_id << '\n';
  }
  if (r.order_violations > r.order_violation_examples.size()) {
    out << "(" << r.order_violations - r.order_violation_examples.size()
        << " more order violations)\n";
  }
  for (const auto& v : r.vanished_examples) {
    out << "vanished: row " << v.id << " (event " << (v.event_id.empty() ? "unknown" : v.event_id)
        << ", topic " << (v.topic.empty() ? "unknown" : v.topic) << ") "
        << (v.acknowledged ? "acknowledged by Kafka" : "not delivered") << ", gone at "
        << v.noticed_at;
    if (!v.reused_by.empty()) out << "; its id is now event " << v.reused_by;
    out << '\n';
  }
  if (r.vanished > r.vanished_examples.size()) {
    out << "(" << r.vanished - r.vanished_examples.size() << " more vanished rows)\n";
  }
  if (r.ok()) {
    out << "OK: nothing lost, per-key order kept\n";
  } else {
    out << "FAILED: " << r.lost << " lost, " << r.order_violations << " order violation(s)\n";
  }
  return out.str();
}

std::string format_json(const AuditReport& r) {
  nlohmann::json j = {
      {"rows", r.rows},
      {"messages", r.messages},
      {"published", r.published},
      {"published_by_other", r.published_by_other},
      {"pending", r.pending},
      {"dead_lettered", r.dead_lettered},
      {"lost", r.lost},
      {"duplicates", r.duplicates},
      {"duplicated_rows", r.duplicated_rows},
      {"order_violations", r.order_violations},
      {"unknown", r.unknown},
      {"foreign", r.foreign},
      {"ignored", r.ignored},
      {"first_id", r.first_id ? nlohmann::json(*r.first_id) : nlohmann::json(nullptr)},
      {"last_id", r.last_id ? nlohmann::json(*r.last_id) : nlohmann::json(nullptr)},
      {"lost_examples", r.lost_examples},
      {"ok", r.ok()},
  };
  nlohmann::json violations = nlohmann::json::array();
  for (const auto& v : r.order_violation_examples) {
    violations.push_back({{"topic", v.topic},
                          {"partition", v.partition},
                          {"offset", v.offset},
                          {"key", v.key},
                          {"outbox_id", v.outbox_id},
                          {"after_outbox_id", v.after_outbox_id}});
  }
  j["order_violation_examples"] = violations;
  j["vanished"] = r.vanished;
  j["vanished_messages"] = r.vanished_messages;
  nlohmann::json vanished = nlohmann::json::array();
  for (const auto& v : r.vanished_examples) {
    vanished.push_back({{"id", v.id},
                        {"event_id", v.event_id},
                        {"topic", v.topic},
                        {"acknowledged", v.acknowledged},
                        {"reused_by", v.reused_by},
                        {"noticed_at", v.noticed_at}});
  }
  j["vanished_examples"] = vanished;
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

int run_audit(const config::Config& config, const AuditOptions& opts) {
  std::ostream& err = *opts.err;
  std::optional<Since> since;
  if (opts.since) {
    std::string error;
    since = parse_since(*opts.since, &error);
    if (!since) {
      err << "outbox-relay: " << error << "\n";
      return kUsage;
    }
  }
  std::string error;
  auto conninfo =
      pg::build_conninfo(config.postgres.dsn, config.postgres.password,
                         config.postgres.connect_timeout_s, &error, config.postgres.allow_weak_tls);
  if (!conninfo) {
    err << "postgres.dsn: " << error << "\n";
    return kUsage;
  }
  const std::string redacted = pg::redact_dsn(config.postgres.dsn);
  auto log = logging::get("audit");
  AuditLedger ledger;

  std::unique_ptr<pqxx::connection> conn;
  TableScan scan;
  try {
    conn = std::make_unique<pqxx::connection>(*conninfo);
    pqxx::nontransaction n(*conn);
    std::string cutoff;
    try {
      cutoff = cutoff_text(n, since);
    } catch (const pqxx::data_exception& e) {
      err << "outbox-relay: --since " << *opts.since << ": " << trimmed(e.what()) << "\n";
      return kUsage;
    }
    scan = scan_rows(n, cutoff, config, std::max<std::size_t>(opts.page_size, 1), ledger);
    scan_vanished(n, cutoff, ledger);
    if (since && scan.first_id) ledger.ignore_below(*scan.first_id);
    log->debug("read the rows{}: {} topics", since ? " since " + cutoff : std::string(),
               scan.topics.size());
  } catch (const std::exception& e) {
    err << "audit: cannot read outbox.events from PostgreSQL (" << redacted
        << "): " << trimmed(e.what()) << "\n";
    return kProblems;
  }

  try {
    Consumer consumer = make_consumer(config.kafka);
    auto timeout_ms = static_cast<int>(opts.metadata_timeout.count());
    TopicPartitions parts = query_watermarks(consumer.get(), scan.topics, timeout_ms, err);
    // Rows of messages below the watermarks were committed before them: the table's last
    // id now bounds every id the relay can have written there.
    try {
      pqxx::nontransaction n(*conn);
      auto max = n.exec1("SELECT max(id) FROM outbox.events");
      if (!max[0].is_null()) ledger.ignore_above_up_to(max[0].as<long>());
    } catch (const std::exception& e) {
      err << "audit: cannot read outbox.events from PostgreSQL (" << redacted
          << "): " << trimmed(e.what()) << "\n";
      return kProblems;
    }
    conn.reset();
    consume(consumer.get(), parts, opts.stall_timeout, ledger);
  } catch (const std::exception& e) {
    err << "audit: cannot read Kafka (" << config.kafka.bootstrap_servers
        << "): " << trimmed(e.what()) << "\n";
    return kProblems;
  }

  AuditReport report = ledger.report();
  log->debug("audit state: {} bytes", ledger.memory_bytes());
  *opts.out << (opts.json ? format_json(report) : format_text(report));
  opts.out->flush();
  return report.ok() ? kClean : kProblems;
}

}  // namespace outbox::audit
