#!/usr/bin/env bash
# Prints the relay's version: the one place it is defined, the project() line of the top-level
# CMakeLists.txt. outbox-relay --version, the image tag (build-image.sh, image-exec.sh) and
# the chart's appVersion follow it; the chart check (manifests/) fails when they disagree.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
v=$(sed -n 's/^project(outbox-relay VERSION \([0-9][0-9.]*\) .*/\1/p' "$root/CMakeLists.txt")
[ -n "$v" ] || { echo "version.sh: no project(outbox-relay VERSION x.y.z ...) in $root/CMakeLists.txt" >&2; exit 1; }
echo "$v"
