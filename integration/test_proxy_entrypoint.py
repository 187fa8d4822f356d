#!/usr/bin/python3
"""The relay as the client's configured proxy: curl -x / --socks5-hostname -> rdv-relay proxy
entrypoint -> rdv-agent -> nginx or a data target, by virtual address (name).

Topology (ProxyEntrypointTest, no proxy users):
  relay   proxy on 127.0.0.1:0 and [::1]:0, head_timeout_ms 1000
  agent   www.orang.com (http) -> nginx serving a page on loopback
          secure.orang.com (tls) -> nginx with TLS (self-signed), passed through end to end
          db   (tcp) -> data target (byte-exact exchanges, echo)
          gone (tcp) -> a closed port (the agent refuses the stream)
ProxyAuthTest: the same with proxy users configured (SOCKS5 RFC 1929, HTTP Proxy-Authorization),
  and an agent with a single link, so that clients accepted by the other worker are handed over.
"""

import os
import socket
import subprocess
import sys
import textwrap

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SECRET = "orang-proxy-secret"
MIB = 1 << 20
USER, PASSWORD = "alice", "s3cret-pw"

PAGE = """
location / {{ return 200 "{token}\\n"; }}
location /echo {{
    return 200 "$request_uri|$http_host|$http_proxy_authorization|$http_proxy_connection|$http_x_forwarded_for\\n";
}}
"""

# curl must not pick up a proxy from the environment; the tests name the proxy themselves.
_CLEAN_ENV = {k: v for k, v in os.environ.items()
              if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}


def proxy_curl(url, args, timeout=10):
    argv = ["curl", "-sS", "--max-time", str(timeout), "-o", "-", "-w", "\n%{http_code}"]
    argv += list(args) + [url]
    p = subprocess.run(argv, capture_output=True, timeout=timeout + 5, env=_CLEAN_ENV)
    out = p.stdout.decode("utf-8", errors="replace")
    body, _, code = out.rpartition("\n")
    return harness.CurlResult(p.returncode, int(code) if code.isdigit() else 0, body,
                              p.stderr.decode("utf-8", errors="replace").strip())


def recv_exact(sock, n, timeout=10):
    sock.settimeout(timeout)
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise AssertionError(f"connection closed after {data!r} (wanted {n} bytes)")
        data += more
    return data


def socks_request(host, port, command=1, atyp=3):
    if atyp == 3:
        address = bytes([len(host)]) + host.encode()
    elif atyp == 1:
        address = socket.inet_pton(socket.AF_INET, host)
    elif atyp == 4:
        address = socket.inet_pton(socket.AF_INET6, host)
    else:
        address = b"\x00\x00\x00\x00"
    return bytes([5, command, 0, atyp]) + address + port.to_bytes(2, "big")


def socks_open(addr, host, port, credentials=None, command=1, atyp=3):
    """SOCKS5 handshake on a new socket; returns (socket, reply code)."""
    sock = harness.connect(addr)
    methods = [2] if credentials else [0]
    sock.sendall(bytes([5, len(methods)] + methods))
    selected = recv_exact(sock, 2)
    assert selected == bytes([5, methods[0]]), selected
    if credentials:
        user, password = (s.encode() for s in credentials)
        sock.sendall(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        status = recv_exact(sock, 2)
        assert status == b"\x01\x00", status
    sock.sendall(socks_request(host, port, command, atyp))
    reply = recv_exact(sock, 10)
    assert reply[0] == 5 and reply[2] == 0, reply
    return sock, reply[1]


def relay_yaml(h, name, users=False):
    text = textwrap.dedent(f"""\
        relay_id: {name}
        state_dir: {h.path(name + '-state')}
        workers: 2
        log_level: {harness.LOG_LEVEL}
        agent_listener:
          listen: ["127.0.0.1:0"]
        proxy:
          listen: ["127.0.0.1:0", "[::1]:0"]
          head_timeout_ms: 1000
        tls:
          listen: ["127.0.0.1:0"]
        admin:
          listen: ["127.0.0.1:0"]
        credentials:
          - name: orang
            secret: "{SECRET}"
            grants: ["http:www.orang.com", "tls:secure.orang.com", "tcp:{PORTS[0]}-{PORTS[1]}"]
        """)
    if users:
        text = text.replace("  head_timeout_ms: 1000\n", "  head_timeout_ms: 1000\n  users:\n"
                            f"    - {{name: {USER}, password: \"{PASSWORD}\"}}\n")
    return text


def agent_yaml(relay, name, nginx, tls_nginx, target, closed_port, links):
    return textwrap.dedent(f"""\
        agent_id: {name}
        relays: ["{harness.format_addr(relay.address('agent'))}"]
        relay_fingerprint: "sha256:{relay.fingerprint}"
        credential:
          name: orang
          secret: "{SECRET}"
        links: {links}
        log_level: {harness.LOG_LEVEL}
        services:
          - name: www.orang.com
            kind: http
            target: {nginx.target()}
          - name: secure.orang.com
            kind: tls
            target: {tls_nginx.target()}
          - name: db
            kind: tcp
            port: 0
            target: {target.target()}
          - name: gone
            kind: tcp
            port: 0
            target: 127.0.0.1:{closed_port}
        """)


PORTS = harness.free_port_range(10)


def start_pair(test_class, h, name, users=False, links=2):
    test_class.token = "proxy-page-" + name
    test_class.nginx = h.nginx(PAGE.format(token=test_class.token), name=f"nginx-{name}")
    cert, key = h.path(f"{name}-cert.pem"), h.path(f"{name}-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=secure.orang.com", "-keyout", key, "-out", cert], check=True,
                   capture_output=True)
    test_class.tls_token = "proxy-tls-page-" + name
    test_class.tls_nginx = h.nginx(
        f"ssl_certificate {cert};\nssl_certificate_key {key};\n" +
        PAGE.format(token=test_class.tls_token), name=f"nginx-tls-{name}", listen_options="ssl")
    test_class.target = h.data_target()
    closed_port = harness.free_port()
    test_class.relay = h.relay(relay_yaml(h, name, users), name=name)
    test_class.proxy = test_class.relay.address("proxy")
    test_class.proxy6 = test_class.relay.address("proxy", v6=True)
    test_class.agent = h.agent(agent_yaml(test_class.relay, f"agent-{name}", test_class.nginx,
                                          test_class.tls_nginx, test_class.target, closed_port,
                                          links), name=f"agent-{name}")
    test_class.agent.wait_registered("www.orang.com", "http")
    test_class.agent.wait_registered("secure.orang.com", "tls")
    test_class.agent.wait_registered("db", "tcp")
    test_class.agent.wait_registered("gone", "tcp")


class ProxyEntrypointTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        start_pair(cls, cls.shared_harness(), "relay-proxy")

    def proxy_url(self, addr=None):
        return "http://" + harness.format_addr(addr or self.proxy)

    def refused(self, reason):
        return self.relay.metric("rdv_proxy_refused_total", reason=reason)

    def assert_page(self, result):
        self.assertEqual(result.rc, 0, result)
        self.assertEqual(result.status, 200, result)
        self.assertEqual(result.body.strip(), self.token, result)

    def test_absolute_form(self):
        self.assert_page(proxy_curl("http://www.orang.com/", ["-x", self.proxy_url()]))
        # The target sees an origin-form request with Host, X-Forwarded-For and no Proxy-*.
        r = proxy_curl("http://www.orang.com/echo?a=1", ["-x", self.proxy_url()])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body.strip(), "/echo?a=1|www.orang.com|||127.0.0.1", r)

    def test_absolute_form_keep_alive_two_requests(self):
        r = proxy_curl("http://www.orang.com/", ["-x", self.proxy_url(), "--next", "-x",
                                                 self.proxy_url(), "http://www.orang.com/echo"])
        self.assertEqual(r.rc, 0, r)
        self.assertIn(self.token, r.body, r)
        self.assertIn("/echo|www.orang.com|", r.body, r)

    def test_connect_tunnel(self):
        self.assert_page(proxy_curl("http://www.orang.com/", ["-p", "-x", self.proxy_url()]))
        before = self.relay.metric("rdv_proxy_requests_total", protocol="connect")
        r = proxy_curl("http://www.orang.com/echo", ["-p", "-x", self.proxy_url()])
        self.assertEqual(r.body.strip(), "/echo|www.orang.com|||127.0.0.1", r)
        self.assertGreater(self.relay.metric("rdv_proxy_requests_total", protocol="connect"),
                           before)

    def test_socks5_hostname(self):
        before = self.relay.metric("rdv_proxy_requests_total", protocol="socks5")
        self.assert_page(proxy_curl("http://www.orang.com/", [
            "--socks5-hostname", harness.format_addr(self.proxy)]))
        self.assert_page(proxy_curl("http://www.orang.com/", [
            "-x", "socks5h://" + harness.format_addr(self.proxy)]))
        self.assertEqual(self.relay.metric("rdv_proxy_requests_total", protocol="socks5"),
                         before + 2)

    def test_ipv6_listener(self):
        self.assert_page(proxy_curl("http://www.orang.com/", ["-x", self.proxy_url(self.proxy6)]))
        self.assert_page(proxy_curl("http://www.orang.com/", [
            "-p", "-x", self.proxy_url(self.proxy6)]))
        self.assert_page(proxy_curl("http://www.orang.com/", [
            "--socks5-hostname", harness.format_addr(self.proxy6)]))

    def test_tls_service_end_to_end(self):
        # Port 443 selects the tls service; TLS runs between curl and nginx, untouched.
        for args in (["-x", self.proxy_url()], ["--socks5-hostname",
                                                harness.format_addr(self.proxy)]):
            r = proxy_curl("https://secure.orang.com/", args + ["-k"])
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.body.strip(), self.tls_token, r)
        # The http service of a name is not reached on the TLS port.
        sock, code = socks_open(self.proxy, "www.orang.com", 443)
        sock.close()
        self.assertEqual(code, 4)

    def test_tcp_service_through_socks_byte_exact(self):
        sock, code = socks_open(self.proxy, "db", 5432)
        with sock:
            self.assertEqual(code, 0)
            harness.exchange_on(sock, 2 * MIB, 3 * MIB, seed=7101)
        sock, code = socks_open(self.proxy6, "db", 1)
        with sock:
            self.assertEqual(code, 0)
            harness.exchange_on(sock, MIB, MIB, seed=7102)

    def test_tcp_service_through_connect_byte_exact(self):
        with harness.connect(self.proxy) as sock:
            sock.sendall(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += recv_exact(sock, 1)
            self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
            harness.exchange_on(sock, MIB, 2 * MIB, seed=7103)

    def test_target_refused(self):
        before = self.refused("target_refused")
        sock, code = socks_open(self.proxy, "gone", 80)
        sock.close()
        self.assertEqual(code, 5)  # connection refused, reported only once the agent tried
        with harness.connect(self.proxy) as sock:
            sock.sendall(b"CONNECT gone:80 HTTP/1.1\r\nHost: gone\r\n\r\n")
            response, _ = harness.read_until_closed(sock)
        self.assertEqual(harness.http_status(response), 502, response)
        self.assertEqual(self.refused("target_refused"), before + 2)

    def test_unknown_name_and_address_literals(self):
        before_unknown = self.refused("unknown_name")
        before_literal = self.refused("not_allowed")
        before_404 = self.relay.metric("rdv_http_errors_total", code="404")
        sock, code = socks_open(self.proxy, "nope.example", 80)
        sock.close()
        self.assertEqual(code, 4)  # host unreachable
        sock, code = socks_open(self.proxy, "127.0.0.1", 80, atyp=1)
        sock.close()
        self.assertEqual(code, 2)  # not allowed: the relay serves names, not addresses
        sock, code = socks_open(self.proxy, "::1", 80, atyp=4)
        sock.close()
        self.assertEqual(code, 2)
        r = proxy_curl("http://nope.example/", ["-x", self.proxy_url()])
        self.assertEqual(r.status, 404, r)
        r = proxy_curl("http://nope.example/", ["-p", "-x", self.proxy_url()])
        self.assertNotEqual(r.rc, 0, r)
        self.assertIn("404", r.stderr, r)
        r = proxy_curl("http://127.0.0.1/", ["--socks5", harness.format_addr(self.proxy)])
        self.assertNotEqual(r.rc, 0, r)
        # Absolute-form requests are answered (and counted) by the HTTP request path.
        self.assertEqual(self.relay.metric("rdv_http_errors_total", code="404"), before_404 + 1)
        self.assertEqual(self.refused("unknown_name"), before_unknown + 2)
        self.assertEqual(self.refused("not_allowed"), before_literal + 3)

    def test_unsupported_command_and_address_type(self):
        before = self.refused("unsupported_command")
        sock, code = socks_open(self.proxy, "db", 53, command=3)  # UDP ASSOCIATE
        sock.close()
        self.assertEqual(code, 7)
        self.assertEqual(self.refused("unsupported_command"), before + 1)
        with harness.connect(self.proxy) as sock:
            sock.sendall(b"\x05\x01\x00")
            self.assertEqual(recv_exact(sock, 2), b"\x05\x00")
            sock.sendall(b"\x05\x01\x00\x09abcdef")
            reply, _ = harness.read_until_closed(sock)
        self.assertEqual(reply[:2], b"\x05\x08", reply)

    def test_garbage_refused_without_disturbing_other_streams(self):
        sock, code = socks_open(self.proxy, "db", 7)
        self.assertEqual(code, 0)
        with sock:
            sock.sendall(b"E\n")
            sock.sendall(b"before-garbage")
            self.assertEqual(recv_exact(sock, 14), b"before-garbage")
            before = self.refused("malformed")
            for garbage in (b"\x05\x00", b"\x05\x01\x00\x04\x01", b"GARBAGE / HTTP/9.9\r\n\r\n",
                            b"CONNECT \x00\x01 nonsense\r\n\r\n"):
                with harness.connect(self.proxy) as bad:
                    bad.sendall(garbage)
                    harness.read_until_closed(bad)
            sock.sendall(b"after-garbage")
            self.assertEqual(recv_exact(sock, 13), b"after-garbage")
        self.assertGreaterEqual(self.refused("malformed"), before + 3)
        self.assertTrue(self.relay.alive())

    def test_silent_client_times_out(self):
        before = self.refused("timeout")
        with harness.connect(self.proxy) as sock:
            sock.sendall(b"\x05\x01")  # half a greeting, then nothing
            _, how = harness.read_until_closed(sock, timeout=5)
        self.assertEqual(how, "eof")
        self.relay.wait_metric("rdv_proxy_refused_total", lambda v: v >= before + 1,
                               reason="timeout")


class ProxyAuthTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        start_pair(cls, cls.shared_harness(), "relay-proxy-auth", users=True, links=1)

    def proxy_url(self):
        return "http://" + harness.format_addr(self.proxy)

    def refused_auth(self):
        return self.relay.metric("rdv_proxy_refused_total", reason="auth")

    def test_http_proxy_credentials(self):
        r = proxy_curl("http://www.orang.com/echo",
                       ["-x", self.proxy_url(), "--proxy-user", f"{USER}:{PASSWORD}"])
        self.assertEqual(r.status, 200, r)
        # The credentials are for the relay: they never reach the target.
        self.assertEqual(r.body.strip(), "/echo|www.orang.com|||127.0.0.1", r)
        r = proxy_curl("http://www.orang.com/", [
            "-p", "-x", self.proxy_url(), "--proxy-user", f"{USER}:{PASSWORD}"])
        self.assertEqual(r.body.strip(), self.token, r)

    def test_http_proxy_wrong_or_missing_credentials(self):
        before = self.refused_auth()
        for extra in ([], ["--proxy-user", f"{USER}:wrong"], ["--proxy-user", f"bob:{PASSWORD}"]):
            r = proxy_curl("http://www.orang.com/", ["-x", self.proxy_url()] + extra)
            self.assertEqual(r.status, 407, r)
        r = proxy_curl("http://www.orang.com/", ["-p", "-x", self.proxy_url(), "--proxy-user",
                                                 f"{USER}:wrong"])
        self.assertNotEqual(r.rc, 0, r)
        self.assertIn("407", r.stderr, r)
        with harness.connect(self.proxy) as sock:
            sock.sendall(b"GET http://www.orang.com/ HTTP/1.1\r\nHost: www.orang.com\r\n\r\n")
            response, _ = harness.read_until_closed(sock)
        self.assertIn(b"\r\nProxy-Authenticate: Basic realm=", response)
        self.assertEqual(self.refused_auth(), before + 5)

    def test_socks5_credentials(self):
        self.assert_ok(proxy_curl("http://www.orang.com/", [
            "--socks5-hostname", f"{USER}:{PASSWORD}@" + harness.format_addr(self.proxy)]))
        self.assert_ok(proxy_curl("http://www.orang.com/", [
            "--socks5-hostname", harness.format_addr(self.proxy), "--proxy-user",
            f"{USER}:{PASSWORD}"]))
        sock, code = socks_open(self.proxy, "db", 1, credentials=(USER, PASSWORD))
        with sock:
            self.assertEqual(code, 0)
            harness.exchange_on(sock, MIB, MIB, seed=7201)

    def test_clients_handed_to_the_worker_owning_the_link(self):
        # One agent link lives on one of the two workers; about half of these clients are
        # accepted by the other one and handed over with their destination (or request) known.
        before = self.relay.metric("rdv_worker_handoffs_total")
        credentials = ["--proxy-user", f"{USER}:{PASSWORD}"]
        for i in range(12):
            sock, code = socks_open(self.proxy, "db", 1, credentials=(USER, PASSWORD))
            with sock:
                self.assertEqual(code, 0)
                harness.exchange_on(sock, 4096, 8192, seed=7300 + i)
            self.assert_ok(proxy_curl("http://www.orang.com/", ["-x", self.proxy_url()] +
                                      credentials))
            self.assert_ok(proxy_curl("http://www.orang.com/", ["-p", "-x", self.proxy_url()] +
                                      credentials))
            r = proxy_curl("https://secure.orang.com/", ["-x", self.proxy_url(), "-k"] +
                           credentials)
            self.assertEqual(r.body.strip(), self.tls_token, r)
        self.assertGreater(self.relay.metric("rdv_worker_handoffs_total"), before)

    def assert_ok(self, result):
        self.assertEqual(result.status, 200, result)
        self.assertEqual(result.body.strip(), self.token, result)

    def test_socks5_wrong_credentials(self):
        before = self.refused_auth()
        r = proxy_curl("http://www.orang.com/", [
            "--socks5-hostname", f"{USER}:nope@" + harness.format_addr(self.proxy)])
        self.assertNotEqual(r.rc, 0, r)
        with harness.connect(self.proxy) as sock:
            sock.sendall(b"\x05\x01\x02")
            self.assertEqual(recv_exact(sock, 2), b"\x05\x02")
            sock.sendall(b"\x01\x05alice\x05wrong")
            reply, _ = harness.read_until_closed(sock)
        self.assertEqual(reply, b"\x01\x01")
        # Offering only "no authentication" gets "no acceptable methods".
        with harness.connect(self.proxy) as sock:
            sock.sendall(b"\x05\x01\x00")
            reply, _ = harness.read_until_closed(sock)
        self.assertEqual(reply, b"\x05\xff")
        self.assertEqual(self.refused_auth(), before + 3)


if __name__ == "__main__":
    harness.main()
