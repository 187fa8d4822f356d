#!/usr/bin/env bash
# Quickstart, part two: install dependencies, build, and run every test.
#   1. unit and integration tests against AddressSanitizer + UndefinedBehaviorSanitizer builds
#      (build-asan/; a sanitizer report in rdv-relay or rdv-agent fails the test that ran it)
#   2. libFuzzer targets (HTTP framing, the link) for a bounded time each (build-fuzz/, clang)
#   3. the whole suite against the normal build: lint, unit, integration, slow (build/)
# Pass a CTest label regex to run a part instead: scripts/test.sh integration
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
labels=${1:-}

scripts/install-deps.sh
jobs=$(nproc)

if [[ -z "$labels" || "$labels" == unit || "$labels" == integration ]]; then
  echo "== ${labels:-unit and integration} tests under ASan/UBSan"
  scripts/build.sh build-asan Debug -DRDV_SANITIZE=ON
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan -L "${labels:-unit|integration}" --output-on-failure -j "$jobs"
fi

if [[ -z "$labels" || "$labels" == fuzz ]]; then
  echo "== fuzz targets, ${RDV_FUZZ_SECONDS:-20} s each"
  CC=clang CXX=clang++ scripts/build.sh build-fuzz RelWithDebInfo -DRDV_FUZZ=ON -DRDV_WERROR=OFF \
    -DRDV_FUZZ_SECONDS="${RDV_FUZZ_SECONDS:-20}"
  ctest --test-dir build-fuzz -L fuzz --output-on-failure
  [[ "$labels" == fuzz ]] && exit 0
fi

echo "== test suite${labels:+ (labels: $labels)}"
scripts/build.sh build RelWithDebInfo
ctest --test-dir build ${labels:+-L "$labels"} --output-on-failure -j "$jobs"
