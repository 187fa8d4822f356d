#!/usr/bin/python3
"""End-to-end tunnels across firewalled sites (issue 4): three network namespaces, real ssh/curl.

Topology (each box a network namespace created by the test, see netns.py):

    site A (firewall: inbound NEW dropped)      relay (forwards IP)      site B (firewall as A)
    10.200.1.1 ----------------------------- 10.200.1.2 | 10.200.2.2 ------------- 10.200.2.1
    rdv-agent A: connect ends                  rdv-relay relay-mid        rdv-agent B: pairs
      127.0.0.1:2222  plain   -> pair site-b   listens 10.200.{1,2}.2:7000  lan0 192.168.50.0/24
      127.0.0.1:1080  socks5  -> pair site-b   tunnel_tap_file               .10:22   sshd
      127.0.0.1:4000  plain   -> pair site-b-data                            .20:80   nginx
                                                                             (www.site-b.test,
                                                                              also fd50::20)
                                                                             .30:9000 data target

Both sites can only dial out; their default route is the relay namespace, which forwards, so a
direct connection between the sites (or from the relay to a site) reaches the site and is dropped
by its firewall (read from the nft counter). Agent B serves pair `site-b` (target: sshd; SOCKS
allow-list: nginx's addresses, port 80) and pair `site-b-data` (target: the data target). Site A
has no name for www.site-b.test and no DNS: `curl --socks5-hostname` has the name resolved in B.
The relay taps every byte it bridges (`tunnel_tap_file`); a 1 MiB marker each way must not be in
it. (A wrong pairing secret is tested on loopback by test_pair.py.)

Needs root; exits 77 (CTest: skipped) with the reason otherwise.
"""

import json
import os
import socket
import struct
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import netns  # noqa: E402

MIB = 1 << 20
RELAY_ID = "relay-mid"
AGENT_A = "agent-site-a"
AGENT_B = "agent-site-b"
PAIR_SECRET = "site-b pairing secret 6f1c0e2a"
DATA_SECRET = "site-b-data pairing secret 93d4"
LAN = {"sshd": "192.168.50.10", "www": "192.168.50.20", "data": "192.168.50.30"}
WWW6 = "fd50::20"
WWW_NAME = "www.site-b.test"
SSH_NAME = "ssh.site-b.test"
HELLO = b"hello from site B's intranet\n"
PLAIN, SOCKS, DATA = 2222, 1080, 4000


def tunnel_up(kind, name):
    """The contract's log line: `tunnel <kind> <name> up: peer <agent_id> via <hops> (<security>)`."""
    return harness.log_message(
        rf"tunnel {kind} {name} up: peer (\S+) via (\S+) \((\w+)\)")


def socks5_connect(sock, host, port):
    """SOCKS5 without authentication, CONNECT to host (IPv4, IPv6 literal or a name); returns the
    reply code (0 = succeeded) after reading the whole reply."""
    sock.sendall(b"\x05\x01\x00")
    greeting = recv_exact(sock, 2)
    if greeting != b"\x05\x00":
        raise AssertionError(f"SOCKS greeting reply {greeting!r}, expected no-auth (05 00)")
    try:
        addr = b"\x01" + socket.inet_pton(socket.AF_INET, host)
    except OSError:
        try:
            addr = b"\x04" + socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            addr = b"\x03" + bytes([len(host)]) + host.encode()
    sock.sendall(b"\x05\x01\x00" + addr + struct.pack("!H", port))
    head = recv_exact(sock, 4)
    if head[0] != 5:
        raise AssertionError(f"SOCKS reply version {head[0]}, expected 5")
    atyp = head[3]
    rest = {1: 4, 4: 16}.get(atyp)
    if rest is None and atyp == 3:
        rest = recv_exact(sock, 1)[0]
    if rest is None:
        raise AssertionError(f"SOCKS reply with address type {atyp}")
    recv_exact(sock, rest + 2)
    return head[1]


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise AssertionError(f"connection closed after {len(data)} of {n} bytes: {data!r}")
        data += more
    return data


def marker_fragments(marker, size=32, step=4096):
    """Slices of the marker to search for: one every `step` bytes. A relay that saw the stream in
    the clear would show each of them (framing splits the stream only every few KiB)."""
    return [marker[i:i + size] for i in range(0, len(marker) - size, step)]


def found_fragments(haystack, fragments):
    return [i for i, f in enumerate(fragments) if f in haystack]


class NetnsTunnelTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        # The topology is torn down after the harness (cleanups run last-in first-out), so every
        # process gets its SIGTERM (and must exit 0) before its namespace goes.
        cls.topo = netns.Topology("tunnel")
        cls.addClassCleanup(cls.topo.close)
        h = cls.shared_harness()
        t = cls.topo
        a, r, b = cls.a, cls.r, cls.b = (t.namespace("siteA"), t.namespace("relay"),
                                         t.namespace("siteB"))
        cls.a_addr, cls.r_a = t.link(a, r, "10.200.1.0/24")
        cls.b_addr, cls.r_b = t.link(b, r, "10.200.2.0/24")
        a.default_route(cls.r_a)
        b.default_route(cls.r_b)
        r.forwarding()
        r.route("192.168.50.0/24", cls.b_addr)
        b.lan([f"{ip}/24" for ip in LAN.values()] + [f"{WWW6}/64"])
        b.hosts({WWW_NAME: LAN["www"], SSH_NAME: LAN["sshd"]})
        for site in (a, b):
            site.isolate_dns()
        cls.fw_a, cls.fw_b = a.firewall(), b.firewall()

        # Site B's private servers.
        cls.sshd = b.sshd(h, "sshd-b", (LAN["sshd"], 22))
        cls.nginx = b.nginx(h, "nginx-b", [(LAN["www"], 80), (WWW6, 80)], {"/hello.txt": HELLO})
        cls.target = b.data_target(h, LAN["data"], 9000)

        cls.tap = h.path("relay-tap.bin")
        cls.relay = r.relay(h, f"""\
            relay_id: {RELAY_ID}
            state_dir: {h.path('relay-state')}
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["{cls.r_a}:7000", "{cls.r_b}:7000"]
            admin:
              listen: ["127.0.0.1:0"]
            tunnel_tap_file: {cls.tap}
            credentials:
              - name: site-a
                secret: "site-a credential secret"
                grants: ["pair:*"]
              - name: site-b
                secret: "site-b credential secret"
                grants: ["pair:*"]
            """, name="relay")
        pair_file = h.write("pair.secret", PAIR_SECRET + "\n")
        data_file = h.write("data.secret", DATA_SECRET + "\n")
        cls.agent_b = b.agent(h, f"""\
            agent_id: {AGENT_B}
            relays: ["{cls.r_b}:7000"]
            relay_fingerprint: "sha256:{cls.relay.fingerprint}"
            credential:
              name: site-b
              secret: "site-b credential secret"
            links: 2
            log_level: {harness.LOG_LEVEL}
            admin:
              listen: 127.0.0.1:0
            services:
              - kind: pair
                name: site-b
                secret_file: {pair_file}
                target: {LAN['sshd']}:22
                allow:
                  - {{network: {LAN['www']}/32, ports: "80"}}
                  - {{network: "fd50::/64", ports: "80"}}
              - kind: pair
                name: site-b-data
                secret_file: {data_file}
                target: {harness.format_addr(cls.target.addr)}
            """, name="agent-b")
        cls.agent_b.wait_registered("site-b", "pair", timeout=20)
        cls.agent_b.wait_registered("site-b-data", "pair", timeout=20)
        cls.agent_a = a.agent(h, f"""\
            agent_id: {AGENT_A}
            relays: ["{cls.r_a}:7000"]
            relay_fingerprint: "sha256:{cls.relay.fingerprint}"
            credential:
              name: site-a
              secret: "site-a credential secret"
            links: 2
            log_level: {harness.LOG_LEVEL}
            admin:
              listen: 127.0.0.1:0
            connect:
              - listen: 127.0.0.1:{PLAIN}
                pair: site-b
                secret_file: {pair_file}
              - listen: 127.0.0.1:{SOCKS}
                pair: site-b
                secret_file: {pair_file}
                socks5: true
              - listen: 127.0.0.1:{DATA}
                pair: site-b-data
                secret_file: {data_file}
            """, name="agent-a")
        cls.agent_a.wait_links_up(1, timeout=20)
        for port in (PLAIN, SOCKS, DATA):
            a.wait_listening(("127.0.0.1", port), timeout=20, proc=cls.agent_a)

    # -- helpers -----------------------------------------------------------------------------------

    def run_in(self, ns, argv, timeout=60):
        p = ns.run(argv, check=False, timeout=timeout)
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def check_tunnel_up(self, name):
        """Both ends logged the tunnel up, naming each other, the one hop and PSK security."""
        for agent, peer in ((self.agent_a, AGENT_B), (self.agent_b, AGENT_A)):
            m = agent.wait_line(tunnel_up("pair", name), timeout=20)
            self.assertEqual((m.group(1), m.group(2), m.group(3)), (peer, RELAY_ID, "psk"),
                             f"{agent.name}: {m.group(0)}")

    # -- acceptance: ssh and curl --socks5-hostname from site A -------------------------------------

    def test_ssh_from_site_a_through_the_pair(self):
        rc, out, err = self.run_in(
            self.a, self.sshd.client_argv("127.0.0.1", PLAIN, "echo ok; cat /etc/hosts"))
        self.assertEqual(rc, 0, f"ssh failed: {err}")
        first, _, hosts = out.partition("\n")
        self.assertEqual(first, "ok")
        # The shell ran next to site B's sshd: it sees site B's /etc/hosts.
        self.assertIn(WWW_NAME, hosts)
        self.sshd.proc.wait_line(r"Accepted publickey for root from", timeout=10)
        self.check_tunnel_up("site-b")

    def test_curl_socks5_hostname_to_nginx_in_site_b(self):
        # Site A cannot resolve the name itself: the name travels through the tunnel.
        rc, _, _ = self.run_in(self.a, ["getent", "hosts", WWW_NAME])
        self.assertNotEqual(rc, 0, f"site A resolves {WWW_NAME}; the test would prove nothing")
        rc, out, err = self.run_in(self.a, [
            "curl", "-sS", "--noproxy", "", "--max-time", "30",
            "--socks5-hostname", f"127.0.0.1:{SOCKS}", f"http://{WWW_NAME}/hello.txt"])
        self.assertEqual((rc, out), (0, HELLO.decode()), f"curl: {err}")
        self.assertIn("GET /hello.txt", self.nginx.access_log())
        self.check_tunnel_up("site-b")

    def test_socks5_ipv6_literal(self):
        with self.a.connect(("127.0.0.1", SOCKS), timeout=30) as s:
            s.settimeout(30)
            self.assertEqual(socks5_connect(s, WWW6, 80), 0)
            s.sendall(f"GET /hello.txt HTTP/1.0\r\nHost: {WWW_NAME}\r\n\r\n".encode())
            data, _ = harness.read_until_closed(s, 30)
        self.assertEqual(harness.http_status(data), 200, data[:200])
        self.assertTrue(data.endswith(HELLO))

    # -- acceptance: the sites are really firewalled -----------------------------------------------

    def probe_dropped(self, source, firewall, addr):
        """A connection attempt from `source` to `addr` is dropped by `firewall` (its counter of
        dropped NEW packets moves) and never connects."""
        before = firewall.dropped_new()
        sock = source.start_connect(addr)
        try:
            firewall.wait_dropped_new(before)
            self.assertFalse(netns.connected(sock),
                             f"{source.name} -> {addr} connected through the firewall")
        finally:
            sock.close()

    def test_sites_drop_inbound_connections(self):
        # The relay namespace cannot reach site B's sshd (nor anything in site A) directly...
        self.probe_dropped(self.r, self.fw_b, (LAN["sshd"], 22))
        self.probe_dropped(self.r, self.fw_a, (self.a_addr, PLAIN))
        # ...and neither can site A, although the relay namespace routes between the sites.
        self.probe_dropped(self.a, self.fw_b, (LAN["www"], 80))
        # The servers are there: from inside site B, sshd answers.
        with self.b.connect((LAN["sshd"], 22)) as s:
            s.settimeout(10)
            self.assertTrue(s.recv(64).startswith(b"SSH-2.0-"))

    # -- acceptance: the relay never sees the bytes ------------------------------------------------

    def test_marker_is_not_visible_to_the_relay(self):
        seed = 0x4D41524B  # "MARK"
        up = harness.Pattern(harness.client_seed(seed)).read(MIB)   # site A -> site B
        down = harness.Pattern(seed).read(MIB)                        # site B -> site A
        fragments = marker_fragments(up) + marker_fragments(down)
        # The search itself finds a marker that is there.
        self.assertEqual(len(found_fragments(b"x" + up + down, fragments)), len(fragments))
        before = os.path.getsize(self.tap) if os.path.exists(self.tap) else 0

        with self.a.connect(("127.0.0.1", DATA), timeout=30) as s:
            harness.exchange_on(s, MIB, MIB, seed)   # both directions arrive intact (sha256)
        self.check_tunnel_up("site-b-data")

        # The tap must have recorded the exchange (both directions: at least 2 MiB of ciphertext),
        # or a relay that bridged nothing would pass.
        harness.wait_until(lambda: os.path.exists(self.tap)
                           and os.path.getsize(self.tap) >= before + 2 * MIB,
                           20, f"relay tap {self.tap} to grow by 2 MiB from {before} bytes")
        with open(self.tap, "rb") as f:
            tapped = f.read()
        hits = found_fragments(tapped, fragments)
        self.assertEqual(hits, [], f"{len(hits)} of {len(fragments)} marker fragments are in the "
                                   f"relay's tap in plaintext")

    # -- acceptance: SOCKS5 allow-list -------------------------------------------------------------

    def test_socks5_destination_outside_the_allow_list_is_refused(self):
        refused_b = self.agent_b.metric("rdv_agent_tunnel_streams_refused_total",
                                        reason="not_allowed")
        socks_a = self.agent_a.metric("rdv_agent_socks_refused_total")
        cases = [(LAN["sshd"], 22), (SSH_NAME, 22), (LAN["www"], 81)]
        for host, port in cases:
            with self.subTest(destination=f"{host}:{port}"):
                with self.a.connect(("127.0.0.1", SOCKS), timeout=30) as s:
                    s.settimeout(30)
                    self.assertEqual(socks5_connect(s, host, port), 0x02,
                                     "expected SOCKS reply 0x02 (connection not allowed by ruleset)")
        n = len(cases)
        self.agent_b.wait_metric("rdv_agent_tunnel_streams_refused_total",
                                 lambda v: v >= refused_b + n, reason="not_allowed")
        self.agent_a.wait_metric("rdv_agent_socks_refused_total", lambda v: v >= socks_a + n)
        # Every refusal carries the reason on the SOCKS end as well.
        self.assertGreaterEqual(
            self.agent_a.metric("rdv_agent_socks_refused_total", reason="not_allowed"), n)
        # The allowed destination still works on the same tunnel afterwards.
        with self.a.connect(("127.0.0.1", SOCKS), timeout=30) as s:
            s.settimeout(30)
            self.assertEqual(socks5_connect(s, WWW_NAME, 80), 0)

    # -- topology exchange: both ends report the one hop -------------------------------------------

    def test_status_reports_the_hop_list(self):
        self.check_tunnel_up("site-b")
        for agent, role, peer in ((self.agent_a, "connect", AGENT_B),
                                  (self.agent_b, "serve", AGENT_A)):
            def tunnel():
                for t in agent.status().get("tunnels", []):
                    if (t.get("kind"), t.get("name"), t.get("role")) == ("pair", "site-b", role) \
                            and t.get("state") == "up":
                        return t
                return None
            t = harness.wait_until(tunnel, 20, f"{agent.name} /status: pair site-b {role} up")
            self.assertEqual((t["hops"], t["peer_agent"], t["security"]),
                             ([RELAY_ID], peer, "psk"), json.dumps(t))
        # The same through the command line, inside site A.
        rc, out, err = self.run_in(self.a, [harness.agent_binary(), "status", "--admin",
                                            harness.format_addr(self.agent_a.admin_address()),
                                            "--json"])
        self.assertEqual(rc, 0, err)
        tunnels = [t for t in json.loads(out)["tunnels"] if t["name"] == "site-b"]
        self.assertTrue(tunnels and all(t["hops"] == [RELAY_ID] for t in tunnels), out)


if __name__ == "__main__":
    reason = netns.unavailable_reason()
    if reason:
        print(f"SKIPPED: {reason}", flush=True)
        sys.exit(77)
    harness.main()
