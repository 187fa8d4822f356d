#!/usr/bin/env bash
# Quickstart, part one: install dependencies, build, then run a relay, an agent and a demo web
# server (examples/), print the public URL and fetch it through the relay.
#   scripts/demo.sh           keeps running while attached to a terminal (Ctrl-C stops)
#   scripts/demo.sh --once    stops after the fetch
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
once=0
[[ "${1:-}" == "--once" || ! -t 0 ]] && once=1

scripts/install-deps.sh
scripts/build.sh build

state="$root/rdv-state"
mkdir -p "$state"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_for_line() {  # file pattern seconds
  local deadline=$((SECONDS + $3))
  until grep -q "$2" "$1" 2>/dev/null; do
    if ((SECONDS > deadline)); then
      echo "demo: timed out waiting for '$2' in $1:" >&2
      cat "$1" >&2
      exit 1
    fi
    sleep 0.1
  done
}

python3 -m http.server 8081 --bind 127.0.0.1 --directory examples/demo-site \
  >"$state/demo-site.log" 2>&1 &
pids+=($!)
# The private server must be accepting before the first request goes through the relay.
deadline=$((SECONDS + 10))
until curl -s -o /dev/null http://127.0.0.1:8081/; do
  if ((SECONDS > deadline)); then
    echo "demo: the demo site did not start on 127.0.0.1:8081:" >&2
    cat "$state/demo-site.log" >&2
    exit 1
  fi
  sleep 0.1
done

build/relay/rdv-relay --config examples/relay.yaml >"$state/relay.log" 2>&1 &
pids+=($!)
wait_for_line "$state/relay.log" "listening http" 10
fingerprint=$(grep -o 'fingerprint sha256:[0-9a-f]*' "$state/relay.log" | head -1 | cut -d' ' -f2)
sed "s/@RELAY_FINGERPRINT@/$fingerprint/" examples/agent.yaml >"$state/agent.yaml"

build/agent/rdv-agent --config "$state/agent.yaml" >"$state/agent.log" 2>&1 &
pids+=($!)
wait_for_line "$state/agent.log" "registered http demo.rendezvous.test" 10

echo
echo "Rendezvous is up: relay (pid ${pids[1]}), agent (pid ${pids[2]}), demo site on 127.0.0.1:8081"
echo "Public URL:  http://demo.localhost:8080/   (or: curl -H 'Host: demo.rendezvous.test' http://127.0.0.1:8080/)"
echo "Metrics:     http://127.0.0.1:9100/metrics     Logs: $state/*.log"
echo
echo "$ curl -s -H 'Host: demo.rendezvous.test' http://127.0.0.1:8080/"
curl -sS --fail -H 'Host: demo.rendezvous.test' http://127.0.0.1:8080/
if ((once)); then exit 0; fi
echo "Running; press Ctrl-C to stop."
wait
