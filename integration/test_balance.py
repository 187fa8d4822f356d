#!/usr/bin/python3
"""Load-balanced groups end to end: three rdv-agents under one credential serve www.orang.com, each
in front of its own small HTTP target that names itself in every answer.

Topology (a fresh one per test, since the policy belongs to the group):
  relay      http and admin on 127.0.0.1:0, `workers` 1 or 2
  balance-a  www.orang.com -> target a      (2 links each, agent_id balance-a/b/c)
  balance-b  www.orang.com -> target b
  balance-c  www.orang.com -> target c

Counts are exact where the policy makes them so: the relay applies the policy once per new stream
(a client handed to another worker keeps the member chosen for it), so N requests on fresh
connections under round robin give N/3 to each agent, with one relay worker or two.
"""

import http.server
import os
import socket
import sys
import textwrap
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SECRET = "orang-balance-secret"
NAMES = ("a", "b", "c")

# Health checks of the health test: detection within one interval plus the timeout (the agent
# turns unhealthy on the first failure), plus scheduling slack for a loaded test machine.
HEALTH_INTERVAL_MS = 300
HEALTH_TIMEOUT_MS = 150
SCHEDULING_SLACK_S = 1.0


class Target:
    """A tiny HTTP/1.0 server in threads answering `<name>\\n`; `/hold` blocks until released.
    Stoppable and restartable on the same port."""

    def __init__(self, name):
        self.name = name
        self.port = 0
        self.lock = threading.Lock()
        self.served = 0   # answered requests, /hold included
        self.holding = 0  # /hold requests waiting for release()
        self.release_event = threading.Event()
        self.server = None
        self.start()

    def start(self):
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.startswith("/hold"):
                    with target.lock:
                        target.holding += 1
                    target.release_event.wait(60)
                    with target.lock:
                        target.holding -= 1
                with target.lock:
                    target.served += 1
                body = f"{target.name}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        """Stops accepting: the port refuses connections until start()."""
        self.server.shutdown()
        self.server.server_close()

    def release(self):
        self.release_event.set()

    def target(self):
        return f"127.0.0.1:{self.port}"

    def close(self):
        self.release()
        try:
            self.stop()
        except OSError:
            pass


class BalanceTest(harness.IntegrationTest):

    def start(self, balance, workers=1, health_check=None, links=2):
        h = self.fresh_harness()
        self.targets = {name: Target(name) for name in NAMES}
        for target in self.targets.values():
            self.addCleanup(target.close)
        self.relay = h.relay(f"""\
            relay_id: relay-balance
            state_dir: {h.path('relay-state')}
            workers: {workers}
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]
            http:
              listen: ["127.0.0.1:0"]
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "{SECRET}"
                grants: ["http:www.orang.com"]
            """, name="relay")
        self.http_addr = self.relay.address("http")
        self.agents = {}
        for name in NAMES:
            service = textwrap.dedent(f"""\
                - name: www.orang.com
                  kind: http
                  target: {self.targets[name].target()}
                  balance: {balance}
                """)
            if health_check:
                service += "  health_check: " + health_check + "\n"
            self.agents[name] = h.agent(textwrap.dedent(f"""\
                agent_id: balance-{name}
                relays: ["{harness.format_addr(self.relay.address('agent'))}"]
                relay_fingerprint: "sha256:{self.relay.fingerprint}"
                credential:
                  name: orang
                  secret: "{SECRET}"
                links: {links}
                reconnect:
                  initial_ms: 100
                  max_ms: 1000
                log_level: {harness.LOG_LEVEL}
                services:
                """) + harness.yaml_block(service, 2) + "\n", name=f"agent-{name}")
        # Every link of every agent registered: the group is complete and stays as it is.
        self.relay.wait_metric("rdv_services_registered", lambda v: v == links * len(NAMES))
        self.relay.wait_metric("rdv_links_active", lambda v: v == links * len(NAMES))

    def get(self, path="/", interface=None):
        args = ["--interface", interface] if interface else []
        return harness.curl(harness.http_url(self.http_addr, path), host="www.orang.com",
                            args=args)

    def spread(self, count, interface=None):
        """`count` requests, each on a fresh connection; every one must succeed. Returns the
        number answered per target."""
        counts = {name: 0 for name in NAMES}
        for _ in range(count):
            result = self.get(interface=interface)
            self.assertEqual(result.status, 200, result)
            counts[result.body.strip()] += 1
        return counts

    def hold(self):
        """Opens a /hold request through the relay and waits until a target holds it; returns
        (socket, target name)."""
        before = {name: t.holding for name, t in self.targets.items()}
        sock = harness.connect(self.http_addr)
        self.addCleanup(sock.close)
        sock.sendall(b"GET /hold HTTP/1.1\r\nHost: www.orang.com\r\nConnection: close\r\n\r\n")

        def holder():
            for name, t in self.targets.items():
                if t.holding > before[name]:
                    return name
            return None
        return sock, harness.wait_until(holder, 10, "a target holding the request")

    def wait_streams(self, count):
        """Waits until the relay has exactly `count` streams open (finished requests closed)."""
        self.relay.wait_metric("rdv_streams_active", lambda v: v == count)

    # -- policies --------------------------------------------------------------------------------

    def test_round_robin_exact_over_two_workers(self):
        # One link per agent: three links on two workers leave every worker without a link of
        # some agent, so the policy's turn regularly falls on another worker (a hand-off), and
        # the counts stay exact all the same.
        self.start("round_robin", workers=2, links=1)
        self.assertEqual(self.spread(30), {"a": 10, "b": 10, "c": 10})
        self.assertEqual(self.spread(3), {"a": 1, "b": 1, "c": 1})
        self.assertEqual(self.relay.metric("rdv_http_errors_total"), 0)
        self.assertGreater(self.relay.metric("rdv_worker_handoffs_total"), 0)

    def test_least_streams_avoids_the_busy_member(self):
        self.start("least_streams")
        # Idle group: ties rotate, so fresh requests spread exactly.
        self.assertEqual(self.spread(30), {"a": 10, "b": 10, "c": 10})
        # Six held requests land two per member; then only one member keeps its two.
        self.wait_streams(0)
        held = [self.hold() for _ in range(6)]
        per_target = {name: sum(1 for _, n in held if n == name) for name in NAMES}
        self.assertEqual(per_target, {"a": 2, "b": 2, "c": 2})
        busy = "a"
        for name in NAMES:
            if name != busy:
                self.targets[name].release()
        for sock, name in held:
            if name != busy:
                response, _ = harness.read_until_closed(sock)
                self.assertEqual(harness.http_status(response), 200)
                sock.close()
        self.wait_streams(2)
        counts = {name: 0 for name in NAMES}
        for _ in range(20):
            result = self.get()
            self.assertEqual(result.status, 200, result)
            counts[result.body.strip()] += 1
            self.wait_streams(2)  # the finished request's stream is gone before the next pick
        self.assertEqual(counts, {name: 0 if name == busy else 10 for name in NAMES})
        # Released, the busy member is as good as the others again.
        self.targets[busy].release()
        for sock, name in held:
            if name == busy:
                response, _ = harness.read_until_closed(sock)
                self.assertEqual(harness.http_status(response), 200)
        self.wait_streams(0)
        self.assertEqual(self.spread(30), {"a": 10, "b": 10, "c": 10})

    def test_client_ip_hash_sticks_and_spreads(self):
        self.start("client_ip_hash")
        owner = {}
        for i in range(2, 14):
            ip = f"127.0.0.{i}"
            counts = self.spread(4, interface=ip)
            members = [name for name, n in counts.items() if n]
            self.assertEqual(len(members), 1, f"{ip} went to {counts}")
            owner[ip] = members[0]
        self.assertEqual(set(owner.values()), set(NAMES), owner)  # different IPs spread
        # Still the same member for every address, in another order.
        for ip in reversed(list(owner)):
            self.assertEqual(self.get(interface=ip).body.strip(), owner[ip], ip)

    # -- health ----------------------------------------------------------------------------------

    def test_unhealthy_member_gets_no_new_streams(self):
        self.start("round_robin", workers=2, health_check=(
            f"{{kind: http, path: /, interval_ms: {HEALTH_INTERVAL_MS}, "
            f"timeout_ms: {HEALTH_TIMEOUT_MS}, unhealthy_threshold: 1, healthy_threshold: 1}}"))
        self.assertEqual(self.spread(30), {"a": 10, "b": 10, "c": 10})
        gauge = dict(service="www.orang.com", kind="http")
        self.assertEqual(self.relay.metric("rdv_service_unhealthy", **gauge), 0)

        # Stop c's target: within one interval plus the timeout the relay knows.
        self.targets["c"].stop()  # returns once the port refuses connections
        stopped = time.monotonic()
        bound = (HEALTH_INTERVAL_MS + HEALTH_TIMEOUT_MS) / 1000 + SCHEDULING_SLACK_S
        self.relay.wait_metric("rdv_service_unhealthy", lambda v: v == 1, timeout=bound, **gauge)
        detected = time.monotonic() - stopped
        self.relay.wait_line(harness.log_message(
            r"agent link \d+ \(balance-c\): http www.orang.com is unhealthy"))
        self.assertLessEqual(detected, bound)
        errors_before = self.relay.metric("rdv_http_errors_total")
        served_c = self.targets["c"].served
        self.assertEqual(self.spread(30), {"a": 15, "b": 15, "c": 0})
        self.assertEqual(self.relay.metric("rdv_http_errors_total"), errors_before)
        self.assertEqual(self.targets["c"].served, served_c)
        # Logged once per change, not once per link.
        self.assertEqual(len(self.relay.find(harness.log_message(
            r"agent link \d+ \(balance-c\): http www.orang.com is unhealthy"))), 1)

        # Back up: c takes its share again.
        self.targets["c"].start()
        self.relay.wait_metric("rdv_service_unhealthy", lambda v: v == 0, timeout=bound, **gauge)
        self.assertEqual(self.spread(30), {"a": 10, "b": 10, "c": 10})

        # All down: a clear 503 (counted), not a 502 from a dead target.
        for target in self.targets.values():
            target.stop()
        self.relay.wait_metric("rdv_service_unhealthy", lambda v: v == 3, timeout=bound, **gauge)
        result = self.get()
        self.assertEqual(result.status, 503, result)
        self.assertIn("unhealthy", result.body)
        self.assertGreaterEqual(self.relay.metric("rdv_route_all_unhealthy_total"), 1)
        for target in self.targets.values():
            target.start()

    def test_reconnected_agent_reports_its_health_again(self):
        self.start("round_robin", health_check=(
            f"{{kind: tcp, interval_ms: {HEALTH_INTERVAL_MS}, timeout_ms: {HEALTH_TIMEOUT_MS}, "
            f"unhealthy_threshold: 1}}"))
        gauge = dict(service="www.orang.com", kind="http")
        self.targets["b"].stop()
        self.relay.wait_metric("rdv_service_unhealthy", lambda v: v == 1, **gauge)
        # The agent restarts: its report went with its links, the new ones report afresh.
        agent = self.agents["b"]
        agent.stop()
        self.relay.wait_metric("rdv_service_unhealthy", lambda v: v == 0, **gauge)
        restarted = self.h.agent(open(agent.config_path, encoding="utf-8").read(),
                                 name="agent-b-again")
        restarted.wait_links_up(2)
        self.relay.wait_metric("rdv_service_unhealthy", lambda v: v == 1, **gauge)
        self.relay.wait_metric("rdv_links_active", lambda v: v == 6)
        self.assertEqual(self.spread(20), {"a": 10, "b": 0, "c": 10})


if __name__ == "__main__":
    harness.main()
