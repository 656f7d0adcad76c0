#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz: the row-to-message mapping and the pgoutput
# decoder) with clang, AddressSanitizer and UndefinedBehaviorSanitizer in their own build
# directory, then runs each for a bounded time. Fails on any crash, sanitizer report or
# unexpected exception; the input that caused it is left in $FUZZ_BUILD_DIR/artifacts/.
#
#   FUZZ_SECONDS=30        per target
#   FUZZ_BUILD_DIR=build-fuzz
# The corpus grown by each run is kept in $FUZZ_BUILD_DIR/corpus/ and used by the next.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$OUTBOX_REPO"
DIR="${FUZZ_BUILD_DIR:-build-fuzz}"
SECONDS_EACH="${FUZZ_SECONDS:-30}"

cmake -S . -B "$DIR" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOUTBOX_FUZZ=ON \
  -DOUTBOX_BUILD_TESTS=OFF -DOUTBOX_BUILD_EXAMPLES=OFF -DOUTBOX_WERROR=ON >/dev/null
cmake --build "$DIR" -j"${JOBS:-2}" --target fuzz_message_mapping fuzz_pgoutput

# Seeds: the pgoutput messages captured from a real server (tests/data/pgoutput), each on its
# own and as one stream (0xFF, then each message after its 2-byte big-endian length).
seeds="$DIR/seeds"
rm -rf "$seeds" && mkdir -p "$seeds/pgoutput" "$seeds/message_mapping"
cp tests/data/pgoutput/*.bin "$seeds/pgoutput/"
python3 - "$seeds/pgoutput/stream.bin" tests/data/pgoutput/*.bin <<'PY'
import sys
out = bytearray(b"\xff")
for path in sys.argv[2:]:
    data = open(path, "rb").read()[:65535]
    out += len(data).to_bytes(2, "big") + data
open(sys.argv[1], "wb").write(out)
PY
printf '%s' '{"type":"OrderPlaced","trace":"abc"}' >"$seeds/message_mapping/headers"

mkdir -p "$DIR/artifacts"
for target in message_mapping pgoutput; do
  mkdir -p "$DIR/corpus/$target"
  log "fuzz_$target: ${SECONDS_EACH}s"
  "$DIR/tests/fuzz/fuzz_$target" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$DIR/artifacts/$target-" "$DIR/corpus/$target" "$seeds/$target" 2>"$DIR/fuzz_$target.log" || {
    tail -60 "$DIR/fuzz_$target.log"
    log "fuzz_$target FAILED: the input is in $DIR/artifacts/"
    exit 1
  }
  grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$DIR/fuzz_$target.log" | tr '\n' ' '
  echo
done
