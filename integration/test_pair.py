#!/usr/bin/python3
"""Tunnels end to end on loopback: two agents joined through one relay.

  nginx     the private web server of "site B"
  relay     relay-pair; credentials site-a and site-b, both granted pair:*
  agent B   serves pair site-b: target = nginx; allow = 127.0.0.1/32 on nginx's port, ::1 on any
  agent A   connect entries for pair site-b: a plain port, a SOCKS5 port, a SOCKS5 port with users
Checks: curl through the plain port and through SOCKS5 (names resolved by B, IPv4 literals),
refusals mapped to SOCKS reply codes and counted at both ends, /status of both agents (role,
state, hops, security), and a third agent with the wrong pairing secret: no tunnel, a clear log
line at both ends (the relay's TunnelNotice reaches B), and nothing reaches B's target.

The tunnels move onto the relay's data path (a spliced plain connection per agent, carrying
only the tunnels' own TLS); bulk bytes are counted there.

PrivateServiceTest: a private service in certificate mode (the serving agent holds a certificate
from a throwaway CA; connecting ends verify it by CA file or pinned fingerprint), the relay's
connect: grant, and a wrong pin failing the handshake at both ends. Its serving agent declines
data paths, so these tunnels stay on the links.
"""

import hashlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
import urllib.request

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import private_ca  # noqa: E402

PAIR_SECRET = "pairing-secret-for-site-b"
USER, PASSWORD = "alice", "wonderland"
PAGE = "hello from site b"

# curl must not pick up a proxy from the environment; the tests name the proxy themselves.
_CLEAN_ENV = {k: v for k, v in os.environ.items()
              if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def socks_curl(url, proxy_args, timeout=10):
    """curl through a SOCKS proxy (harness.curl sets --noproxy, which would bypass it)."""
    argv = ["curl", "-sS", "--max-time", str(timeout), "-o", "-", "-w", "\n%{http_code}"]
    argv += list(proxy_args) + [url]
    p = subprocess.run(argv, capture_output=True, timeout=timeout + 5, env=_CLEAN_ENV)
    out = p.stdout.decode("utf-8", errors="replace")
    body, _, code = out.rpartition("\n")
    return harness.CurlResult(p.returncode, int(code) if code.isdigit() else 0, body,
                              p.stderr.decode("utf-8", errors="replace").strip())


def admin_address(agent):
    return harness.parse_addr(agent.wait_line(r"admin listening (\S+)").group(1))


def admin_get(agent, path):
    url = f"http://{harness.format_addr(admin_address(agent))}{path}"
    with _OPENER.open(url, timeout=5) as resp:
        return resp.read().decode("utf-8")


def agent_metric(agent, name, **labels):
    return harness.metric_value(harness.parse_metrics(admin_get(agent, "/metrics")), name,
                                **labels)


def wait_agent_metric(agent, name, predicate, timeout=10, **labels):
    harness.wait_until(lambda: predicate(agent_metric(agent, name, **labels)), timeout,
                       f"{agent.name} {name}{labels}")


def count_lines(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def agent_yaml(relay, agent_id, credential, body, connect_timeout_ms=5000):
    return textwrap.dedent(f"""\
        agent_id: {agent_id}
        relays: ["{harness.format_addr(relay.address('agent'))}"]
        relay_fingerprint: "sha256:{relay.fingerprint}"
        credential:
          name: {credential}
          secret: "{credential}-credential-secret"
        links: 2
        reconnect:
          initial_ms: 100
          max_ms: 400
        connect_timeout_ms: {connect_timeout_ms}
        log_level: {harness.LOG_LEVEL}
        admin:
          listen: "127.0.0.1:0"
        """) + textwrap.dedent(body)


class PairTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.nginx = h.nginx(f'location / {{ return 200 "{PAGE}\\n"; }}')
        cls.target = h.data_target()
        cls.relay = h.relay(f"""\
            relay_id: relay-pair
            state_dir: {h.path('relay-state')}
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: site-a
                secret: "site-a-credential-secret"
                grants: ["pair:*"]
              - name: site-b
                secret: "site-b-credential-secret"
                grants: ["pair:*"]
            """, name="relay")
        cls.agent_b = h.agent(agent_yaml(cls.relay, "agent-b", "site-b", f"""\
            services:
              - kind: pair
                name: site-b
                secret: "{PAIR_SECRET}"
                target: {cls.nginx.target()}
                allow:
                  - {{network: 127.0.0.1/32, ports: "{cls.nginx.port}"}}
                  - {{network: "::1/128"}}
              - kind: pair
                name: bulk
                secret: "{PAIR_SECRET}-bulk"
                target: {cls.target.target()}
            """), name="agent-b")
        cls.agent_b.wait_registered("site-b", "pair")
        cls.plain_port = harness.free_port()
        cls.socks_port = harness.free_port()
        cls.auth_port = harness.free_port()
        cls.bulk_port = harness.free_port()
        cls.agent_a = h.agent(agent_yaml(cls.relay, "agent-a", "site-a", f"""\
            connect:
              - listen: 127.0.0.1:{cls.plain_port}
                pair: site-b
                secret: "{PAIR_SECRET}"
              - listen: 127.0.0.1:{cls.socks_port}
                pair: site-b
                secret: "{PAIR_SECRET}"
                socks5: true
              - listen: 127.0.0.1:{cls.auth_port}
                pair: site-b
                secret: "{PAIR_SECRET}"
                socks5: true
                users: [{{username: {USER}, password: {PASSWORD}}}]
              - listen: 127.0.0.1:{cls.bulk_port}
                pair: bulk
                secret: "{PAIR_SECRET}-bulk"
            """), name="agent-a")
        # Three connect entries for site-b: three tunnels, each logged up at both ends.
        for agent, peer in ((cls.agent_a, "agent-b"), (cls.agent_b, "agent-a")):
            harness.wait_until(
                lambda agent=agent, peer=peer: len(agent.find(
                    rf"tunnel pair site-b up: peer {peer} via relay-pair \(psk\)")) >= 3,
                10, f"three tunnels up at {agent.name}")
            agent.wait_line(rf"tunnel pair bulk up: peer {peer} via relay-pair \(psk\)")

    def socks(self, port=None):
        return harness.format_addr(("127.0.0.1", port or self.socks_port))

    def test_plain_port_reaches_the_target(self):
        r = harness.curl(f"http://127.0.0.1:{self.plain_port}/")
        self.assertEqual((r.rc, r.status, r.body.strip()), (0, 200, PAGE), r)

    def test_bulk_both_ways(self):
        # 32 MiB each way at once, checked by sha256: every layer's flow control (the nested
        # link's stream windows, the relay streams', the bridge's) holds under load.
        harness.exchange(("127.0.0.1", self.bulk_port), 32 << 20, 32 << 20, seed=7)
        # Several connections at once share the tunnel's nested link.
        errors = []

        def one(seed):
            try:
                harness.exchange(("127.0.0.1", self.bulk_port), 4 << 20, 4 << 20, seed=seed)
            except Exception as e:  # reported below
                errors.append(e)
        threads = [threading.Thread(target=one, args=(20 + i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])

    def test_tunnels_run_on_the_data_path(self):
        # Both agents take offers and the relay makes them (the defaults): every tunnel moved
        # onto a spliced data path, and bulk bytes now pass the relay there, not on the links.
        tunnels = 4  # three for site-b, one for bulk
        self.relay.wait_metric("rdv_tunnel_data_paths_total", lambda v: v >= tunnels,
                               result="spliced")
        for agent in (self.agent_a, self.agent_b):
            wait_agent_metric(agent, "rdv_agent_tunnel_data_paths_total",
                              lambda v: v >= tunnels, result="switched")
            agent.wait_line(r"tunnel pair bulk: data path up via 127\.0\.0\.1:")
        before = self.relay.metric("rdv_tunnel_data_path_bytes_total")
        harness.exchange(("127.0.0.1", self.bulk_port), 8 << 20, 8 << 20, seed=11)
        self.assertGreaterEqual(self.relay.metric("rdv_tunnel_data_path_bytes_total"),
                                before + (16 << 20))
        r = harness.curl(f"http://127.0.0.1:{self.plain_port}/")
        self.assertEqual((r.rc, r.status, r.body.strip()), (0, 200, PAGE), r)
        for result in ("unknown_token", "bad_request", "request_timeout", "partner_timeout"):
            self.assertEqual(self.relay.metric("rdv_tunnel_data_paths_total", result=result), 0,
                             result)
        # A data path carries no pings: TCP keepalive (15 s idle, docs/protocol.md) watches
        # both ends' sockets at the relay (source port: its agent listener) and the agents'.
        # ss shows one timer per socket, so a socket with bytes in flight shows its retransmit
        # timer instead for a moment: poll.
        port = self.relay.port("agent")
        for side, flt, want in (("relay", f"( sport = :{port} )", tunnels * 2),
                                ("agents", f"( dport = :{port} )", tunnels)):
            def watched(flt=flt, want=want):
                out = subprocess.run(["ss", "-tnoH", "state", "established", flt],
                                     capture_output=True, text=True, check=True).stdout
                return sum("timer:(keepalive" in line for line in out.splitlines()) >= want
            harness.wait_until(watched, 10, f"{want} sockets of the {side} with keepalive")

    def test_socks5_names_resolve_at_the_serving_end(self):
        r = socks_curl(f"http://localhost:{self.nginx.port}/",
                       ["--socks5-hostname", self.socks()])
        self.assertEqual((r.rc, r.status, r.body.strip()), (0, 200, PAGE), r)
        # An IPv4 literal (curl resolves, then sends the address).
        r = socks_curl(f"http://127.0.0.1:{self.nginx.port}/", ["--socks5", self.socks()])
        self.assertEqual((r.rc, r.status, r.body.strip()), (0, 200, PAGE), r)

    def test_socks5_outside_the_allow_list_is_refused_and_counted(self):
        before_a = agent_metric(self.agent_a, "rdv_agent_socks_refused_total",
                                reason="not_allowed")
        before_b = agent_metric(self.agent_b, "rdv_agent_tunnel_streams_refused_total",
                                reason="not_allowed")
        before_access = count_lines(os.path.join(self.nginx.dir, "access.log"))
        # 127.0.0.1 is allowed on nginx's port only.
        other_port = self.relay.port("admin")
        r = socks_curl(f"http://localhost:{other_port}/", ["--socks5-hostname", self.socks()])
        self.assertNotEqual(r.rc, 0, r)
        self.assertIn("(2)", r.stderr, r)  # SOCKS reply 0x02: connection not allowed by ruleset
        self.assertEqual(agent_metric(self.agent_a, "rdv_agent_socks_refused_total",
                                      reason="not_allowed"), before_a + 1)
        self.assertEqual(agent_metric(self.agent_b, "rdv_agent_tunnel_streams_refused_total",
                                      reason="not_allowed"), before_b + 1)
        self.agent_b.wait_line(rf"refused a stream: localhost:{other_port} \(127\.0\.0\.1:"
                               rf"{other_port}\) is not allowed by pair 'site-b'")
        self.assertEqual(count_lines(os.path.join(self.nginx.dir, "access.log")), before_access)

    def test_socks5_connection_refused_over_ipv6(self):
        before = agent_metric(self.agent_a, "rdv_agent_socks_refused_total",
                              reason="connection_refused")
        closed = harness.free_port("::1")
        r = socks_curl(f"http://[::1]:{closed}/", ["--socks5-hostname", self.socks()])
        self.assertNotEqual(r.rc, 0, r)
        self.assertIn("(5)", r.stderr, r)  # SOCKS reply 0x05: connection refused
        self.assertEqual(agent_metric(self.agent_a, "rdv_agent_socks_refused_total",
                                      reason="connection_refused"), before + 1)

    def test_socks5_credentials(self):
        url = f"http://localhost:{self.nginx.port}/"
        proxy = self.socks(self.auth_port)
        r = socks_curl(url, ["--socks5-hostname", f"{USER}:{PASSWORD}@{proxy}"])
        self.assertEqual((r.rc, r.status, r.body.strip()), (0, 200, PAGE), r)
        before = agent_metric(self.agent_a, "rdv_agent_socks_refused_total", reason="auth")
        r = socks_curl(url, ["--socks5-hostname", f"{USER}:nope@{proxy}"])
        self.assertNotEqual(r.rc, 0, r)
        r = socks_curl(url, ["--socks5-hostname", proxy])  # no credentials
        self.assertNotEqual(r.rc, 0, r)
        self.assertEqual(agent_metric(self.agent_a, "rdv_agent_socks_refused_total",
                                      reason="auth"), before + 2)

    def test_status_shows_both_ends_with_their_hops(self):
        status_a = json.loads(admin_get(self.agent_a, "/status"))
        status_b = json.loads(admin_get(self.agent_b, "/status"))
        tunnels_a = [t for t in status_a["tunnels"] if t["name"] == "site-b"]
        self.assertEqual(len(tunnels_a), 3, status_a)
        for tunnel in tunnels_a:
            self.assertEqual({k: tunnel[k] for k in ("kind", "name", "role", "state", "peer_agent",
                                                     "hops", "security")},
                             {"kind": "pair", "name": "site-b", "role": "connect", "state": "up",
                              "peer_agent": "agent-b", "hops": ["relay-pair"],
                              "security": "psk"}, status_a)
        serving = [t for t in status_b["tunnels"] if t["role"] == "serve" and t["name"] == "site-b"]
        self.assertGreaterEqual(len(serving), 3, status_b)
        for tunnel in serving:
            self.assertEqual((tunnel["state"], tunnel["peer_agent"], tunnel["hops"]),
                             ("up", "agent-a", ["relay-pair"]), status_b)
        self.assertEqual(agent_metric(self.agent_a, "rdv_agent_tunnels_up"), 4)
        # The CLI reads the same.
        rc, out = harness.run_expect_exit([harness.agent_binary(), "status", "--admin",
                                           harness.format_addr(admin_address(self.agent_a))])
        self.assertEqual(rc, 0, out)
        self.assertIn("pair site-b connect up peer agent-b via relay-pair", out)

    def test_wrong_pairing_secret(self):
        access_log = os.path.join(self.nginx.dir, "access.log")
        before_access = count_lines(access_log)
        mark_b = self.agent_b.mark()
        port = harness.free_port()
        agent_c = self.h.agent(agent_yaml(self.relay, "agent-c", "site-a", f"""\
            connect:
              - listen: 127.0.0.1:{port}
                pair: site-b
                secret: "not-the-pairing-secret"
            """, connect_timeout_ms=300), name="agent-c")
        refusal = ("tunnel pair site-b: relay refused: pair 'site-b' is registered with a "
                   "different pairing secret")
        agent_c.wait_line(re.escape(refusal))
        self.agent_b.wait_line(r"tunnel pair site-b: notice from relay: an agent \(agent-c\) asked "
                               r"for pair 'site-b' with a different pairing secret", start=mark_b)
        self.relay.wait_line(r"tunnel pair site-b from agent-c refused \(pair_secret_mismatch\)")
        # A local client of C waits connect_timeout for a tunnel that never comes, then is closed.
        r = harness.curl(f"http://127.0.0.1:{port}/", timeout=5)
        self.assertNotEqual(r.rc, 0, r)
        agent_c.wait_line(r"connect pair site-b: closing 127\.0\.0\.1:\d+: the tunnel is not up")
        # C keeps retrying with backoff, but logs the same refusal once.
        self.relay.wait_metric("rdv_tunnels_refused_total", lambda v: v >= 4,
                               reason="pair_secret_mismatch")
        self.assertEqual(len(agent_c.find(re.escape(refusal))), 1)
        self.assertEqual(count_lines(access_log), before_access)
        self.assertEqual(agent_metric(agent_c, "rdv_agent_tunnels_up"), 0)
        agent_c.stop()


    def start_drain_pair(self, name):
        """A serving agent for pair `name` (target: the data target) and a connecting agent with a
        plain port for it; returns (serving, connecting, port) once the tunnel is up."""
        serving = self.h.agent(agent_yaml(self.relay, f"{name}-serve", "site-b", f"""\
            services:
              - kind: pair
                name: {name}
                secret: "{PAIR_SECRET}-{name}"
                target: {self.target.target()}
            """), name=f"{name}-serve")
        serving.wait_registered(name, "pair")
        port = harness.free_port()
        connecting = self.h.agent(agent_yaml(self.relay, f"{name}-connect", "site-a", f"""\
            connect:
              - listen: 127.0.0.1:{port}
                pair: {name}
                secret: "{PAIR_SECRET}-{name}"
            """), name=f"{name}-connect")
        connecting.wait_line(rf"tunnel pair {name} up: peer {name}-serve via relay-pair")
        return serving, connecting, ("127.0.0.1", port)

    def test_connecting_end_drains_its_open_connections(self):
        serving, connecting, addr = self.start_drain_pair("drain-c")
        echo = harness.EchoStream(addr, seed=41)
        echo.wait_progress(1 << 20)
        connecting.send_signal(signal.SIGTERM)
        connecting.wait_line(harness.log_message(r"draining: 1 open streams"))
        echo.wait_progress(echo.bytes_ok + (1 << 20))
        # The connect listener is closed: a new local connection is refused at once.
        with self.assertRaises(ConnectionRefusedError):
            harness.connect(addr, 5).close()
        self.assertTrue(connecting.alive())
        echo.stop()
        self.assertEqual(connecting.wait(20), 0)
        self.assertTrue(connecting.find(harness.log_message(r"drained: no stream open")))
        serving.stop()

    def test_serving_end_drains_the_streams_of_its_tunnels(self):
        serving, connecting, addr = self.start_drain_pair("drain-s")
        echoes = [harness.EchoStream(addr, seed=seed) for seed in (51, 52)]
        for echo in echoes:
            echo.wait_progress(1 << 20)
        serving.send_signal(signal.SIGTERM)
        serving.wait_line(harness.log_message(r"draining: 2 open streams"))
        status = json.loads(admin_get(serving, "/status"))
        self.assertEqual((status["draining"], status["open_streams"]), (True, 2), status)
        for echo in echoes:
            echo.wait_progress(echo.bytes_ok + (1 << 20))
        echoes[0].stop()
        harness.wait_until(lambda: json.loads(admin_get(serving, "/status"))["open_streams"] == 1,
                           10, "one open stream left")
        echoes[1].wait_progress(echoes[1].bytes_ok + (1 << 20))
        self.assertTrue(serving.alive())
        echoes[1].stop()
        self.assertEqual(serving.wait(20), 0)
        self.assertTrue(serving.find(harness.log_message(r"drained: no stream open")))
        connecting.stop()


class PrivateServiceTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        ca = private_ca.PrivateCa(h.path("ca"))
        cert, key = ca.server("db.internal")
        with open(cert, encoding="utf-8") as f:
            cls.pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()
        cls.nginx = h.nginx(f'location / {{ return 200 "{PAGE}\\n"; }}')
        cls.relay = h.relay(f"""\
            relay_id: relay-private
            state_dir: {h.path('relay-state')}
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: site-a
                secret: "site-a-credential-secret"
                grants: ["connect:db"]
              - name: site-b
                secret: "site-b-credential-secret"
                grants: ["private:db"]
              - name: outsider
                secret: "outsider-credential-secret"
                grants: ["connect:other"]
            """, name="relay")
        # B declines data paths: the relay offers none, and the tunnels stay on the links.
        cls.agent_b = h.agent(agent_yaml(cls.relay, "agent-b", "site-b", f"""\
            tunnel_data_path: false
            services:
              - kind: private
                name: db
                target: {cls.nginx.target()}
                certificate_file: {cert}
                key_file: {key}
            """), name="agent-b")
        cls.agent_b.wait_registered("db", "private")
        cls.ca_port = harness.free_port()
        cls.pin_port = harness.free_port()
        cls.agent_a = h.agent(agent_yaml(cls.relay, "agent-a", "site-a", f"""\
            connect:
              - listen: 127.0.0.1:{cls.ca_port}
                private: db
                peer_ca_file: {ca.cert}
              - listen: 127.0.0.1:{cls.pin_port}
                private: db
                peer_fingerprint: "sha256:{cls.pin}"
            """), name="agent-a")
        harness.wait_until(
            lambda: len(cls.agent_a.find(
                r"tunnel private db up: peer agent-b via relay-private \(certificate\)")) >= 2,
            10, "two certificate tunnels up")

    def test_certificate_mode_by_ca_and_by_pin(self):
        for port in (self.ca_port, self.pin_port):
            r = harness.curl(f"http://127.0.0.1:{port}/")
            self.assertEqual((r.rc, r.status, r.body.strip()), (0, 200, PAGE), r)
        status = json.loads(admin_get(self.agent_a, "/status"))
        self.assertEqual([(t["kind"], t["state"], t["security"]) for t in status["tunnels"]],
                         [("private", "up", "certificate")] * 2, status)
        self.assertEqual(self.relay.metric("rdv_tunnel_data_offers_total"), 0)
        self.assertEqual(self.relay.metric("rdv_tunnel_data_paths_total", result="spliced"), 0)
        self.assertEqual(agent_metric(self.agent_a, "rdv_agent_tunnel_data_paths_total",
                                      result="switched"), 0)

    def test_wrong_pin_fails_the_handshake_at_both_ends(self):
        mark_b = self.agent_b.mark()
        wrong = "0" * 64
        agent = self.h.agent(agent_yaml(self.relay, "agent-wrong-pin", "site-a", f"""\
            connect:
              - listen: 127.0.0.1:{harness.free_port()}
                private: db
                peer_fingerprint: "{wrong}"
            """), name="agent-wrong-pin")
        agent.wait_line(r"tunnel private db failed: .*fingerprint")
        self.agent_b.wait_line(r"tunnel private db failed: ", start=mark_b)
        self.assertEqual(agent.find(r"tunnel private db up"), [])
        agent.stop()

    def test_connect_needs_the_grant(self):
        agent = self.h.agent(agent_yaml(self.relay, "agent-outsider", "outsider", f"""\
            connect:
              - listen: 127.0.0.1:{harness.free_port()}
                private: db
                peer_ca_file: {self.h.path("ca", "ca.pem")}
            """), name="agent-outsider")
        agent.wait_line(r"tunnel private db: relay refused: .*not granted")
        self.relay.wait_metric("rdv_tunnels_refused_total", lambda v: v >= 3, reason="not_granted")
        self.assertEqual(len(agent.find(r"relay refused")), 1)
        agent.stop()


if __name__ == "__main__":
    harness.main()
