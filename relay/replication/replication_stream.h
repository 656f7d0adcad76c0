// The replication side of replication mode on PostgreSQL (replication/replication_ports.h): the
// publication and slot administration on a normal connection, and the walsender session
// (ReplicationConnection) whose pgoutput messages are decoded here into StreamMessages.
//
// Lifecycle: as ReplicationStream; one worker thread. Bytes that cannot be decoded throw
// core::FatalError: a stream that is not understood stops the relay, never is skipped.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "pg/conninfo.h"
#include "replication/pgoutput.h"
#include "replication/replication_connection.h"
#include "replication/replication_ports.h"

namespace outbox::replication {

//! source.replication of the configuration (config::ReplicationConfig; cli/ copies it here,
//! so that replication/ depends on core/ and pg/ only).
struct ReplicationSettings {
  std::string slot_name = "outbox_relay";
  std::string publication_name = "outbox_relay";
  bool create_slot = true;  //!< create the slot / publication when missing
  bool create_publication = true;
  std::chrono::milliseconds status_interval{10'000};
  std::chrono::milliseconds heartbeat_interval{10'000};
  //! Called about once a second while a call waits on the server (creating the slot waits
  //! for every open transaction), so that the relay's health keeps ticking.
  std::function<void()> waiting;
  //! Called at each pause of a wait for committed transactions not visible yet, with how
  //! long it has waited, and with 0 when such a wait ends.
  std::function<void(std::chrono::nanoseconds)> visibility_waiting;
};

class PgReplicationStream : public ReplicationStream {
 public:
  //! `stopping` cancels a slot creation that waits for open transactions; `clock` (which
  //! outlives this) times that wait's notes.
  PgReplicationStream(pg::Conninfo conninfo, ReplicationSettings options,
                      std::function<bool()> stopping, const core::Clock& clock);

  //! The leader lock must be held: a relay's walsender on the slot (it holds the walsender
  //! mark, or has our application_name) is then a previous session's, and is ended.
  bool prepare() override;
  Created create_slot() override;
  void release_snapshot() override;
  void start() override;
  void start_from(Lsn from) override;
  std::optional<StreamMessage> read(std::chrono::milliseconds wait) override;
  void send_status(Lsn written, Lsn flushed, bool reply) override;
  void close() noexcept override;

 private:
  ReplicationConnection& connection();
  StreamMessage decode(const std::string& frame);

  pg::Conninfo conninfo_;
  ReplicationSettings options_;
  std::function<bool()> stopping_;
  const core::Clock& clock_;
  std::unique_ptr<ReplicationConnection> conn_;
  RelationCache relations_;
};

}  // namespace outbox::replication
