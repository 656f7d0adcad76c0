// Crash points for fault-injection tests: `common::crash_point("name")` marks a place where
// a test may make the relay die abruptly, as a power cut or the OOM killer would.
//
// Compiled in only with the CMake option OUTBOX_CRASH_POINTS (default OFF): then, when the
// environment variable OUTBOX_RELAY_CRASH_AT is `name` or `name:N`, the N-th time (default 1)
// the process reaches crash_point("name") it kills itself with SIGKILL: no destructor, no
// flush, no exit handler runs. With `name:N:stop` the N-th hit stops the process with
// SIGSTOP instead (once), to be resumed by SIGCONT. Otherwise crash_point is an inline no-op.
#pragma once

namespace outbox::common {

#ifdef OUTBOX_CRASH_POINTS
//! See the file comment. Thread-safe; hits of the named point are counted per process.
void crash_point(const char* name);
#else
inline void crash_point(const char* /*name*/) {}
#endif

}  // namespace outbox::common
