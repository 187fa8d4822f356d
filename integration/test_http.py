#!/usr/bin/python3
"""HTTP entrypoint end to end: curl / raw sockets / websockets -> rdv-relay -> rdv-agent -> nginx.

Topology (shared by the tests of HttpEntrypointTest):
  relay   http on 127.0.0.1:0 and [::1]:0, zone relay.test, max_head_bytes 4096, head_timeout_ms 500
  agent-1 www.orang.com -> nginx A, ws.orang.com -> websockets echo, dead.orang.com -> nginx C
  agent-2 *.orang.com   -> nginx B
"""

import asyncio
import http.client
import os
import secrets
import socket
import sys
import textwrap
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SECRET = "orang-http-secret"

PAGE = """
location / {{ return 200 "{token}\\n"; }}
location /xff {{
    return 200 "$http_x_forwarded_for|$http_x_forwarded_proto|$http_x_forwarded_host\\n";
}}
"""


def agent_yaml(relay, services, agent_id, links=2):
    return textwrap.dedent(f"""\
        agent_id: {agent_id}
        relays: ["{harness.format_addr(relay.address('agent'))}"]
        relay_fingerprint: "sha256:{relay.fingerprint}"
        credential:
          name: orang
          secret: "{SECRET}"
        links: {links}
        reconnect:
          initial_ms: 100
          max_ms: 1000
        log_level: {harness.LOG_LEVEL}
        services:
        """) + harness.yaml_block(services, 2) + "\n"


class HttpEntrypointTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.token_a = "page-A-" + secrets.token_hex(12)
        cls.token_b = "page-B-" + secrets.token_hex(12)
        cls.token_c = "page-C-" + secrets.token_hex(12)
        cls.nginx_a = h.nginx(PAGE.format(token=cls.token_a), name="nginx-a")
        cls.nginx_b = h.nginx(PAGE.format(token=cls.token_b), name="nginx-b")
        cls.nginx_c = h.nginx(PAGE.format(token=cls.token_c), name="nginx-c")
        ws_host, ws_port = h.ws_echo_server()
        cls.relay = h.relay(f"""\
            relay_id: relay-http
            state_dir: {h.path('relay-state')}
            workers: 2
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]
            http:
              listen: ["127.0.0.1:0", "[::1]:0"]
              zone: relay.test
              max_head_bytes: 4096
              head_timeout_ms: 500
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "{SECRET}"
                grants: ["http:www.orang.com", "http:*.orang.com", "http:ws.orang.com",
                         "http:dead.orang.com", "http:offline.example.org"]
                networks: ["127.0.0.0/8", "::1/128"]
            """, name="relay")
        cls.http_addr = cls.relay.address("http")
        cls.agent1 = h.agent(agent_yaml(cls.relay, f"""\
              - name: www.orang.com
                kind: http
                target: {cls.nginx_a.target()}
              - name: ws.orang.com
                kind: http
                target: {harness.format_addr((ws_host, ws_port))}
              - name: dead.orang.com
                kind: http
                target: {cls.nginx_c.target()}""", "agent-www"), name="agent-www")
        cls.agent2 = h.agent(agent_yaml(cls.relay, """\
              - name: "*.orang.com"
                kind: http
                alias: wild-orang
                target: """ + cls.nginx_b.target(), "agent-wild"), name="agent-wild")
        for name in ("www.orang.com", "ws.orang.com", "dead.orang.com"):
            cls.agent1.wait_registered(name, "http")
        cls.agent2.wait_registered("*.orang.com", "http")

    def get(self, host, path="/", addr=None, args=()):
        return harness.curl(harness.http_url(addr or self.http_addr, path), host=host, args=args)

    def assert_page(self, result, token):
        self.assertEqual(result.status, 200, result)
        self.assertEqual(result.body.strip(), token, result)

    def raw_request(self, data, timeout=10):
        """Sends raw bytes to the HTTP entrypoint; returns (response bytes, how it closed, seconds)."""
        start = time.monotonic()
        with harness.connect(self.http_addr) as sock:
            sock.sendall(data)
            response, how = harness.read_until_closed(sock, timeout)
        return response, how, time.monotonic() - start

    def error_count(self, code):
        return self.relay.metric("rdv_http_errors_total", code=str(code))

    def wait_error_count(self, code, at_least):
        self.relay.wait_metric("rdv_http_errors_total", lambda v: v >= at_least, code=str(code))

    # -- routing -------------------------------------------------------------------------------

    def test_host_header_reaches_nginx(self):
        requests_before = self.relay.metric("rdv_http_requests_total")
        self.assert_page(self.get("www.orang.com"), self.token_a)
        self.relay.wait_metric("rdv_http_requests_total", lambda v: v >= requests_before + 1)

    def test_host_with_port_as_curl_sends_it(self):
        # curl --resolve sends `Host: www.orang.com:<port>`, as any browser would.
        port = self.http_addr[1]
        result = harness.curl(f"http://www.orang.com:{port}/",
                              args=["--resolve", f"www.orang.com:{port}:127.0.0.1"])
        self.assert_page(result, self.token_a)

    def test_wildcard_registration_serves_subdomain(self):
        self.assert_page(self.get("foo.orang.com"), self.token_b)
        # An exact registration wins over the wildcard.
        self.assert_page(self.get("www.orang.com"), self.token_a)

    def test_alias_in_relay_zone(self):
        # Default alias: name with '.' -> '-', under the relay's zone.
        self.assert_page(self.get("www-orang-com.relay.test"), self.token_a)
        self.assert_page(self.get("wild-orang.relay.test"), self.token_b)

    def test_two_hosts_on_one_keepalive_connection(self):
        conn = http.client.HTTPConnection(*self.http_addr, timeout=10)
        try:
            local_ports = []
            for host, token in (("www.orang.com", self.token_a), ("foo.orang.com", self.token_b),
                                ("www.orang.com", self.token_a)):
                conn.request("GET", "/", headers={"Host": host})
                local_ports.append(conn.sock.getsockname()[1])
                resp = conn.getresponse()
                body = resp.read().decode().strip()
                self.assertEqual((resp.status, body), (200, token), f"Host {host}")
                self.assertFalse(resp.will_close, f"relay closed the connection after Host {host}")
            self.assertEqual(len(set(local_ports)), 1, f"requests used several connections: "
                                                       f"{local_ports}")
        finally:
            conn.close()

    def test_forwarded_headers_reach_target(self):
        result = self.get("www.orang.com", "/xff")
        self.assertEqual(result.status, 200, result)
        self.assertEqual(result.body.strip(), "127.0.0.1|http|www.orang.com", result)

    def test_websocket_echo(self):
        import websockets
        host, port = self.http_addr

        async def run():
            # Connects to the relay while the handshake names ws.orang.com (Host without port).
            async with websockets.connect("ws://ws.orang.com/echo", host=host, port=port,
                                          open_timeout=10, max_size=None) as ws:
                await ws.send("hello through the relay")
                self.assertEqual(await asyncio.wait_for(ws.recv(), 10), "hello through the relay")
                blob = os.urandom(256 * 1024)
                await ws.send(blob)
                self.assertEqual(await asyncio.wait_for(ws.recv(), 10), blob)
                for i in range(50):
                    await ws.send(f"message {i}")
                for i in range(50):
                    self.assertEqual(await asyncio.wait_for(ws.recv(), 10), f"message {i}")
        asyncio.run(run())

    def test_ipv6_listener(self):
        addr6 = self.relay.address("http", v6=True)
        result = harness.curl(harness.http_url(addr6), host="www.orang.com", args=["-g"])
        self.assert_page(result, self.token_a)
        xff = harness.curl(harness.http_url(addr6, "/xff"), host="www.orang.com", args=["-g"])
        self.assertEqual(xff.body.strip(), "::1|http|www.orang.com", xff)

    # -- errors --------------------------------------------------------------------------------

    def test_unknown_host_is_404(self):
        before = self.error_count(404)
        result = self.get("nosuch.example.net")
        self.assertEqual(result.status, 404, result)
        self.wait_error_count(404, before + 1)

    def test_malformed_request_is_400(self):
        before = self.error_count(400)
        response, how, _ = self.raw_request(b"THIS\x01IS NOT HTTP\r\n\r\n")
        self.assertEqual(harness.http_status(response), 400, f"{response[:200]!r} ({how})")
        self.wait_error_count(400, before + 1)

    def test_oversized_head_is_431(self):
        before = self.error_count(431)
        head = (b"GET / HTTP/1.1\r\nHost: www.orang.com\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        response, how, _ = self.raw_request(head)
        self.assertEqual(harness.http_status(response), 431, f"{response[:200]!r} ({how})")
        self.wait_error_count(431, before + 1)

    def test_slow_head_is_408(self):
        before = self.error_count(408)
        response, how, elapsed = self.raw_request(
            b"GET / HTTP/1.1\r\nHost: www.orang.com\r\nUser-Agent: slow", timeout=10)
        self.assertEqual(harness.http_status(response), 408, f"{response[:200]!r} ({how})")
        self.assertGreaterEqual(elapsed, 0.4, "closed before http.head_timeout_ms (500)")
        self.assertLess(elapsed, 5, "head timeout far later than http.head_timeout_ms (500)")
        self.wait_error_count(408, before + 1)

    def test_stopped_target_is_502_and_link_stays(self):
        self.assert_page(self.get("dead.orang.com"), self.token_c)
        links = self.relay.metric("rdv_links_active")
        mark = self.agent1.mark()
        before = self.error_count(502)
        self.nginx_c.stop()
        result = self.get("dead.orang.com")
        self.assertEqual(result.status, 502, result)
        self.wait_error_count(502, before + 1)
        self.assertEqual(self.relay.metric("rdv_links_active"), links)
        self.assertTrue(self.agent1.alive())
        self.assertEqual(self.agent1.find(harness.log_message(r"link \d+ down"), mark), [],
                         self.agent1.tail())
        # The link still carries other services.
        self.assert_page(self.get("www.orang.com"), self.token_a)

    def test_registered_name_without_link_is_503(self):
        # A name the relay knows (registered, granted) whose agent went away: 503, not 404.
        agent = self.h.agent(agent_yaml(self.relay, f"""\
              - name: offline.example.org
                kind: http
                target: {self.nginx_a.target()}""", "agent-offline"), name="agent-offline")
        agent.wait_registered("offline.example.org", "http")
        self.assert_page(self.get("offline.example.org"), self.token_a)
        links = self.relay.metric("rdv_links_active")
        before = self.error_count(503)
        agent.stop()
        self.relay.wait_metric("rdv_links_active", lambda v: v <= links - 2)
        result = self.get("offline.example.org")
        self.assertEqual(result.status, 503, result)
        self.wait_error_count(503, before + 1)


if __name__ == "__main__":
    harness.main()
