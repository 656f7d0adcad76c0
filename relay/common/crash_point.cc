#include "common/crash_point.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <string_view>

#ifdef OUTBOX_CRASH_POINTS

namespace outbox::common {

namespace {

struct Target {
  std::string name;   //!< empty: no crash point armed
  long hit = 1;       //!< crash at this hit of `name` (1 = the first)
  bool stop = false;  //!< ":stop": SIGSTOP (once) instead of SIGKILL; SIGCONT resumes
};

//! OUTBOX_RELAY_CRASH_AT=name[:N][:stop]; a malformed N arms nothing rather than crashing
//! early.
Target parse_target() {
  Target t;
  const char* env = std::getenv("OUTBOX_RELAY_CRASH_AT");
  if (env == nullptr || *env == '\0') return t;
  std::string spec(env);
  constexpr std::string_view kStop = ":stop";
  if (spec.size() > kStop.size() &&
      spec.compare(spec.size() - kStop.size(), kStop.size(), kStop.data()) == 0) {
    t.stop = true;
    spec.resize(spec.size() - kStop.size());
  }
  auto colon = spec.rfind(':');
  if (colon != std::string::npos) {
    const std::string count = spec.substr(colon + 1);
    char* end = nullptr;
    long n = std::strtol(count.c_str(), &end, 10);
    if (count.empty() || *end != '\0' || n < 1) return t;
    t.hit = n;
    spec.resize(colon);
  }
  t.name = spec;
  return t;
}

}  // namespace

void crash_point(const char* name) {
  // Read at each call (a few per batch): cheap, and a forked child sees its own setting.
  const Target target = parse_target();
  static std::atomic<long> hits{0};
  if (target.name.empty() || target.name != name) return;
  long hit = hits.fetch_add(1) + 1;
  if (hit < target.hit) return;
  if (target.stop) {  // a zombie for a test: frozen here until SIGCONT, once
    if (hit != target.hit) return;
    const std::string line = std::string("outbox-relay: crash point ") + name + " reached (hit " +
                             std::to_string(target.hit) + "): SIGSTOP\n";
    [[maybe_unused]] auto written = ::write(STDERR_FILENO, line.data(), line.size());
    ::raise(SIGSTOP);
    return;
  }
  // Straight to stderr (no logger: its buffers die with the process anyway).
  const std::string line = std::string("outbox-relay: crash point ") + name + " reached (hit " +
                           std::to_string(target.hit) + "): SIGKILL\n";
  [[maybe_unused]] auto written = ::write(STDERR_FILENO, line.data(), line.size());
  ::raise(SIGKILL);
  ::_exit(137);  // not reached: SIGKILL cannot be caught
}

}  // namespace outbox::common

#endif  // OUTBOX_CRASH_POINTS
