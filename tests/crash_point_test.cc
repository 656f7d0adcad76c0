// common::crash_point: compiled in (-DOUTBOX_CRASH_POINTS=ON) it kills the process at the
// N-th hit of the point OUTBOX_RELAY_CRASH_AT names; compiled out it does nothing.
#include "common/crash_point.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

namespace {

//! Runs body() in a forked child with OUTBOX_RELAY_CRASH_AT=spec; the child exits 0 if
//! body() returns. Returns the wait status.
template <typename F>
int in_child(const char* spec, F body) {
  pid_t pid = fork();
  if (pid == 0) {
    setenv("OUTBOX_RELAY_CRASH_AT", spec, 1);
    body();
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

[[maybe_unused]] bool killed(int status) {
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}
bool exited_0(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }

}  // namespace

using outbox::common::crash_point;

#ifdef OUTBOX_CRASH_POINTS

TEST_CASE("crash_point kills at the first hit of the named point") {
  CHECK(killed(in_child("cp_first", [] { crash_point("cp_first"); })));
}

TEST_CASE("crash_point kills at the N-th hit only, other points never") {
  // hits 1 and 2 pass, hit 3 kills (reaching _exit(3) would mean it never fired)
  int status = in_child("cp_third:3", [] {
    crash_point("cp_other");
    crash_point("cp_third");
    crash_point("cp_third");
    crash_point("cp_other");
    crash_point("cp_third");
    _exit(3);
  });
  CHECK(killed(status));
  CHECK(exited_0(in_child("cp_twice:3", [] {
    crash_point("cp_twice");
    crash_point("cp_twice");
  })));
}

TEST_CASE("crash_point ignores a malformed count and an unset variable") {
  CHECK(exited_0(in_child("cp_bad:0", [] { crash_point("cp_bad"); })));
  CHECK(exited_0(in_child("cp_bad:x", [] { crash_point("cp_bad"); })));
  CHECK(exited_0(in_child("", [] { crash_point("cp_bad"); })));
}

#else

TEST_CASE("crash_point compiled out does nothing") {
  CHECK(exited_0(in_child("cp_off", [] { crash_point("cp_off"); })));
}

#endif
