#!/usr/bin/env bash
# The one place that lists every Debian package Rendezvous needs to build, test and benchmark.
# Usage: scripts/install-deps.sh [--bench | --runtime]
#   (no flag)  build + test dependencies
#   --bench    also the benchmark peers (iperf3, wrk, openssh-server)
#   --runtime  only the shared libraries the built binaries need (container images)
set -euo pipefail

build=(build-essential cmake ninja-build pkg-config git clang-format clang libclang-rt-14-dev
       libuv1-dev libssl-dev openssl libprotobuf-dev protobuf-compiler
       libyaml-cpp-dev libabsl-dev libhttp-parser-dev libspdlog-dev libcli11-dev libgtest-dev libgmock-dev)
test=(curl nginx-light python3 python3-websockets iproute2 procps netcat-openbsd
      haproxy postfix swaks libnet-ssleay-perl dnsmasq-base bind9-dnsutils chromium
      nftables openssh-server openssh-client)
bench=(iperf3 wrk)

runtime=(libuv1 libssl3 libprotobuf32 libyaml-cpp0.7 libhttp-parser2.9 libspdlog1.10
         libabsl20220623 ca-certificates)
# Intel's Multi-Buffer Crypto for IPsec (AES-GCM with VAES for TLS records) exists for amd64 only;
# elsewhere the build uses OpenSSL for every record.
if [[ $(dpkg --print-architecture) == amd64 ]]; then
  build+=(libipsec-mb-dev)
  runtime+=(libipsec-mb1)
fi

case "${1:-}" in
  "") want=("${build[@]}" "${test[@]}") ;;
  --bench) want=("${build[@]}" "${test[@]}" "${bench[@]}") ;;
  --runtime) want=("${runtime[@]}") ;;
  *) echo "usage: $0 [--bench | --runtime]" >&2; exit 2 ;;
esac

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
# Postfix is a test peer run with its own configuration directories; the system instance stays
# unconfigured (and so does not start).
echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
# nginx-light starts a service on install where systemd runs; keep it from grabbing port 80.
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
