#!/usr/bin/python3
"""PROXY protocol on both sides of the relay.

From agent to target: nginx (listen ... proxy_protocol) reports the address it read from the
header, which must be the real client's, for tcp and http services, v1 and v2, IPv4 and IPv6
clients.

From a load balancer to the relay (`proxy_protocol_from`): HAProxy in front of the relay sends
`send-proxy` / `send-proxy-v2`; the client it names, not HAProxy, is what the target sees.
Connections from the balancer without a valid header are refused and counted; other sources
never need one.
"""

import os
import socket
import sys
import textwrap

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SECRET = "orang-proxy-secret"


def fetch(addr, host="pp.orang.com", source=None, prefix=b""):
    """GET / over a fresh connection (from `source` ip when given, `prefix` sent first); returns
    (our (ip, port), response body)."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        if source:
            sock.bind((source, 0))
        sock.connect(addr)
        local = sock.getsockname()[:2]
        sock.sendall(prefix + f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return local, body.decode().strip()


class ProxyProtocolTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.lo, cls.hi = harness.free_port_range(10)
        cls.nginx = h.nginx("""\
            location / { return 200 "$proxy_protocol_addr $proxy_protocol_port\\n"; }
            """, listen_options="proxy_protocol")
        cls.relay = h.relay(f"""\
            relay_id: relay-proxy
            state_dir: {h.path('relay-state')}
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]
            http:
              listen: ["127.0.0.1:0"]
            tcp:
              bind: ["127.0.0.1", "::1"]
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "{SECRET}"
                grants: ["tcp:{cls.lo}-{cls.hi}", "http:pp.orang.com"]
            """, name="relay")
        target = f"127.0.0.1:{cls.nginx.port}"
        cls.agent = h.agent(textwrap.dedent(f"""\
            agent_id: agent-proxy
            relays: ["{harness.format_addr(cls.relay.address('agent'))}"]
            relay_fingerprint: "sha256:{cls.relay.fingerprint}"
            credential: {{name: orang, secret: "{SECRET}"}}
            log_level: {harness.LOG_LEVEL}
            services:
              - {{name: pp1, kind: tcp, port: {cls.lo}, target: "{target}", proxy_protocol: v1}}
              - {{name: pp2, kind: tcp, port: {cls.lo + 1}, target: "{target}", proxy_protocol: v2}}
              - {{name: pp.orang.com, kind: http, target: "{target}", proxy_protocol: v2}}
            """), name="agent")
        for name, kind in (("pp1", "tcp"), ("pp2", "tcp"), ("pp.orang.com", "http")):
            cls.agent.wait_registered(name, kind)

    def check(self, addr):
        local, body = fetch(addr)
        self.assertEqual(body, f"{local[0]} {local[1]}",
                         "the target did not see the client's own address and port")

    def test_tcp_v1_ipv4(self):
        self.check(("127.0.0.1", self.lo))

    def test_tcp_v2_ipv4(self):
        self.check(("127.0.0.1", self.lo + 1))

    def test_tcp_v1_and_v2_ipv6(self):
        self.check(("::1", self.lo))
        self.check(("::1", self.lo + 1))

    def test_http_v2(self):
        self.check(self.relay.address("http"))


# The load balancer's own address: connections from it must carry a PROXY header.
BALANCER_IP = "127.0.0.9"


class HAProxy(harness.Process):
    """HAProxy in the foreground, `frontends` = [(listen port, backend address, server options)]."""

    def __init__(self, h, name, frontends):
        lines = ["global", "    maxconn 256", "defaults", "    mode tcp",
                 "    timeout connect 5s", "    timeout client 30s", "    timeout server 30s"]
        for i, (port, backend, options) in enumerate(frontends):
            lines += [f"listen lb{i}", f"    bind 127.0.0.1:{port}",
                      f"    server relay {backend} source {BALANCER_IP} {options}"]
        conf = h.write(f"{name}.cfg", "\n".join(lines) + "\n")
        super().__init__(name, ["haproxy", "-db", "-f", conf], h.path(f"{name}.log"))
        for port, _, _ in frontends:
            harness.wait_until(lambda: self._accepting(port), 10, f"haproxy listening on {port}")

    def _accepting(self, port):
        if not self.alive():
            raise AssertionError(f"haproxy exited\n{self.tail()}")
        try:
            with harness.connect(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def expected_stop_status(self):
        return None


class LoadBalancerTest(harness.IntegrationTest):
    """proxy_protocol_from: HAProxy in front of the relay's http entrypoint and a tcp port."""

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.lo, cls.hi = harness.free_port_range(2)
        cls.nginx = h.nginx("""\
            location / { return 200 "$proxy_protocol_addr $proxy_protocol_port\\n"; }
            """, listen_options="proxy_protocol")
        cls.relay = h.relay(f"""\
            relay_id: relay-lb
            state_dir: {h.path('relay-lb-state')}
            log_level: {harness.LOG_LEVEL}
            workers: 2
            proxy_protocol_from: ["{BALANCER_IP}/32"]
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
                grants: ["tcp:{cls.lo}-{cls.hi}", "http:pp.orang.com"]
            """, name="relay-lb")
        target = f"127.0.0.1:{cls.nginx.port}"
        cls.agent = h.agent(textwrap.dedent(f"""\
            agent_id: agent-lb
            relays: ["{harness.format_addr(cls.relay.address('agent'))}"]
            relay_fingerprint: "sha256:{cls.relay.fingerprint}"
            credential: {{name: orang, secret: "{SECRET}"}}
            log_level: {harness.LOG_LEVEL}
            services:
              - {{name: lbtcp, kind: tcp, port: {cls.lo}, target: "{target}", proxy_protocol: v1}}
              - {{name: pp.orang.com, kind: http, target: "{target}", proxy_protocol: v2}}
            """), name="agent-lb")
        cls.agent.wait_registered("lbtcp", "tcp")
        cls.agent.wait_registered("pp.orang.com", "http")
        http = harness.format_addr(cls.relay.address("http"))
        cls.lb_http, cls.lb_tcp = harness.free_port(), harness.free_port()
        cls.haproxy = HAProxy(h, "haproxy", [(cls.lb_http, http, "send-proxy-v2"),
                                             (cls.lb_tcp, f"127.0.0.1:{cls.lo}", "send-proxy")])
        h.processes.append(cls.haproxy)

    def refused(self, reason):
        return self.relay.metric("rdv_proxy_header_refused_total", reason=reason) or 0

    def test_haproxy_v2_to_http_entrypoint(self):
        for source in ("127.0.0.7", "127.0.0.8"):
            local, body = fetch(("127.0.0.1", self.lb_http), source=source)
            self.assertEqual(body, f"{local[0]} {local[1]}",
                             "the target did not see the client that HAProxy named")

    def test_haproxy_v1_to_tcp_port(self):
        for _ in range(3):  # several connections, so both workers take some
            local, body = fetch(("127.0.0.1", self.lb_tcp), source="127.0.0.7")
            self.assertEqual(body, f"{local[0]} {local[1]}")

    def test_header_names_any_client(self):
        http = self.relay.address("http")
        v1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 4444 80\r\n"
        _, body = fetch(http, source=BALANCER_IP, prefix=v1)
        self.assertEqual(body, "203.0.113.9 4444")
        v6 = b"PROXY TCP6 2001:db8::9 ::1 5555 80\r\n"
        _, body = fetch(("127.0.0.1", self.lo), source=BALANCER_IP, prefix=v6)
        self.assertEqual(body, "2001:db8::9 5555")

    def test_local_header_keeps_the_socket_address(self):
        # HAProxy's health checks send LOCAL (v2): the connection is served as the balancer's own.
        local_v2 = bytes.fromhex("0d0a0d0a000d0a515549540a") + bytes([0x20, 0x00, 0x00, 0x00])
        local, body = fetch(self.relay.address("http"), source=BALANCER_IP, prefix=local_v2)
        self.assertEqual(body, f"{local[0]} {local[1]}")

    def test_balancer_without_header_is_refused_and_counted(self):
        before = self.refused("malformed")
        sock = socket.socket()
        sock.bind((BALANCER_IP, 0))
        sock.connect(self.relay.address("http"))
        sock.sendall(b"GET / HTTP/1.0\r\nHost: pp.orang.com\r\n\r\n")
        data, how = harness.read_until_closed(sock)
        sock.close()
        self.assertEqual(data, b"", "a connection without its PROXY header was served")
        self.relay.wait_metric("rdv_proxy_header_refused_total", lambda v: v >= before + 1,
                               reason="malformed")
        # A bad v1 line, and a truncated header followed by EOF.
        for bad, reason in ((b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "malformed"),
                            (b"PROXY TCP4 1.2.3.4", "eof")):
            before = self.refused(reason)
            sock = socket.socket()
            sock.bind((BALANCER_IP, 0))
            sock.connect(self.relay.address("http"))
            sock.sendall(bad)
            if reason == "eof":
                sock.shutdown(socket.SHUT_WR)
            data, _ = harness.read_until_closed(sock)
            sock.close()
            self.assertEqual(data, b"")
            self.relay.wait_metric("rdv_proxy_header_refused_total",
                                   lambda v, b=before: v >= b + 1, reason=reason)
        # Other sources still need no header.
        local, body = fetch(self.relay.address("http"))
        self.assertEqual(body, f"{local[0]} {local[1]}")


if __name__ == "__main__":
    harness.main()
