#include "replication/replication_stream.h"

#include <pqxx/pqxx>

#include <charconv>

#include "common/logging.h"
#include "core/ports.h"

namespace outbox::replication {

namespace {

std::string required_text(const Relation& relation, const Insert& insert, const char* column) {
  auto value = column_text(relation, insert, column);
  if (!value) throw PgOutputError(std::string("outbox.events.") + column + " is NULL");
  return std::string(*value);
}

template <typename T>
T parse_number(std::string_view text, const char* column) {
  T value{};
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size()) {
    throw PgOutputError(std::string("outbox.events.") + column +
                        " is not a number: " + std::string(text));
  }
  return value;
}

core::OutboxEvent outbox_event(const Relation& relation, const Insert& insert) {
  core::OutboxEvent e;
  e.id = parse_number<std::int64_t>(required_text(relation, insert, "id"), "id");
  e.event_id = required_text(relation, insert, "event_id");
  e.topic = required_text(relation, insert, "topic");
  if (auto key = column_text(relation, insert, "key")) e.key = std::string(*key);
  if (auto payload = column_text(relation, insert, "payload")) {
    e.payload = decode_bytea_hex(*payload);
  }
  if (auto headers = column_text(relation, insert, "headers")) e.headers_json = *headers;
  // PostgreSQL's text of a timestamptz (ISO DateStyle); core::rfc3339 makes it RFC 3339.
  if (auto created = column_text(relation, insert, "created_at")) e.created_at = *created;
  if (auto attempts = column_text(relation, insert, "attempts")) {
    e.attempts = parse_number<int>(*attempts, "attempts");
  }
  return e;
}

}  // namespace

PgReplicationStream::PgReplicationStream(pg::Conninfo conninfo, ReplicationSettings options,
                                         std::function<bool()> stopping, const core::Clock& clock)
    : conninfo_(std::move(conninfo)),
      options_(std::move(options)),
      stopping_(std::move(stopping)),
      clock_(clock) {}

bool PgReplicationStream::prepare() {
  auto log = logging::get("pg");
  const std::string& slot = options_.slot_name;
  const std::string& pub = options_.publication_name;
  try {
    pqxx::connection conn(conninfo_.current());
    pqxx::nontransaction n(conn);
    if (n.exec_params("SELECT 1 FROM pg_publication WHERE pubname = $1", pub).empty()) {
      std::string create =
          "CREATE PUBLICATION " + pub + " FOR TABLE outbox.events WITH (publish = 'insert')";
      if (!options_.create_publication) {
        throw core::FatalError("publication " + pub + " does not exist; create it with: " + create +
                               " (or set source.replication.create_publication)");
      }
      try {
        n.exec(create);
      } catch (const pqxx::sql_error& e) {
        if (std::string(e.sqlstate()) != "42710") {  // created meanwhile by someone else
          throw core::FatalError("cannot create publication " + pub + " (" + e.what() +
                                 "); a table owner can: " + create);
        }
      }
      log->info("created publication {} (inserts into outbox.events)", pub);
    }
    // Column 5: the walsender on the slot is a relay's: it holds the walsender mark
    // (replication_connection.h), or, from a relay without the mark, has our
    // application_name.
    pqxx::result rows = n.exec_params(
        "SELECT s.plugin, s.database = current_database(), s.active, s.active_pid, "
        "s.wal_status, "
        "EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = s.active_pid "
        "        AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
        "        AND l.classid = $2::bigint::oid AND l.objid = 0 "
        "        AND l.database = (SELECT oid FROM pg_database "
        "                          WHERE datname = current_database())) "
        "  OR a.application_name = current_setting('application_name'), "
        "coalesce(nullif(a.application_name, ''), a.backend_type) "
        "FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid "
        "WHERE s.slot_name = $1",
        slot, kWalsenderClass);
    if (rows.empty()) {
      if (!options_.create_slot) {
        throw core::FatalError("replication slot " + slot +
                               " does not exist; create it with: SELECT "
                               "pg_create_logical_replication_slot('" +
                               slot + "', 'pgoutput') (or set source.replication.create_slot)");
      }
      return false;
    }
    const auto& row = rows[0];
    if (row[0].is_null() || row[0].as<std::string>() != "pgoutput" || !row[1].as<bool>()) {
      throw core::FatalError("replication slot " + slot +
                             " exists but is not a pgoutput slot of this database");
    }
    if (!row[4].is_null() && row[4].as<std::string>() == "lost") {
      throw core::FatalError(
          "replication slot " + slot +
          " was invalidated (wal_status lost, max_slot_wal_keep_size exceeded): the WAL it "
          "needed is gone, so it cannot be trusted. The relay will not re-create it by itself. "
          "Drop it with SELECT pg_drop_replication_slot('" +
          slot +
          "') and start the relay again: it re-creates the slot and first publishes every "
          "row still pending in outbox.events, so nothing is lost");
    }
    if (row[2].as<bool>()) {
      // This relay holds the leader lock, so no other relay of this database publishes: a
      // relay's walsender on the slot (column 5) belongs to a previous leader whose session
      // is gone or going (killed, frozen, cut off). End it now rather than wait for
      // wal_sender_timeout. Anything else is another consumer: say so and stop.
      std::string who = row[3].is_null() ? "another process" : "PID " + row[3].as<std::string>();
      if (!row[5].is_null() && row[5].as<bool>()) {
        bool ended =
            n.exec_params1("SELECT pg_terminate_backend($1)", row[3].as<int>())[0].as<bool>();
        log->warn(
            "replication slot {} was still held by {}, the walsender of a previous "
            "outbox-relay session; {}",
            slot, who, ended ? "ended it" : "it is already gone");
        throw core::UnavailableError("replication slot " + slot + " is being released by " + who);
      }
      throw core::FatalError("replication slot " + slot + " is active for " + who +
                             (row[6].is_null() ? "" : " (" + row[6].as<std::string>() + ")") +
                             "; another consumer is reading it. Stop it, or give this relay "
                             "its own source.replication.slot_name");
    }
    return true;
  } catch (const core::FatalError&) {
    throw;
  } catch (const core::UnavailableError&) {
    throw;
  } catch (const std::exception& e) {
    throw core::UnavailableError(std::string("PostgreSQL: ") + e.what());
  }
}

ReplicationConnection& PgReplicationStream::connection() {
  if (!conn_) {
    conn_ = std::make_unique<ReplicationConnection>(conninfo_.current());
    relations_.clear();
  }
  return *conn_;
}

ReplicationStream::Created PgReplicationStream::create_slot() {
  auto log = logging::get("pg");
  int waited = 0;
  auto created = connection().create_slot(
      options_.slot_name, stopping_,
      [&] {
        if (options_.waiting) options_.waiting();
        if (++waited % 10 == 0) {
          log->warn(
              "still creating replication slot {} after {} s: a transaction open since "
              "before the relay started has not ended (see pg_stat_activity)",
              options_.slot_name, waited);
        }
      },
      clock_);
  return {created.consistent_point, created.snapshot};
}

void PgReplicationStream::release_snapshot() {
  // Any command ends the snapshot CREATE_REPLICATION_SLOT exported; this one is harmless.
  connection().query("IDENTIFY_SYSTEM");
}

void PgReplicationStream::start() {
  connection().start(options_.slot_name, options_.publication_name);
  relations_.clear();  // pgoutput sends every Relation again in a new stream
}

void PgReplicationStream::start_from(Lsn from) {
  // Not pg_replication_slot_advance first: the stream is opened while the drain runs
  // (replication_source.h, 3a), when the slot may not pass the drained rows yet (invariant
  // 5); and an advance moves restart_lsn only as far as the first running-transactions
  // record after the confirmed position, so the walsender would read the same WAL anyway.
  connection().start(options_.slot_name, options_.publication_name, from.to_string());
  relations_.clear();
}

std::optional<StreamMessage> PgReplicationStream::read(std::chrono::milliseconds wait) {
  if (!conn_) throw core::UnavailableError("replication stream: not connected");
  auto frame = conn_->read(wait);
  if (!frame) return std::nullopt;
  try {
    return decode(*frame);
  } catch (const PgOutputError& e) {
    throw core::FatalError(std::string("cannot decode the replication stream: ") + e.what());
  }
}

StreamMessage PgReplicationStream::decode(const std::string& frame) {
  StreamMessage m;
  auto decoded = decode_copy_data(frame);
  if (auto* keepalive = std::get_if<Keepalive>(&decoded)) {
    m.kind = StreamMessage::Kind::keepalive;
    m.wal = keepalive->end;
    m.reply_requested = keepalive->reply_requested;
    return m;
  }
  const XLogData& data = std::get<XLogData>(decoded);
  m.wal = data.start;
  PgOutputMessage message = decode_pgoutput(data.payload);
  if (auto* begin = std::get_if<Begin>(&message)) {
    m.kind = StreamMessage::Kind::begin;
    m.xid = begin->xid;
  } else if (auto* commit = std::get_if<Commit>(&message)) {
    m.kind = StreamMessage::Kind::commit;
    m.end_lsn = commit->end_lsn;
  } else if (auto* relation = std::get_if<Relation>(&message)) {
    relations_.update(std::move(*relation));
  } else if (auto* insert = std::get_if<Insert>(&message)) {
    const Relation& relation = relations_.get(insert->relation_oid);
    if (relation.schema == "outbox" && relation.name == "events") {
      m.kind = StreamMessage::Kind::row;
      m.event = outbox_event(relation, *insert);
    }
  } else if (auto* truncate = std::get_if<Truncate>(&message)) {
    logging::get("pg")->warn("TRUNCATE of {} published tables seen in the stream; ignored",
                             truncate->relation_oids.size());
  }
  // Origin, Type, Update, Delete and logical messages carry no outbox rows.
  return m;
}

void PgReplicationStream::send_status(Lsn written, Lsn flushed, bool reply) {
  if (!conn_) throw core::UnavailableError("replication status update: not connected");
  conn_->send_status(written, flushed, reply);
}

void PgReplicationStream::close() noexcept {
  conn_.reset();
  relations_.clear();
}

}  // namespace outbox::replication
