#!/usr/bin/env bash
# Configures and builds into DIR (default build/) with BUILD_TYPE (default RelWithDebInfo).
# Extra arguments go to cmake, e.g. scripts/build.sh build-asan Debug -DRDV_SANITIZE=ON
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-build}
type=${2:-RelWithDebInfo}
shift $(( $# > 2 ? 2 : $# ))
cmake -S "$root" -B "$root/$dir" -G Ninja -DCMAKE_BUILD_TYPE="$type" "$@" >/dev/null
ninja -C "$root/$dir"
