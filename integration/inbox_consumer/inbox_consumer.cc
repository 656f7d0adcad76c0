// inbox-consumer: an example of consuming the relay's topics exactly once in effect.
//
// Kafka delivers at least once: after a crash, a rebalance or a replay the same message comes
// again. Each message carries the header outbox-event-id. For each message, ONE PostgreSQL
// transaction calls inbox.record(consumer, event_id) (schema/inbox/0001_inbox.sql) and applies
// the event to the business tables only if the id was new; it commits; only then is the Kafka
// offset committed. A crash between the two re-delivers events whose ids are recorded: they
// change nothing. See README.md in this folder.
#include <librdkafka/rdkafka.h>

#include <pqxx/pqxx>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

std::atomic<bool> g_stop{false};
extern "C" void on_signal(int) { g_stop = true; }

__attribute__((format(printf, 1, 2))) void say(const char* fmt, ...) {
  std::va_list args;
  va_start(args, fmt);
  std::fprintf(stderr, "inbox-consumer: ");
  std::vfprintf(stderr, fmt, args);
  std::fputc('\n', stderr);
  va_end(args);
}

struct Options {
  std::string brokers, group, dsn, consumer;
  std::vector<std::string> topics;
  std::vector<std::pair<std::string, std::string>> kafka;  // --kafka NAME=VALUE
  std::string isolation = "read committed";
  int commit_every = 100;
  int commit_interval_ms = 1000;
  bool stop_at_end = false;
};

[[noreturn]] void usage(const std::string& error) {
  std::fprintf(
      stderr,
      "inbox-consumer: %s\n"
      "usage: inbox-consumer --brokers HOST:PORT --topic T [--topic T...] --group G --dsn DSN\n"
      "         [--consumer NAME] [--isolation read-committed|repeatable-read|serializable]\n"
      "         [--commit-every N] [--commit-interval-ms MS] [--stop-at-end] [--kafka "
      "NAME=VALUE...]\n",
      error.c_str());
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    auto number = [&](int low) {
      std::string v = value();
      try {
        std::size_t used = 0;
        int n = std::stoi(v, &used);
        if (used == v.size() && n >= low) return n;
      } catch (const std::exception&) {
      }
      usage(a + ": expected an integer >= " + std::to_string(low) + ", got '" + v + "'");
    };
    if (a == "--brokers") {
      o.brokers = value();
    } else if (a == "--topic") {
      o.topics.push_back(value());
    } else if (a == "--group") {
      o.group = value();
    } else if (a == "--dsn") {
      o.dsn = value();
    } else if (a == "--consumer") {
      o.consumer = value();
    } else if (a == "--isolation") {
      std::string v = value();
      std::replace(v.begin(), v.end(), '-', ' ');
      if (v != "read committed" && v != "repeatable read" && v != "serializable") {
        usage("--isolation: read-committed, repeatable-read or serializable, got '" + v + "'");
      }
      o.isolation = v;
    } else if (a == "--commit-every") {
      o.commit_every = number(1);
    } else if (a == "--commit-interval-ms") {
      o.commit_interval_ms = number(0);
    } else if (a == "--stop-at-end") {
      o.stop_at_end = true;
    } else if (a == "--kafka") {
      std::string v = value();
      auto eq = v.find('=');
      if (eq == std::string::npos || eq == 0)
        usage("--kafka: expected NAME=VALUE, got '" + v + "'");
      o.kafka.emplace_back(v.substr(0, eq), v.substr(eq + 1));
    } else {
      usage("unknown argument '" + a + "'");
    }
  }
  if (o.brokers.empty() || o.topics.empty() || o.group.empty() || o.dsn.empty()) {
    usage("--brokers, --topic, --group and --dsn are required");
  }
  if (o.consumer.empty()) o.consumer = o.group;
  return o;
}

bool looks_like_uuid(const std::string& s) {
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

// ---------------------------------------------------------------- PostgreSQL: the inbox
struct Event {
  std::string event_id, key, topic;
  std::size_t payload_bytes = 0;
  int partition = 0;
  std::int64_t offset = 0;
};

class Inbox {
 public:
  explicit Inbox(const Options& o) : opt_(o) { connect(); }

  // Applies the event once: true if applied now, false if its id was recorded before.
  // Retries serialization failures and deadlocks (40001, 40P01: REPEATABLE READ and
  // SERIALIZABLE raise them when another transaction recorded the same id or touched the same
  // rows), and reconnects after a lost connection; also when the commit's outcome is unknown,
  // since the inbox tells on the retry whether it had committed. Other SQL errors are thrown:
  // the event is not applied and its offset not committed.
  bool apply(const Event& e) {
    for (int attempt = 1;; ++attempt) {
      try {
        if (!db_) connect();
        pqxx::work tx(*db_);
        bool fresh =
            tx.exec_params1("SELECT inbox.record($1, $2::uuid)", opt_.consumer, e.event_id)[0]
                .as<bool>();
        if (fresh) {
          // The business effect: deliberately not idempotent by itself (a counter and an
          // append-only row), so a second application would show.
          tx.exec_params0(
              "INSERT INTO example.key_totals AS t (key, events, payload_bytes) VALUES ($1, 1, $2) "
              "ON CONFLICT (key) DO UPDATE SET events = t.events + 1, "
              "payload_bytes = t.payload_bytes + EXCLUDED.payload_bytes",
              e.key, static_cast<std::int64_t>(e.payload_bytes));
          tx.exec_params0(
              "INSERT INTO example.applied_events (event_id, key, kafka_topic, kafka_partition, "
              "kafka_offset) "
              "VALUES ($1::uuid, $2, $3, $4, $5)",
              e.event_id, e.key, e.topic, e.partition, e.offset);
        }
        tx.commit();
        return fresh;
      } catch (const pqxx::transaction_rollback& x) {
        ++retries;
        if (attempt % 10 == 0)
          say("still retrying %s after %d attempts: %s", e.event_id.c_str(), attempt, x.what());
      } catch (const pqxx::in_doubt_error& x) {
        ++retries;
        say("commit of %s in doubt (%s); retrying", e.event_id.c_str(), x.what());
        db_.reset();
      } catch (const pqxx::broken_connection& x) {
        ++retries;
        say("PostgreSQL connection lost (%s); reconnecting", x.what());
        db_.reset();
      }
      if (g_stop) throw std::runtime_error("stopped while retrying " + e.event_id);
      std::this_thread::sleep_for(
          std::chrono::milliseconds(std::min(1000, 5 * attempt)));  // backoff
    }
  }

  long retries = 0;

 private:
  void connect() {
    db_ = std::make_unique<pqxx::connection>(opt_.dsn);
    pqxx::nontransaction n(*db_);
    n.exec("SET default_transaction_isolation = '" + opt_.isolation +
           "'");  // one of three literals
  }

  const Options& opt_;
  std::unique_ptr<pqxx::connection> db_;
};

// ---------------------------------------------------------------- Kafka: offsets after
using Partition = std::pair<std::string, int>;

struct Offsets {
  rd_kafka_t* rk = nullptr;
  std::map<Partition, std::int64_t> pending;  // next offset to commit, for applied messages
  std::set<Partition> assigned, at_end;
  int since_commit = 0;
  std::chrono::steady_clock::time_point last_commit = std::chrono::steady_clock::now();

  // Synchronous commit of what the database holds; `only` restricts it (a revocation).
  bool commit(const rd_kafka_topic_partition_list_t* only = nullptr) {
    std::unique_ptr<rd_kafka_topic_partition_list_t,
                    decltype(&rd_kafka_topic_partition_list_destroy)>
        list(rd_kafka_topic_partition_list_new(static_cast<int>(pending.size()) + 1),
             rd_kafka_topic_partition_list_destroy);
    std::vector<Partition> taken;
    for (const auto& [tp, next] : pending) {
      if (only != nullptr &&
          rd_kafka_topic_partition_list_find(only, tp.first.c_str(), tp.second) == nullptr) {
        continue;
      }
      rd_kafka_topic_partition_list_add(list.get(), tp.first.c_str(), tp.second)->offset = next;
      taken.push_back(tp);
    }
    last_commit = std::chrono::steady_clock::now();
    since_commit = 0;
    if (taken.empty()) return true;
    rd_kafka_resp_err_t err = rd_kafka_commit(rk, list.get(), 0);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      // Nothing lost: the events are in the database; uncommitted offsets mean redeliveries,
      // which the inbox absorbs. Kept pending for the next attempt.
      say("offset commit failed: %s (kept for the next commit)", rd_kafka_err2str(err));
      return false;
    }
    for (const auto& tp : taken) pending.erase(tp);
    return true;
  }
};

void rebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* parts,
               void* opaque) {
  auto* offsets = static_cast<Offsets*>(opaque);
  bool cooperative = std::string(rd_kafka_rebalance_protocol(rk)) == "COOPERATIVE";
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    if (!cooperative) offsets->assigned.clear();
    for (int i = 0; i < parts->cnt; ++i)
      offsets->assigned.insert({parts->elems[i].topic, parts->elems[i].partition});
    if (cooperative) {
      rd_kafka_error_t* e = rd_kafka_incremental_assign(rk, parts);
      if (e != nullptr) rd_kafka_error_destroy(e);
    } else {
      rd_kafka_assign(rk, parts);
    }
    return;
  }
  // Revoked: commit what was applied on these partitions before another member takes them.
  offsets->commit(parts);
  for (int i = 0; i < parts->cnt; ++i) {
    Partition tp{parts->elems[i].topic, parts->elems[i].partition};
    offsets->assigned.erase(tp);
    offsets->at_end.erase(tp);
    offsets->pending.erase(tp);  // if the commit failed, the next owner re-reads: the inbox dedups
  }
  if (cooperative) {
    rd_kafka_error_t* e = rd_kafka_incremental_unassign(rk, parts);
    if (e != nullptr) rd_kafka_error_destroy(e);
  } else {
    rd_kafka_assign(rk, nullptr);
  }
}

rd_kafka_t* make_consumer(const Options& o, Offsets* offsets) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  std::vector<std::pair<std::string, std::string>> props = {
      {"bootstrap.servers", o.brokers},
      {"group.id", o.group},
      {"enable.auto.commit", "false"},        // offsets are committed after the database commit
      {"isolation.level", "read_committed"},  // never see aborted transactional writes
      {"auto.offset.reset", "earliest"},      // a new group starts at the beginning
      {"enable.partition.eof", o.stop_at_end ? "true" : "false"},
  };
  props.insert(props.end(), o.kafka.begin(), o.kafka.end());
  for (const auto& [name, value] : props) {
    if (rd_kafka_conf_set(conf, name.c_str(), value.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      usage("kafka property " + name + ": " + err);
    }
  }
  rd_kafka_conf_set_rebalance_cb(conf, rebalance);
  rd_kafka_conf_set_opaque(conf, offsets);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    throw std::runtime_error(std::string("cannot create the Kafka consumer: ") + err);
  }
  rd_kafka_poll_set_consumer(rk);
  return rk;
}

std::string header(const rd_kafka_message_t* m, const char* name) {
  rd_kafka_headers_t* hdrs = nullptr;
  const void* value = nullptr;
  std::size_t size = 0;
  if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR ||
      rd_kafka_header_get_last(hdrs, name, &value, &size) != RD_KAFKA_RESP_ERR_NO_ERROR ||
      value == nullptr) {
    return {};
  }
  return {static_cast<const char*>(value), size};
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = parse(argc, argv);
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  long applied = 0, duplicates = 0, rejected = 0;
  int rc = 0;
  Offsets offsets;
  std::unique_ptr<Inbox> inbox;
  try {
    inbox = std::make_unique<Inbox>(opt);
    offsets.rk = make_consumer(opt, &offsets);
  } catch (const std::exception& e) {
    say("%s", e.what());
    return 1;
  }
  rd_kafka_t* rk = offsets.rk;
  {
    auto* topics = rd_kafka_topic_partition_list_new(static_cast<int>(opt.topics.size()));
    for (const auto& t : opt.topics)
      rd_kafka_topic_partition_list_add(topics, t.c_str(), RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      say("subscribe failed: %s", rd_kafka_err2str(err));
      rd_kafka_destroy(rk);
      return 1;
    }
  }
  say("consuming %s as group %s, inbox consumer '%s', %s", opt.topics.front().c_str(),
      opt.group.c_str(), opt.consumer.c_str(), opt.isolation.c_str());

  while (!g_stop) {
    std::unique_ptr<rd_kafka_message_t, decltype(&rd_kafka_message_destroy)> m(
        rd_kafka_consumer_poll(rk, 100), rd_kafka_message_destroy);
    auto since = std::chrono::steady_clock::now() - offsets.last_commit;
    if (offsets.since_commit >= opt.commit_every ||
        since >= std::chrono::milliseconds(opt.commit_interval_ms)) {
      offsets.commit();
    }
    if (!m) {
      continue;
    }
    Partition tp{m->rkt != nullptr ? rd_kafka_topic_name(m->rkt) : "", m->partition};
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      offsets.at_end.insert(tp);
      if (opt.stop_at_end && !offsets.assigned.empty() &&
          std::includes(offsets.at_end.begin(), offsets.at_end.end(), offsets.assigned.begin(),
                        offsets.assigned.end())) {
        say("every assigned partition read to its end");
        break;
      }
      continue;
    }
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      say("kafka: %s", rd_kafka_message_errstr(m.get()));
      if (rd_kafka_fatal_error(rk, nullptr, 0) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rc = 1;
        break;
      }
      continue;
    }
    offsets.at_end.erase(tp);
    Event e;
    e.event_id = header(m.get(), "outbox-event-id");
    e.key = m->key != nullptr ? std::string(static_cast<const char*>(m->key), m->key_len) : "";
    e.topic = tp.first;
    e.partition = m->partition;
    e.offset = m->offset;
    e.payload_bytes = m->len;
    if (!looks_like_uuid(e.event_id)) {
      // Not from the relay: nothing to deduplicate on. Not applied; the offset moves past it.
      ++rejected;
      say("rejected %s/%d@%lld: no outbox-event-id header with a uuid; not applied",
          e.topic.c_str(), e.partition, static_cast<long long>(e.offset));
    } else {
      try {
        if (inbox->apply(e)) {
          ++applied;
        } else {
          ++duplicates;
          say("duplicate %s (%s/%d@%lld): already processed by '%s', skipped", e.event_id.c_str(),
              e.topic.c_str(), e.partition, static_cast<long long>(e.offset), opt.consumer.c_str());
        }
      } catch (const std::exception& x) {
        // Not applied and not committed: after the fix, a restart processes it again.
        say("cannot apply %s (%s/%d@%lld): %s", e.event_id.c_str(), e.topic.c_str(), e.partition,
            static_cast<long long>(e.offset), x.what());
        rc = 1;
        break;
      }
    }
    offsets.pending[tp] = e.offset + 1;  // only now: the database commit came first
    ++offsets.since_commit;
  }

  if (!offsets.commit()) rc = 1;
  rd_kafka_consumer_close(rk);  // leaves the group (revocation commits again, harmlessly)
  rd_kafka_destroy(rk);
  say("stopped: %ld applied, %ld duplicates skipped, %ld rejected, %ld retries", applied,
      duplicates, rejected, inbox->retries);
  return rc;
}
