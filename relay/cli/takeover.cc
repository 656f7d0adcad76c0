// `outbox-relay takeover`: marks published the rows a stopped Debezium connector already put
// in Kafka, so that the relay starts with the rest (replication/takeover.h has the argument).
#include <cstdio>

#include "cli/commands.h"
#include "replication/takeover.h"

namespace outbox::cli {

int run_takeover(const config::Config& config, const replication::TakeoverOptions& options) {
  // Like migrate: a privileged role when given (the peek needs REPLICATION).
  std::string conninfo = admin_conninfo_or_exit(config);
  try {
    replication::TakeoverReport report = replication::take_over(conninfo, options);
    std::printf("slot %s: confirmed %s; decoded up to %s (%llu messages)\n", options.slot.c_str(),
                report.confirmed_flush.to_string().c_str(), report.end.to_string().c_str(),
                static_cast<unsigned long long>(report.messages));
    for (const auto& s : report.scopes) {
      std::string rows = s.scope.source_table
                             ? "rows copied from " + *s.scope.source_table
                             : std::string("rows of outbox.enqueue (source_table NULL)");
      std::printf(
          "%s: %llu marked published (published_by '%s': Debezium published them, at or "
          "below %s); %llu events decoded past it; %llu rows left pending for the relay\n",
          rows.c_str(), static_cast<unsigned long long>(s.marked), report.published_by.c_str(),
          report.confirmed_flush.to_string().c_str(),
          static_cast<unsigned long long>(s.unconfirmed),
          static_cast<unsigned long long>(s.left_pending));
    }
    if (report.slot_dropped) {
      std::printf("dropped slot %s\n", options.slot.c_str());
    } else {
      std::printf(
          "slot %s kept (it holds WAL until dropped: --drop-slot, or "
          "SELECT pg_drop_replication_slot('%s'))\n",
          options.slot.c_str(), options.slot.c_str());
    }
    std::printf(
        "takeover done: start the relay; the rows left pending are published by it, "
        "those Debezium sent after its last confirmed position a second time\n");
    return kOk;
  } catch (const replication::TakeoverRefused& e) {
    std::fprintf(stderr, "takeover refused, nothing changed: %s\n", e.what());
    return kFailure;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "takeover failed, nothing changed: %s\n", e.what());
    return kFailure;
  }
}

}  // namespace outbox::cli
