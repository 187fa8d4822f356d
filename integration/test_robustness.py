#!/usr/bin/python3
"""Hostile input: garbage on every listening port is closed and counted, the relay keeps running and a
concurrent stream through it stays byte-exact; broken config files are refused with a message that
names the file, the line and the key.
"""

import os
import re
import secrets
import socket
import sys
import textwrap
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SECRET = "orang-robust-secret"


class GarbageTest(harness.IntegrationTest):
    """Shared relay with agent, http, admin and tcp-service listeners; an echo stream runs through
    the tcp service for the whole class and every test checks that it kept flowing."""

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.token = "page-" + secrets.token_hex(12)
        cls.nginx = h.nginx(f'location / {{ return 200 "{cls.token}\\n"; }}', name="nginx")
        cls.target = h.data_target()
        cls.relay = h.relay(f"""\
            relay_id: relay-robust
            state_dir: {h.path('relay-state')}
            workers: 2
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]
              handshake_timeout_ms: 2000
            http:
              listen: ["127.0.0.1:0"]
              head_timeout_ms: 2000
            tcp:
              bind: ["127.0.0.1"]
            admin:
              listen: ["127.0.0.1:0"]
            link:
              ping_interval_ms: 1000
              idle_timeout_ms: 5000
            credentials:
              - name: orang
                secret: "{SECRET}"
                grants: ["http:www.orang.com", "tcp:20000-32000"]
            """, name="relay")
        cls.agent = h.agent(textwrap.dedent(f"""\
            agent_id: agent-robust
            relays: ["{harness.format_addr(cls.relay.address('agent'))}"]
            relay_fingerprint: "sha256:{cls.relay.fingerprint}"
            credential:
              name: orang
              secret: "{SECRET}"
            links: 2
            log_level: {harness.LOG_LEVEL}
            services:
              - name: www.orang.com
                kind: http
                target: {cls.nginx.target()}
              - name: echo
                kind: tcp
                target: {cls.target.target()}
            """), name="agent")
        cls.agent.wait_registered("www.orang.com", "http")
        cls.agent.wait_registered("echo", "tcp")
        cls.echo = harness.EchoStream(cls.relay.address("tcp:echo"))
        cls.addClassCleanup(cls.echo.stop)
        cls.echo.wait_progress(0)

    def setUp(self):
        self.echo_before = self.echo.bytes_ok

    def tearDown(self):
        # Runs after each test's own assertions: the relay survived and still carries traffic.
        self.assertTrue(self.relay.alive(), f"relay died\n{self.relay.tail()}")
        self.echo.wait_progress(self.echo_before)
        result = harness.curl(harness.http_url(self.relay.address("http")), host="www.orang.com")
        self.assertEqual((result.status, result.body.strip()), (200, self.token), result)

    def send_garbage(self, addr, data, timeout=10, shut_write=False):
        """Sends `data` to `addr`; asserts the relay closes the connection within `timeout`."""
        with harness.connect(addr) as sock:
            try:
                sock.sendall(data)
                if shut_write:
                    sock.shutdown(socket.SHUT_WR)
            except (ConnectionResetError, BrokenPipeError):
                return b"", "reset"
            return harness.read_until_closed(sock, timeout)

    def counter(self, name, **labels):
        return self.relay.metric(name, **labels)

    def wait_counter_above(self, name, before, **labels):
        self.relay.wait_metric(name, lambda v: v > before, **labels)

    # -- plain listeners -----------------------------------------------------------------------

    def test_random_bytes_on_http_listener(self):
        before = self.counter("rdv_protocol_errors_total", listener="http")
        self.send_garbage(self.relay.address("http"), b"\x16\x03\x01" + os.urandom(4096))
        self.wait_counter_above("rdv_protocol_errors_total", before, listener="http")

    def test_random_bytes_on_admin_listener(self):
        before = self.counter("rdv_protocol_errors_total", listener="admin")
        self.send_garbage(self.relay.address("admin"), b"\x00\xff" + os.urandom(4096))
        self.wait_counter_above("rdv_protocol_errors_total", before, listener="admin")

    def test_random_bytes_on_tcp_service_port(self):
        # A tcp service port carries opaque bytes: they reach the target, which hangs up on an
        # unknown header; the relay must pass that close on to the client.
        before = self.counter("rdv_tcp_connections_total")
        self.send_garbage(self.relay.address("tcp:echo"), b"\x00garbage\n" + os.urandom(4096))
        self.wait_counter_above("rdv_tcp_connections_total", before)
        # ... and arbitrary bytes are carried unchanged.
        blob = os.urandom(1 << 20)
        with harness.connect(self.relay.address("tcp:echo")) as sock:
            sock.sendall(b"E\n")
            sender = threading.Thread(target=sock.sendall, args=(blob,), daemon=True)
            sender.start()
            got = bytearray()
            while len(got) < len(blob):
                more = sock.recv(65536)
                self.assertTrue(more, f"EOF after {len(got)} echoed bytes")
                got += more
            sender.join(10)
        self.assertEqual(bytes(got), blob)

    # -- agent listener (TLS, then the link protocol) ------------------------------------------

    def test_random_bytes_on_agent_listener(self):
        # The first byte tells a link (TLS) from a tunnel data path ("R"): random bytes that do
        # not start with "R" fail as a TLS handshake, those that do as a data path request.
        before = self.counter("rdv_tls_handshake_errors_total", listener="agent")
        junk = os.urandom(4096)
        while junk[:1] == b"R":
            junk = os.urandom(4096)
        self.send_garbage(self.relay.address("agent"), junk)
        self.wait_counter_above("rdv_tls_handshake_errors_total", before, listener="agent")
        before = self.counter("rdv_tunnel_data_paths_total", result="bad_request")
        self.send_garbage(self.relay.address("agent"), b"R" + os.urandom(4095))
        self.wait_counter_above("rdv_tunnel_data_paths_total", before, result="bad_request")

    def test_truncated_client_hello_times_out(self):
        hello = harness.client_hello()
        before = self.counter("rdv_tls_handshake_errors_total", listener="agent")
        start = time.monotonic()
        # The relay waits for the rest of the hello until handshake_timeout_ms (2000).
        self.send_garbage(self.relay.address("agent"), hello[: len(hello) // 2], timeout=10)
        self.assertLess(time.monotonic() - start, 8, "closed long after handshake_timeout_ms")
        self.wait_counter_above("rdv_tls_handshake_errors_total", before, listener="agent")

    def test_truncated_client_hello_then_eof(self):
        hello = harness.client_hello()
        before = self.counter("rdv_tls_handshake_errors_total", listener="agent")
        self.send_garbage(self.relay.address("agent"), hello[:100], timeout=5, shut_write=True)
        self.wait_counter_above("rdv_tls_handshake_errors_total", before, listener="agent")

    def tls_garbage(self, payload, timeout=15):
        with harness.tls_connect(self.relay.address("agent")) as tls:
            self.assertEqual(tls.selected_alpn_protocol(), "rdv/1")
            self.assertEqual(tls.version(), "TLSv1.3")
            try:
                tls.sendall(payload)
            except (ConnectionResetError, BrokenPipeError, OSError):
                return
            harness.read_until_closed(tls, timeout)

    def test_invalid_frames_after_tls_handshake(self):
        before = self.counter("rdv_frame_errors_total")
        links = self.counter("rdv_links_active")
        self.tls_garbage(b"\xff" * 64 + os.urandom(4096))
        self.wait_counter_above("rdv_frame_errors_total", before)
        self.assertEqual(self.counter("rdv_links_active"), links)

    def test_random_frames_after_tls_handshake(self):
        # Random bytes may even parse as a header announcing a long payload; then the handshake
        # timeout (2 s) has to end it.
        for _ in range(3):
            self.tls_garbage(os.urandom(4096))

    def test_many_garbage_connections_at_once(self):
        targets = [self.relay.address(r) for r in ("agent", "http", "admin")]
        errors = []

        def one(i):
            try:
                self.send_garbage(targets[i % len(targets)], os.urandom(512 + i), timeout=15)
            except Exception as e:  # collected and reported below
                errors.append(f"{targets[i % len(targets)]}: {e}")
        threads = [threading.Thread(target=one, args=(i,)) for i in range(150)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(errors[:5], [], f"{len(errors)} garbage connections misbehaved")


class MetricsContractTest(harness.IntegrationTest):
    """The counters every refusal and error path relies on are exposed from the start (an absent
    series reads as "unknown" on a dashboard, not as 0), with the right types."""

    def test_unlabelled_metrics_exposed_at_startup(self):
        h = self.fresh_harness()
        relay = h.relay(f"""\
            relay_id: relay-metrics
            state_dir: {h.path('relay-state')}
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]
            http:
              listen: ["127.0.0.1:0"]
            tcp:
              bind: ["127.0.0.1"]
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "{SECRET}"
                grants: ["http:www.orang.com"]
            """, name="relay")
        text = relay.metrics_text()
        names = {name for name, _, _ in harness.parse_metrics(text)}
        types = harness.metric_types(text)
        expected = harness.GAUGES + harness.COUNTERS
        self.assertEqual([n for n in expected if n not in names], [],
                         "absent from /metrics on a fresh relay")
        self.assertEqual({n: types.get(n) for n in expected},
                         {n: "gauge" if n in harness.GAUGES else "counter" for n in expected})
        host, port = relay.address("admin")
        result = harness.curl(f"http://{harness.format_addr((host, port))}/healthz")
        self.assertEqual(result.status, 200, result)


class ConfigErrorTest(harness.IntegrationTest):
    """`--config` / `--check-config` with broken files: exit 1 and name the file, line and key."""

    RELAY = """\
        relay_id: relay-config
        state_dir: {dir}/relay-state
        agent_listener:
          listen: ["127.0.0.1:0"]
        admin:
          listen: ["127.0.0.1:0"]
        link:
          stream_window: 1048576
        credentials:
          - name: orang
            secret: "orang-config-secret"
            grants: ["http:www.orang.com"]
        """

    AGENT = """\
        relays: ["127.0.0.1:7000"]
        relay_fingerprint: "sha256:{fingerprint}"
        credential:
          name: orang
          secret: "orang-config-secret"
        links: 2
        reconnect:
          initial_ms: 100
        services:
          - name: www.orang.com
            kind: http
            target: 127.0.0.1:8081
        """

    def setUp(self):
        self.fresh_harness()

    def config(self, kind, edit=None):
        """Writes the valid relay/agent config, with `edit(text)` applied; returns its path."""
        text = textwrap.dedent(self.RELAY if kind == "relay" else self.AGENT).format(
            dir=self.h.dir, fingerprint="ab" * 32)
        if edit:
            text = edit(text)
        return self.h.write(f"{kind}.yaml", text), text

    def binary(self, kind):
        return harness.relay_binary() if kind == "relay" else harness.agent_binary()

    def assert_refused(self, kind, path, text, key):
        line = next(i for i, l in enumerate(text.splitlines(), 1) if re.match(rf"\s*{key}:", l))
        for argv in ([self.binary(kind), "--config", path],
                     [self.binary(kind), "--check-config", "--config", path]):
            with self.subTest(argv=" ".join(argv[1:])):
                status, output = harness.run_expect_exit(argv)
                self.assertEqual(status, 1, output)
                self.assertIn(path, output, "message does not name the file")
                self.assertIn(key, output, "message does not name the key")
                self.assertRegex(output, rf"(?i)(?:{re.escape(path)}:\s*|\bline\s*:?\s*){line}\b",
                                 f"message does not name line {line} (as file:{line} or line {line})")

    def test_relay_port_in_use_is_refused(self):
        # Workers share listening ports through SO_REUSEPORT; a port some other process already
        # listens on must still fail the start, not be silently shared.
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        try:
            path, _ = self.config("relay", lambda t: t.replace(
                '  listen: ["127.0.0.1:0"]\nadmin:', f'  listen: ["127.0.0.1:{port}"]\nadmin:'))
            status, output = harness.run_expect_exit([self.binary("relay"), "--config", path])
            self.assertEqual(status, 2, output)
            self.assertIn(f"127.0.0.1:{port}", output)
            self.assertIn("in use", output)
        finally:
            holder.close()

    def test_relay_valid_config_checks(self):
        path, _ = self.config("relay")
        status, output = harness.run_expect_exit([self.binary("relay"), "--check-config",
                                                  "--config", path])
        self.assertEqual(status, 0, output)

    def test_agent_valid_config_checks(self):
        path, _ = self.config("agent")
        status, output = harness.run_expect_exit([self.binary("agent"), "--check-config",
                                                  "--config", path])
        self.assertEqual(status, 0, output)

    def test_relay_unknown_key(self):
        path, text = self.config("relay", lambda t: t.replace(
            '  listen: ["127.0.0.1:0"]\nadmin:',
            '  listen: ["127.0.0.1:0"]\n  listen_backlogg: 128\nadmin:'))
        self.assert_refused("relay", path, text, "listen_backlogg")

    def test_relay_bad_value(self):
        path, text = self.config("relay", lambda t: t.replace("stream_window: 1048576",
                                                              "stream_window: 1000"))
        self.assert_refused("relay", path, text, "stream_window")

    def test_relay_bad_type(self):
        path, text = self.config("relay", lambda t: t.replace("relay_id: relay-config",
                                                              "relay_id: relay-config\n"
                                                              "workers: lots"))
        self.assert_refused("relay", path, text, "workers")

    def test_agent_unknown_key(self):
        path, text = self.config("agent", lambda t: t.replace(
            "  initial_ms: 100", "  initial_ms: 100\n  jitter_pct: 20"))
        self.assert_refused("agent", path, text, "jitter_pct")

    def test_agent_bad_value(self):
        path, text = self.config("agent", lambda t: t.replace("links: 2", "links: lots"))
        self.assert_refused("agent", path, text, "links")


if __name__ == "__main__":
    harness.main()
