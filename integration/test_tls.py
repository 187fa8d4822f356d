#!/usr/bin/python3
"""The tls entrypoint: the relay routes TLS connections by the SNI of their ClientHello to `tls`
services and passes the TLS session through untouched, so the client verifies the private server's
own certificate (made here by a private CA the relay knows nothing about).

Two HTTPS nginx servers sit behind two agents (www.orang.com with PROXY protocol v2 to nginx,
mail.example.org without). Refusals (no SNI, an unknown name, a name whose agent is gone, random
bytes, a malformed record, a slow ClientHello) each get a clean close or a TLS alert and their
counter, and the relay keeps serving.
"""

import os
import socket
import ssl
import subprocess
import sys
import textwrap
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import private_ca  # noqa: E402

ALERT_UNRECOGNIZED_NAME = b"\x15\x03\x03\x00\x02\x02\x70"
ALERT_INTERNAL_ERROR = b"\x15\x03\x03\x00\x02\x02\x50"
SLOW_HELLO_TIMEOUT_MS = 1000  # the relay of test_slow_hello_times_out


def curl_https(name, addr, cafile, path="/"):
    """curl https://name:port/ with `name` resolved to addr's host; returns (rc, body, local ip,
    local port, stderr)."""
    host, port = addr
    resolve_host = f"[{host}]" if ":" in host else host
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", "10", "--cacert", cafile,
            "--resolve", f"{name}:{port}:{resolve_host}", "-o", "-",
            "-w", "\n%{local_ip} %{local_port}", f"https://{name}:{port}{path}"]
    p = subprocess.run(argv, capture_output=True, timeout=20)
    out = p.stdout.decode("utf-8", errors="replace")
    body, _, local = out.rpartition("\n")
    local_ip, _, local_port = local.partition(" ")
    return p.returncode, body, local_ip, local_port, p.stderr.decode(errors="replace").strip()


def client_hello(server_name):
    """A real ClientHello from Python's ssl (None: no SNI)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def send_and_read_until_closed(addr, data):
    """Sends `data` (ignoring a reset while sending) and returns (received bytes, how closed)."""
    with harness.connect(addr) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return b"", "reset"
        return harness.read_until_closed(sock)


def trickled_https_get(addr, server_name, cafile, pause=0.001, prefix=b""):
    """HTTPS GET whose ClientHello goes out one byte per TCP segment (pause=None: in one write,
    after `prefix`, e.g. a PROXY header); the rest of the handshake and the request run normally.
    Returns (response bytes, peer certificate dict)."""
    ctx = ssl.create_default_context(cafile=cafile)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with harness.connect(addr) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = outgoing.read()
        if pause is None:
            sock.sendall(prefix + hello)
        else:
            sock.sendall(prefix)
            for i in range(len(hello)):
                sock.sendall(hello[i:i + 1])
                time.sleep(pause)  # pacing, so that each byte leaves as a segment of its own
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = outgoing.read()
                if pending:
                    sock.sendall(pending)
                data = sock.recv(65536)
                if not data:
                    raise AssertionError("connection closed during the handshake")
                incoming.write(data)
        obj.write(f"GET / HTTP/1.0\r\nHost: {server_name}\r\n\r\n".encode())
        sock.sendall(outgoing.read())
        response = b""
        while True:
            try:
                chunk = obj.read(65536)
                if not chunk:
                    break  # close_notify
                response += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                break
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
        return response, obj.getpeercert()


class TlsEntrypointTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.ca = private_ca.PrivateCa(h.path("ca"))
        www_cert, www_key = cls.ca.server("www.orang.com")
        mail_cert, mail_key = cls.ca.server("mail.example.org")
        cls.www = h.nginx(f"""\
            ssl_certificate {www_cert};
            ssl_certificate_key {www_key};
            location / {{ return 200 "www $proxy_protocol_addr $proxy_protocol_port\\n"; }}
            """, name="nginx-www", listen_options="ssl proxy_protocol")
        cls.mail = h.nginx(f"""\
            ssl_certificate {mail_cert};
            ssl_certificate_key {mail_key};
            location / {{ return 200 "mail\\n"; }}
            """, name="nginx-mail", listen_options="ssl")
        cls.relay = h.relay(f"""\
            relay_id: relay-tls
            state_dir: {h.path('relay-state')}
            log_level: {harness.LOG_LEVEL}
            workers: 2
            agent_listener:
              listen: ["127.0.0.1:0"]
            tls:
              listen: ["127.0.0.1:0", "[::1]:0"]
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "orang-tls-secret"
                grants: ["tls:www.orang.com", "tls:gone.orang.com"]
              - name: example
                secret: "example-tls-secret"
                grants: ["tls:*.example.org"]
            """, name="relay")
        cls.tls_addr = cls.relay.address("tls")
        cls.tls_addr6 = cls.relay.address("tls", v6=True)
        agent_addr = harness.format_addr(cls.relay.address("agent"))

        def agent(name, credential, secret, services, links=2):
            return h.agent(textwrap.dedent(f"""\
                agent_id: {name}
                links: {links}
                relays: ["{agent_addr}"]
                relay_fingerprint: "sha256:{cls.relay.fingerprint}"
                credential: {{name: {credential}, secret: "{secret}"}}
                log_level: {harness.LOG_LEVEL}
                services:
                """) + textwrap.indent(textwrap.dedent(services), "  "), name=name)

        cls.agent_www = agent("agent-www", "orang", "orang-tls-secret", f"""\
            - {{name: www.orang.com, kind: tls, target: "{cls.www.target()}", proxy_protocol: v2}}
            """)
        cls.agent_mail = agent("agent-mail", "example", "example-tls-secret", f"""\
            - {{name: mail.example.org, kind: tls, target: "{cls.mail.target()}"}}
            """, links=1)  # one link, on one of the two relay workers: the other hands off
        cls.agent_www.wait_registered("www.orang.com", "tls")
        cls.agent_mail.wait_registered("mail.example.org", "tls")
        # A name whose only agent has gone: known to the relay, served by no link.
        gone = agent("agent-gone", "orang", "orang-tls-secret", f"""\
            - {{name: gone.orang.com, kind: tls, target: "{cls.www.target()}"}}
            """)
        gone.wait_registered("gone.orang.com", "tls")
        gone.stop()

    def refused(self, reason):
        return self.relay.metric("rdv_tls_refused_total", reason=reason)

    def assert_www_works(self, addr=None):
        rc, body, local_ip, local_port, err = curl_https("www.orang.com", addr or self.tls_addr,
                                                         self.ca.cert)
        self.assertEqual(rc, 0, f"curl failed: {err}")
        # nginx read the PROXY v2 header the agent sent: the client's own address and port.
        self.assertEqual(body.strip(), f"www {local_ip} {local_port}")

    def test_curl_verifies_the_private_certificate_end_to_end(self):
        routed = self.relay.metric("rdv_tls_routed_total")
        self.assert_www_works()
        self.assertGreaterEqual(self.relay.metric("rdv_tls_routed_total"), routed + 1)
        # The relay holds no certificate for the name: a client trusting only the system store
        # must refuse the private server's certificate (so it really is the target's).
        p = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", "--resolve",
                            f"www.orang.com:{self.tls_addr[1]}:127.0.0.1",
                            f"https://www.orang.com:{self.tls_addr[1]}/"],
                           capture_output=True, timeout=20)
        self.assertEqual(p.returncode, 60, p.stderr)  # CURLE_PEER_FAILED_VERIFICATION

    def test_second_name_reaches_second_agent(self):
        rc, body, _, _, err = curl_https("mail.example.org", self.tls_addr, self.ca.cert)
        self.assertEqual(rc, 0, err)
        self.assertEqual(body.strip(), "mail")

    def test_ipv6(self):
        self.assert_www_works(self.tls_addr6)
        rc, body, _, _, err = curl_https("mail.example.org", self.tls_addr6, self.ca.cert)
        self.assertEqual(rc, 0, err)
        self.assertEqual(body.strip(), "mail")

    def test_client_hello_one_byte_at_a_time(self):
        response, cert = trickled_https_get(self.tls_addr, "www.orang.com", self.ca.cert)
        self.assertTrue(response.startswith(b"HTTP/1.1 200"), response[:200])
        self.assertIn(b"www 127.0.0.1 ", response)
        self.assertIn(("commonName", "www.orang.com"), [kv for rdn in cert["subject"] for kv in rdn])

    def test_no_sni_gets_an_alert(self):
        before = self.refused("no_sni")
        data, how = send_and_read_until_closed(self.tls_addr, client_hello(None))
        self.assertEqual(data, ALERT_UNRECOGNIZED_NAME)
        self.assertEqual(how, "eof")
        self.relay.wait_metric("rdv_tls_refused_total", lambda v: v >= before + 1, reason="no_sni")
        # The same with a real client.
        p = subprocess.run(["openssl", "s_client", "-connect",
                            harness.format_addr(self.tls_addr), "-noservername"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
        output = (p.stdout + p.stderr).decode(errors="replace")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("unrecognized name", output)
        self.relay.wait_metric("rdv_tls_refused_total", lambda v: v >= before + 2, reason="no_sni")
        self.assert_www_works()

    def test_unknown_name_gets_an_alert(self):
        before = self.refused("unknown_name")
        data, how = send_and_read_until_closed(self.tls_addr, client_hello("nobody.orang.com"))
        self.assertEqual((data, how), (ALERT_UNRECOGNIZED_NAME, "eof"))
        rc, _, _, _, err = curl_https("other.example.net", self.tls_addr, self.ca.cert)
        self.assertNotEqual(rc, 0)
        self.assertIn("unrecognized name", err)
        self.relay.wait_metric("rdv_tls_refused_total", lambda v: v >= before + 2,
                               reason="unknown_name")
        self.relay.wait_line(harness.log_message(
            r"tls \S+: refused \(unknown_name\): no tls service is registered for "
            r"'other\.example\.net'"))
        self.assert_www_works()

    def test_name_without_agent_gets_an_alert(self):
        before = self.refused("no_agent")
        data, how = send_and_read_until_closed(self.tls_addr, client_hello("gone.orang.com"))
        self.assertEqual((data, how), (ALERT_INTERNAL_ERROR, "eof"))
        self.relay.wait_metric("rdv_tls_refused_total", lambda v: v >= before + 1,
                               reason="no_agent")

    def test_random_bytes_and_malformed_hellos_are_refused(self):
        not_tls = self.refused("not_tls")
        malformed = self.refused("malformed")
        # Random bytes (not starting like a handshake record), and an HTTP request.
        for data in (b"\x42" + os.urandom(4095), b"GET / HTTP/1.1\r\nHost: www.orang.com\r\n\r\n"):
            received, how = send_and_read_until_closed(self.tls_addr, data)
            self.assertEqual(received, b"")
            self.assertIn(how, ("eof", "reset"))
        self.relay.wait_metric("rdv_tls_refused_total", lambda v: v >= not_tls + 2,
                               reason="not_tls")
        # A handshake record holding a ServerHello, and one whose length runs past 2^14.
        for data in (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", b"\x16\x03\x01\x40\x01" + b"x" * 64):
            received, how = send_and_read_until_closed(self.tls_addr, data)
            self.assertEqual(received, b"")
        self.relay.wait_metric("rdv_tls_refused_total", lambda v: v >= malformed + 2,
                               reason="malformed")
        self.assert_www_works()
        self.assert_www_works(self.tls_addr6)

    def test_slow_hello_times_out(self):
        # A relay of its own with a short hello_timeout (the shared one keeps the default, so
        # that the byte-by-byte test does not race it on a loaded machine).
        h = self.h
        relay = h.relay(f"""\
            relay_id: relay-tls-slow
            state_dir: {h.path('relay-slow-state')}
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]
            tls:
              listen: ["127.0.0.1:0"]
              hello_timeout_ms: {SLOW_HELLO_TIMEOUT_MS}
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "orang-tls-secret"
                grants: ["tls:www.orang.com"]
            """, name="relay-slow")
        hello = client_hello("www.orang.com")
        started = time.monotonic()
        received, how = send_and_read_until_closed(relay.address("tls"), hello[:20])
        elapsed = time.monotonic() - started
        self.assertEqual(received, b"")
        self.assertGreaterEqual(elapsed, SLOW_HELLO_TIMEOUT_MS / 1000 * 0.9)
        relay.wait_metric("rdv_tls_refused_total", lambda v: v >= 1, reason="timeout")
        relay.stop()

    def test_many_connections_on_both_workers(self):
        # Two relay workers, and mail.example.org has one link: the connections the kernel gives
        # to the other worker are handed over with the ClientHello already read; every one must
        # arrive.
        handoffs = self.relay.metric("rdv_worker_handoffs_total")
        for _ in range(20):
            rc, body, _, _, err = curl_https("mail.example.org", self.tls_addr, self.ca.cert)
            self.assertEqual((rc, body.strip()), (0, "mail"), err)
        for _ in range(5):
            self.assert_www_works()
        self.assertGreater(self.relay.metric("rdv_worker_handoffs_total"), handoffs)


class TlsBehindLoadBalancerTest(harness.IntegrationTest):
    """A load balancer in front of the relay (proxy_protocol_from) sends a PROXY header and the
    ClientHello in one segment: the relay routes by the SNI after the header, and the client the
    header names reaches the target in the agent's own PROXY header."""

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.ca = private_ca.PrivateCa(h.path("ca"))
        cert, key = cls.ca.server("www.orang.com")
        nginx = h.nginx(f"""\
            ssl_certificate {cert};
            ssl_certificate_key {key};
            location / {{ return 200 "www $proxy_protocol_addr $proxy_protocol_port\\n"; }}
            """, name="nginx-www", listen_options="ssl proxy_protocol")
        cls.relay = h.relay(f"""\
            relay_id: relay-tls-lb
            state_dir: {h.path('relay-state')}
            log_level: {harness.LOG_LEVEL}
            proxy_protocol_from: ["::1/128"]
            agent_listener:
              listen: ["127.0.0.1:0"]
            tls:
              listen: ["127.0.0.1:0", "[::1]:0"]
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "orang-tls-secret"
                grants: ["tls:www.orang.com"]
            """, name="relay")
        agent = h.agent(textwrap.dedent(f"""\
            agent_id: agent-www
            relays: ["{harness.format_addr(cls.relay.address('agent'))}"]
            relay_fingerprint: "sha256:{cls.relay.fingerprint}"
            credential: {{name: orang, secret: "orang-tls-secret"}}
            log_level: {harness.LOG_LEVEL}
            services:
              - {{name: www.orang.com, kind: tls, target: "{nginx.target()}", proxy_protocol: v2}}
            """), name="agent-www")
        agent.wait_registered("www.orang.com", "tls")

    def test_proxy_header_then_client_hello(self):
        header = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 443\r\n"
        response, _ = trickled_https_get(self.relay.address("tls", v6=True), "www.orang.com",
                                         self.ca.cert, pause=None, prefix=header)
        self.assertTrue(response.startswith(b"HTTP/1.1 200"), response[:200])
        # An IPv4 client of an IPv6 relay listener is sent to the target as IPv4-mapped.
        self.assertRegex(response, rb"\nwww (::ffff:)?192\.0\.2\.7 5555\n")
        self.assertEqual(self.relay.metric("rdv_tls_routed_total"), 1)


if __name__ == "__main__":
    harness.main()
