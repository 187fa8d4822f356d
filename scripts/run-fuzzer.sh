#!/usr/bin/env bash
# Runs a libFuzzer target for a bounded time over its committed seed corpus.
#   scripts/run-fuzzer.sh FUZZER SEED_CORPUS_DIR SECONDS
# New inputs go to a temporary directory (the committed corpus is not modified); a crash, leak or
# timeout makes the fuzzer exit non-zero and leaves its reproducer in the current directory.
set -euo pipefail
fuzzer=$1
corpus=$2
seconds=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  "$work" "$corpus"
