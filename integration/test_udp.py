#!/usr/bin/python3
"""UDP services end to end: dig / raw UDP sockets -> rdv-relay udp port -> rdv-agent -> target.

The agent publishes two udp services:
  dns    fixed relay port (udp.ports: dns -> FIXED)  -> dnsmasq on a free loopback port, answering
                                                        www.orang.test with 192.0.2.55
  echo   port 0 (allocated inside the grant range)   -> a Python UDP echo server
A third fixed mapping, `ghost`, has no agent: its datagrams are dropped and counted.
The relay runs two workers and the agent two links, so sessions land on links of either worker.
"""

import concurrent.futures
import os
import random
import shutil
import socket
import subprocess
import sys
import textwrap
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SECRET = "orang-udp-secret"
RECORD = "www.orang.test"
ADDRESS = "192.0.2.55"
IDLE_MS = 1500  # relay udp.session_idle_timeout_ms


def udp_port_free(port, hosts=("127.0.0.1", "::1")):
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_udp_ports(count):
    """`count` consecutive free UDP ports (IPv4 and IPv6 loopback) below the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - count)
        if all(udp_port_free(p) for p in range(base, base + count)):
            return base, base + count - 1
    raise AssertionError(f"no {count} consecutive free udp ports found")


class Dnsmasq(harness.Process):
    def __init__(self, h, port):
        self.port = port
        super().__init__("dnsmasq", [
            shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "--no-daemon", "--log-facility=-",
            f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
            "--no-hosts", f"--address=/{RECORD}/{ADDRESS}", f"--pid-file={h.path('dnsmasq.pid')}",
        ], h.path("dnsmasq.log"), cwd=h.dir)
        self.wait_line(r"started, version", timeout=10)

    def expected_stop_status(self):
        return None


class EchoServer:
    """Answers every datagram with itself, from a thread."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers = set()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(65536)
            except OSError:
                return
            self.peers.add(peer)
            self.sock.sendto(data, peer)

    def close(self):
        self.sock.close()


def dig(server, port, name=RECORD, timeout=3, tries=3):
    out = subprocess.run(["dig", f"@{server}", "-p", str(port), name, "+short",
                          f"+time={timeout}", f"+tries={tries}"],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def echo_roundtrip(addr, payload, family=socket.AF_INET, sock=None, tries=3):
    """Sends `payload` and returns the reply (retrying a lost datagram, as UDP clients do)."""
    own = sock is None
    s = sock or socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.settimeout(2)
        for _ in range(tries):
            s.sendto(payload, addr)
            try:
                data, _ = s.recvfrom(65536)
                return data
            except socket.timeout:
                continue
        raise AssertionError(f"no echo of {len(payload)} bytes from {addr} after {tries} tries")
    finally:
        if own:
            s.close()


class UdpServiceTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.lo, cls.hi = free_udp_ports(5)
        fixed, _ = free_udp_ports(2)
        while cls.lo <= fixed + 1 and fixed <= cls.hi:
            fixed, _ = free_udp_ports(2)
        cls.fixed, cls.ghost = fixed, fixed + 1
        dns_port, _ = free_udp_ports(1)
        cls.dnsmasq = Dnsmasq(h, dns_port)
        h.processes.append(cls.dnsmasq)
        cls.echo = EchoServer()
        cls.addClassCleanup(cls.echo.close)
        cls.relay = h.relay(f"""\
            relay_id: relay-udp
            state_dir: {h.path('relay-state')}
            workers: 2
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]
            udp:
              bind: ["127.0.0.1", "::1"]
              session_idle_timeout_ms: {IDLE_MS}
              ports:
                - service: dns
                  port: {cls.fixed}
                - service: ghost
                  port: {cls.ghost}
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "{SECRET}"
                grants: ["udp:{cls.lo}-{cls.hi}", "udp:dns"]
            """, name="relay")
        cls.agent = h.agent(textwrap.dedent(f"""\
            agent_id: agent-udp
            relays: ["{harness.format_addr(cls.relay.address('agent'))}"]
            relay_fingerprint: "sha256:{cls.relay.fingerprint}"
            credential:
              name: orang
              secret: "{SECRET}"
            links: 2
            log_level: {harness.LOG_LEVEL}
            services:
              - name: dns
                kind: udp
                target: 127.0.0.1:{dns_port}
              - name: echo
                kind: udp
                target: 127.0.0.1:{cls.echo.port}
                port: 0
            """), name="agent")
        cls.dns_route = cls.agent.wait_registered("dns", "udp")
        cls.echo_route = cls.agent.wait_registered("echo", "udp")
        cls.agent.wait_links_up(2)

    def test_route_names_the_udp_port(self):
        self.assertEqual(self.dns_route, f"udp://127.0.0.1:{self.fixed}")
        self.assertEqual(self.relay.port("udp:dns"), self.fixed)
        port = self.relay.port("udp:echo")
        self.assertTrue(self.lo <= port <= self.hi, f"echo got {port}, grant {self.lo}-{self.hi}")
        self.assertEqual(self.echo_route, f"udp://127.0.0.1:{port}")

    def test_dig_through_the_relay(self):
        before = self.relay.metric("rdv_udp_sessions_opened_total")
        self.assertEqual(dig("127.0.0.1", self.fixed), ADDRESS)
        self.assertGreaterEqual(self.relay.metric("rdv_udp_sessions_opened_total"), before + 1)

    def test_dig_over_ipv6(self):
        self.assertEqual(self.relay.port("udp:dns", v6=True), self.fixed)
        self.assertEqual(dig("::1", self.fixed), ADDRESS)

    def test_concurrent_clients_each_get_their_answer(self):
        before = self.relay.metric("rdv_udp_sessions_opened_total")
        clients = 12
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(lambda _: dig("127.0.0.1", self.fixed), range(clients)))
        self.assertEqual(answers, [ADDRESS] * clients)
        # Each dig uses its own source port: one session per client address.
        self.assertGreaterEqual(self.relay.metric("rdv_udp_sessions_opened_total"),
                                before + clients)
        # Distinct clients keep their replies apart on the echo service too.
        addr = self.relay.address("udp:echo")

        def tagged(i):
            payload = f"client-{i}-".encode() * (i + 1)
            return echo_roundtrip(addr, payload) == payload
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            self.assertTrue(all(pool.map(tagged, range(clients))))

    def test_large_datagrams_are_byte_exact(self):
        addr = self.relay.address("udp:echo")
        rng = random.Random(7)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for size in (1, 1400, 9000, 60000, 65507):
                payload = rng.randbytes(size)
                self.assertEqual(echo_roundtrip(addr, payload, sock=s), payload, size)

    def test_session_expires_after_idle_timeout(self):
        addr = self.relay.address("udp:echo")
        expired = self.relay.metric("rdv_udp_sessions_expired_total")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            self.assertEqual(echo_roundtrip(addr, b"hello", sock=s), b"hello")
            self.relay.wait_metric("rdv_udp_sessions_active", lambda v: v >= 1)
            self.relay.wait_metric("rdv_udp_sessions_expired_total", lambda v: v >= expired + 1,
                                   timeout=IDLE_MS / 1000 + 10)
            self.relay.wait_metric("rdv_udp_sessions_active", lambda v: v == 0,
                                   timeout=IDLE_MS / 1000 + 10)
            # The agent freed its side (the relay's reset): no flow streams remain.
            self.relay.wait_metric("rdv_streams_active", lambda v: v == 0)
            # The same client address opens a fresh session.
            opened = self.relay.metric("rdv_udp_sessions_opened_total")
            self.assertEqual(echo_roundtrip(addr, b"again", sock=s), b"again")
            self.assertGreaterEqual(self.relay.metric("rdv_udp_sessions_opened_total"), opened + 1)

    def test_requested_port_and_refusals(self):
        refused = self.relay.metric("rdv_register_refused_total", reason="not_granted")
        agent = self.h.agent(textwrap.dedent(f"""\
            agent_id: agent-udp-2
            relays: ["{harness.format_addr(self.relay.address('agent'))}"]
            relay_fingerprint: "sha256:{self.relay.fingerprint}"
            credential:
              name: orang
              secret: "{SECRET}"
            links: 1
            log_level: {harness.LOG_LEVEL}
            services:
              - name: pinned
                kind: udp
                target: 127.0.0.1:{self.echo.port}
                port: {self.hi}
              - name: outside
                kind: udp
                target: 127.0.0.1:{self.echo.port}
                port: {self.hi + 1}
            """))
        self.assertEqual(agent.wait_registered("pinned", "udp"), f"udp://127.0.0.1:{self.hi}")
        self.assertIn("not granted", agent.wait_refused("outside", "udp"))
        self.relay.wait_metric("rdv_register_refused_total", lambda v: v >= refused + 1,
                               reason="not_granted")
        self.assertEqual(echo_roundtrip(("127.0.0.1", self.hi), b"pinned"), b"pinned")
        agent.stop()

    def test_oversize_and_garbage_do_not_hurt(self):
        # Garbage to the DNS server: dnsmasq ignores it, nothing crashes.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for size in (0, 1, 3, 512, 4096):
                s.sendto(os.urandom(size), ("127.0.0.1", self.fixed))
        # Over IPv6 a datagram may exceed the link's 65,507-byte limit: dropped and counted.
        oversize = self.relay.metric("rdv_udp_datagrams_dropped_total", reason="oversize")
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.sendto(b"x" * 65527, ("::1", self.relay.port("udp:echo", v6=True)))
        self.relay.wait_metric("rdv_udp_datagrams_dropped_total", lambda v: v >= oversize + 1,
                               reason="oversize")
        # A port whose service has no agent drops, counted.
        no_agent = self.relay.metric("rdv_udp_datagrams_dropped_total", reason="no_agent")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"anyone?", ("127.0.0.1", self.ghost))
        self.relay.wait_metric("rdv_udp_datagrams_dropped_total", lambda v: v >= no_agent + 1,
                               reason="no_agent")
        # Still serving.
        self.assertEqual(dig("127.0.0.1", self.fixed), ADDRESS)
        self.assertTrue(self.relay.alive() and self.agent.alive())


if __name__ == "__main__":
    harness.main()
