#!/usr/bin/python3
"""PROXY protocol from agent to target: nginx (listen ... proxy_protocol) reports the address it
read from the header, which must be the real client's, for tcp and http services, v1 and v2,
IPv4 and IPv6 clients.
"""

import os
import socket
import sys
import textwrap

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SECRET = "orang-proxy-secret"


def fetch(addr, host="pp.orang.com"):
    """GET / over a fresh connection; returns (our (ip, port), response body)."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(addr)
        local = sock.getsockname()[:2]
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
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


if __name__ == "__main__":
    harness.main()
