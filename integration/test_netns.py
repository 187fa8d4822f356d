#!/usr/bin/python3
"""The network-namespace library (netns.py) on its own, without Rendezvous: topology, firewall and
its counter, /etc/hosts per namespace, peers (nginx, sshd, a Python target) inside a namespace,
and teardown that leaves nothing behind (also after SIGTERM, and for a run that was SIGKILLed).

Needs root; exits 77 (CTest: skipped) with the reason otherwise.
"""

import os
import signal
import subprocess
import sys
import textwrap

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import netns  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def leftovers(prefix):
    """Namespaces, /etc/netns dirs and host interfaces whose name starts with `prefix`."""
    found = []
    for d in (netns.NETNS_RUN_DIR, netns.NETNS_ETC_DIR):
        if os.path.isdir(d):
            found += [os.path.join(d, n) for n in os.listdir(d) if n.startswith(prefix)]
    return found


class TopologyTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        cls.topo = netns.Topology("selftest")
        cls.addClassCleanup(cls.topo.close)
        h = cls.h = harness.Harness(cls.__name__, need_binaries=False)
        cls.addClassCleanup(h.close)
        t = cls.topo
        cls.a, cls.r, cls.b = t.namespace("siteA"), t.namespace("relay"), t.namespace("siteB")
        cls.a_addr, cls.ra_addr, cls.a6, cls.ra6 = t.link(cls.a, cls.r, "10.201.1.0/24",
                                                          "fd00:201:1::/64")
        cls.b_addr, cls.rb_addr = t.link(cls.b, cls.r, "10.201.2.0/24")
        cls.a.default_route(cls.ra_addr, cls.ra6)
        cls.b.default_route(cls.rb_addr)
        cls.r.forwarding()
        cls.lan = cls.b.lan(["192.168.51.10/24", "192.168.51.20/24", "fd51::20/64"])
        cls.r.route("192.168.51.0/24", cls.b_addr)
        cls.b.hosts({"www.site-b.test": "192.168.51.20"})
        cls.b.isolate_dns()
        cls.fw_a, cls.fw_b = cls.a.firewall(), cls.b.firewall()

    def test_names_are_unique_and_prefixed(self):
        names = [ns.name for ns in self.topo.namespaces]
        self.assertEqual(len(set(names)), 3)
        for name in names:
            self.assertRegex(name, netns._NAME_RE)
            self.assertTrue(name.startswith(f"rdv{os.getpid()}-"))
        # Nothing was created in the host's own namespace.
        out = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        self.assertNotIn("v1-relay", out)

    def test_outbound_works_inbound_new_is_dropped(self):
        # Site B dials out to a server in the relay namespace: allowed, replies come back.
        target = self.r.data_target(self.h, self.rb_addr)
        with self.b.connect(target.addr) as s:
            harness.exchange_on(s, 65536, 65536, seed=7)
        # A Python server on B's LAN; a SYN from the relay namespace is dropped and counted.
        server = self.b.listen((self.lan[0], 0))
        port = server.getsockname()[1]
        before = self.fw_b.dropped_new()
        probe = self.r.start_connect((self.lan[0], port))
        try:
            self.fw_b.wait_dropped_new(before)
            self.assertFalse(netns.connected(probe), "the SYN was dropped, yet it connected")
        finally:
            probe.close()
            server.close()
        # Through the relay namespace's forwarding, site A to site B is dropped at B too.
        before = self.fw_b.dropped_new()
        probe = self.a.start_connect((self.lan[0], 22))
        try:
            self.fw_b.wait_dropped_new(before)
            self.assertFalse(netns.connected(probe))
        finally:
            probe.close()

    def test_loopback_is_allowed_behind_the_firewall(self):
        server = self.b.listen((self.lan[1], 0))
        try:
            with self.b.connect(server.getsockname()[:2]) as s:
                peer, _ = server.accept()
                s.sendall(b"x")
                self.assertEqual(peer.recv(1), b"x")
                peer.close()
        finally:
            server.close()

    def test_ipv6_between_namespaces(self):
        server = self.r.listen((self.ra6, 0))
        try:
            with self.a.connect(server.getsockname()[:2]):
                peer, _ = server.accept()
                peer.close()
        finally:
            server.close()

    def test_hosts_file_is_per_namespace(self):
        out = self.b.run(["getent", "hosts", "www.site-b.test"]).stdout.decode()
        self.assertIn("192.168.51.20", out)
        self.assertNotEqual(self.a.run(["getent", "hosts", "www.site-b.test"], check=False)
                            .returncode, 0, "site A must not know site B's names")

    def test_nginx_and_sshd_inside_a_namespace(self):
        nginx = self.b.nginx(self.h, "nginx-b", [(self.lan[1], 80), ("fd51::20", 80)],
                             {"/hello.txt": b"hello from site B\n"})
        status, body = self.b.http_get((self.lan[1], 80), "/hello.txt", host="www.site-b.test")
        self.assertEqual((status, body), (200, b"hello from site B\n"))
        status, _ = self.b.http_get(("fd51::20", 80), "/hello.txt")
        self.assertEqual(status, 200)
        self.assertIn("GET /hello.txt", nginx.access_log())
        sshd = self.b.sshd(self.h, "sshd-b", (self.lan[0], 22))
        p = self.b.run(sshd.client_argv(self.lan[0], 22, "echo ok"), check=False, timeout=60)
        self.assertEqual((p.returncode, p.stdout.strip()), (0, b"ok"), p.stderr.decode())


class TeardownTest(harness.IntegrationTest):
    """Teardown in the cases a test cannot clean up for itself."""

    CHILD = textwrap.dedent("""\
        import os, sys, time
        sys.path.insert(0, {here!r})
        import netns
        topo = netns.Topology("child")
        a, b = topo.namespace("a"), topo.namespace("b")
        topo.link(a, b, "10.202.0.0/24")
        a.hosts({{"x.test": "10.202.0.2"}})
        a.firewall()
        print(topo.prefix, flush=True)
        {end}
        """)

    def run_child(self, end):
        code = self.CHILD.format(here=HERE, end=end)
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
        prefix = p.stdout.readline().strip()
        self.assertRegex(prefix, r"^rdv\d+-[0-9a-f]{6}$")
        self.assertEqual(len([n for n in leftovers(prefix) if n.startswith(netns.NETNS_RUN_DIR)]),
                         2)
        return p, prefix

    def test_normal_exit_without_close(self):
        p, prefix = self.run_child("")  # atexit
        self.assertEqual(p.wait(30), 0)
        self.assertEqual(leftovers(prefix), [])

    def test_sigterm(self):
        p, prefix = self.run_child("time.sleep(600)")
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(30), 128 + signal.SIGTERM)
        self.assertEqual(leftovers(prefix), [])

    def test_sigkilled_run_is_swept_by_the_next(self):
        p, prefix = self.run_child("time.sleep(600)")
        p.kill()
        p.wait(30)
        self.assertNotEqual(leftovers(prefix), [])
        with netns.Topology("sweeper"):
            self.assertEqual(leftovers(prefix), [])


if __name__ == "__main__":
    reason = netns.unavailable_reason()
    if reason:
        print(f"SKIPPED: {reason}", flush=True)
        sys.exit(77)
    harness.main()
