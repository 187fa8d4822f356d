#!/usr/bin/env bash
# The one place that lists every Debian package Rendezvous needs to build, test and benchmark.
# Usage: scripts/install-deps.sh [--bench]
#   (no flag)  build + test dependencies
#   --bench    also the benchmark peers (iperf3, wrk, haproxy, openssh-server)
set -euo pipefail

build=(build-essential cmake ninja-build pkg-config git clang-format
       libuv1-dev libssl-dev openssl libprotobuf-dev protobuf-compiler
       libyaml-cpp-dev libabsl-dev libhttp-parser-dev libspdlog-dev libgtest-dev libgmock-dev)
test=(curl nginx-light python3 python3-websockets iproute2 procps netcat-openbsd)
bench=(iperf3 wrk haproxy openssh-server openssh-client)

want=("${build[@]}" "${test[@]}")
[[ "${1:-}" == "--bench" ]] && want+=("${bench[@]}")

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#want[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# nginx-light starts a service on install where systemd runs; keep it from grabbing port 80.
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
