#!/usr/bin/python3
"""Agent shutdown drains: the first SIGTERM lets open streams finish, a second stops at once.

One relay with a tcp service `svc` on a fixed port; each test starts its own agents publishing
`svc` in front of one data target (echo streams, checked byte-exact):
  drain    agent a holds a live echo stream, agent b joins the group; SIGTERM to a: the stream
           goes on, new connections reach b, and a exits 0 by itself once the stream closes
  grace    shutdown_grace_ms 300: the stream still open when the grace is over is closed
  twice    a grace of an hour: the second SIGTERM stops the agent now

RelayDrainTest, a relay (two workers) and an agent per test: SIGTERM to the relay closes its
listeners (admin excepted) and sends GoAway to the agent, an open stream finishes, an idle HTTP
keep-alive connection is closed at once, and the relay exits 0 when the stream closes; a grace
that runs out, and a second signal, close what is open.

RelayReplicaTest: two relay replicas (b serves a's certificate) behind one address (a TCP balancer
that sends each connection to the first replica that accepts it, as a Kubernetes Service does);
SIGTERM to replica a: the agent dials new links at once, which reach b and register there (curl
through b), while the stream open on a finishes on its retired link; a exits 0 once it closes, the
agent closes the retired link and keeps two links to b. With a tunnel between two agents
through replica a (on the relay's data path): SIGTERM to a: the connecting end opens a new tunnel
through b for new connections while a connection open in the old tunnel goes on; once it closes the
old tunnel is closed and a exits 0.
"""

import os
import signal
import sys
import textwrap

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SECRET = "orang-drain-secret"
MIB = 1 << 20


class AgentDrainTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.port, _ = harness.free_port_range(1)
        cls.target = h.data_target()
        cls.relay = h.relay(f"""\
            relay_id: relay-drain
            state_dir: {h.path('relay-state')}
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]
            tcp:
              bind: ["127.0.0.1"]
              ports:
                - service: svc
                  port: {cls.port}
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "{SECRET}"
                grants: ["tcp:svc"]
            """, name="relay")

    def start_agent(self, name, extra=""):
        agent = self.h.agent(textwrap.dedent(f"""\
            agent_id: {name}
            relays: ["{harness.format_addr(self.relay.address('agent'))}"]
            relay_fingerprint: "sha256:{self.relay.fingerprint}"
            credential:
              name: orang
              secret: "{SECRET}"
            links: 1
            log_level: {harness.LOG_LEVEL}
            services:
              - name: svc
                kind: tcp
                target: {self.target.target()}
            """) + extra, name=name)
        agent.wait_registered("svc", "tcp")
        return agent

    def service(self):
        return ("127.0.0.1", self.port)

    def test_open_stream_finishes_new_ones_go_to_the_other_agent(self):
        a = self.start_agent("drain-a")
        echo = harness.EchoStream(self.service(), seed=11)
        echo.wait_progress(MIB)
        b = self.start_agent("drain-b")
        a.send_signal(signal.SIGTERM)
        a.wait_line(harness.log_message(r"draining: 1 open streams"))
        self.relay.wait_line(harness.log_message(r"agent link \S+ \(drain-a\): agent is going away"))
        # The open stream keeps moving through the draining agent ...
        echo.wait_progress(echo.bytes_ok + MIB)
        # ... while new connections go to the other member of the group.
        for seed in (12, 13, 14):
            harness.exchange(self.service(), MIB, MIB, seed)
        self.assertTrue(a.alive(), "the draining agent stopped while its stream was open")
        echo.stop()
        self.assertEqual(a.wait(20), 0)
        self.assertTrue(a.find(harness.log_message(r"drained: no stream open")))
        harness.exchange(self.service(), MIB, MIB, 15)
        b.stop()

    def test_grace_over_closes_open_streams(self):
        agent = self.start_agent("drain-grace", "shutdown_grace_ms: 300\n")
        echo = harness.EchoStream(self.service(), seed=21)
        echo.wait_progress(MIB)
        agent.send_signal(signal.SIGTERM)
        self.assertEqual(agent.wait(20), 0)
        self.assertTrue(agent.find(harness.log_message(
            r"drain: 1 streams still open after 300 ms; closing them")))
        harness.wait_until(lambda: echo.error, 10, "the echo stream to be closed")
        with self.assertRaises(AssertionError):
            echo.stop()

    def test_second_signal_stops_at_once(self):
        agent = self.start_agent("drain-twice", "shutdown_grace_ms: 3600000\n")
        echo = harness.EchoStream(self.service(), seed=31)
        echo.wait_progress(MIB)
        agent.send_signal(signal.SIGTERM)
        agent.wait_line(harness.log_message(r"draining: 1 open streams"))
        agent.send_signal(signal.SIGTERM)
        self.assertEqual(agent.wait(20), 0)
        self.assertTrue(agent.find(harness.log_message(r"received SIGTERM, stopping now")))
        harness.wait_until(lambda: echo.error, 10, "the echo stream to be closed")
        with self.assertRaises(AssertionError):
            echo.stop()

    def test_idle_agent_stops_without_draining(self):
        agent = self.start_agent("drain-idle")
        agent.send_signal(signal.SIGTERM)
        self.assertEqual(agent.wait(20), 0)
        self.assertFalse(agent.find(harness.log_message(r"draining")))


class RelayTestBase(harness.IntegrationTest):
    """Configs shared by the relay tests: a relay with a tcp service `svc` on a fixed port and an
    http service, and the agent publishing both in front of self.target and self.nginx."""

    def relay_config(self, h, relay_id, port, listener_lines=(), extra=""):
        listener_extra = "".join(f"\n              {line}" for line in listener_lines)
        return f"""\
            relay_id: {relay_id}
            state_dir: {h.path(f'{relay_id}-state')}
            workers: 2
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]{listener_extra}
            http:
              listen: ["127.0.0.1:0"]
            tcp:
              bind: ["127.0.0.1"]
              ports:
                - service: svc
                  port: {port}
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "{SECRET}"
                grants: ["tcp:svc", "http:www.orang.test", "pair:site"]
            """ + extra

    def agent_yaml(self, relay_address, fingerprint, agent_id, body):
        return textwrap.dedent(f"""\
            agent_id: {agent_id}
            relays: ["{harness.format_addr(relay_address)}"]
            relay_fingerprint: "sha256:{fingerprint}"
            credential:
              name: orang
              secret: "{SECRET}"
            links: 2
            log_level: {harness.LOG_LEVEL}
            admin:
              listen: "127.0.0.1:0"
            """) + textwrap.dedent(body)

    def agent_config(self, relay_address, fingerprint):
        return self.agent_yaml(relay_address, fingerprint, "relay-drain-agent", f"""\
            services:
              - name: svc
                kind: tcp
                target: {self.target.target()}
              - name: www.orang.test
                kind: http
                target: {self.nginx.target()}
            """)


class RelayDrainTest(RelayTestBase):

    def start(self, extra=""):
        h = self.fresh_harness()
        port, _ = harness.free_port_range(1)
        self.target = h.data_target()
        self.nginx = h.nginx('location / { return 200 "drain\\n"; }')
        relay = h.relay(self.relay_config(h, "relay-drain", port, extra=extra), name="relay")
        agent = h.agent(self.agent_config(relay.address("agent"), relay.fingerprint), name="agent")
        agent.wait_registered("svc", "tcp")
        agent.wait_registered("www.orang.test", "http")
        return relay, agent, ("127.0.0.1", port)

    def test_open_stream_finishes_listeners_close(self):
        relay, agent, service = self.start()
        # An HTTP keep-alive connection that answered once and is idle now.
        idle = harness.connect(relay.address("http"))
        idle.sendall(b"GET / HTTP/1.1\r\nHost: www.orang.test\r\n\r\n")
        self.assertIn(b"drain", idle.recv(4096))
        echo = harness.EchoStream(service, seed=61)
        echo.wait_progress(MIB)
        relay.send_signal(signal.SIGTERM)
        relay.wait_line(harness.log_message(r"draining: listeners closed"))
        agent.wait_line(harness.log_message(r"link \d+: relay is going away: relay shutting down"))
        echo.wait_progress(echo.bytes_ok + MIB)
        with self.assertRaises(ConnectionRefusedError):
            harness.connect(service, 5).close()
        with self.assertRaises(ConnectionRefusedError):
            harness.connect(relay.address("http"), 5).close()
        # The admin listener stays up while draining.
        self.assertIsNotNone(relay.metric("rdv_links_active"))
        # The idle keep-alive connection does not hold the drain: it is closed.
        idle.settimeout(10)
        self.assertEqual(idle.recv(4096), b"")
        idle.close()
        self.assertTrue(relay.alive(), "the relay stopped while a stream was open")
        echo.stop()
        self.assertEqual(relay.wait(20), 0)
        self.assertTrue(relay.find(harness.log_message(r"drained: every worker stopped")))

    def test_grace_over_closes_open_sessions(self):
        relay, agent, service = self.start("shutdown_grace_ms: 300\n")
        echo = harness.EchoStream(service, seed=71)
        echo.wait_progress(MIB)
        relay.send_signal(signal.SIGTERM)
        self.assertEqual(relay.wait(20), 0)
        self.assertTrue(relay.find(harness.log_message(
            r"worker \d: drain: 1 client sessions and tunnel streams still open at the end of "
            r"the grace")))
        harness.wait_until(lambda: echo.error, 10, "the echo stream to be closed")
        with self.assertRaises(AssertionError):
            echo.stop()

    def test_second_signal_stops_at_once(self):
        relay, agent, service = self.start("shutdown_grace_ms: 3600000\n")
        echo = harness.EchoStream(service, seed=81)
        echo.wait_progress(MIB)
        relay.send_signal(signal.SIGTERM)
        relay.wait_line(harness.log_message(r"draining: listeners closed"))
        relay.send_signal(signal.SIGTERM)
        self.assertEqual(relay.wait(20), 0)
        self.assertTrue(relay.find(harness.log_message(r"received SIGTERM, stopping now")))
        harness.wait_until(lambda: echo.error, 10, "the echo stream to be closed")
        with self.assertRaises(AssertionError):
            echo.stop()


class RelayReplicaTest(RelayTestBase):
    """Two relay replicas behind one address: the agent dials again when its relay drains."""

    def test_agent_reconnects_to_the_other_replica(self):
        h = self.fresh_harness()
        port_a, _ = harness.free_port_range(1)
        port_b, _ = harness.free_port_range(1)
        self.target = h.data_target()
        self.nginx = h.nginx('location / { return 200 "drain\\n"; }')
        relay_a = h.relay(self.relay_config(h, "relay-a", port_a), name="relay-a")
        # Replica b serves a's certificate, as replicas behind one name do.
        state = h.path("relay-a-state")
        relay_b = h.relay(self.relay_config(h, "relay-b", port_b, listener_lines=(
            f"cert_file: {state}/relay-cert.pem", f"key_file: {state}/relay-key.pem")),
            name="relay-b")
        self.assertEqual(relay_b.fingerprint, relay_a.fingerprint)
        balancer = harness.FailoverBalancer(h.bg, [relay_a.address("agent"), relay_b.address("agent")])
        self.addCleanup(balancer.close)
        agent = h.agent(self.agent_config(balancer.address, relay_a.fingerprint), name="agent")
        agent.wait_links_up(2)
        relay_a.wait_metric("rdv_links_active", lambda v: v == 2)
        self.assertEqual(relay_b.metric("rdv_links_active"), 0)
        echo = harness.EchoStream(("127.0.0.1", port_a), seed=91)
        echo.wait_progress(MIB)

        mark = agent.mark()
        relay_a.send_signal(signal.SIGTERM)
        # The agent dials again at once, through the balancer to replica b, and registers there.
        agent.wait_line(harness.log_message(r"link \d+: the relay is going away; dialing a new link"))
        relay_b.wait_metric("rdv_links_active", lambda v: v == 2)
        agent.wait_registered("www.orang.test", "http", start=mark)
        res = harness.curl(harness.http_url(relay_b.address("http")), host="www.orang.test")
        self.assertEqual((res.status, res.body), (200, "drain\n"), res.stderr)
        with self.assertRaises(ConnectionRefusedError):
            harness.connect(("127.0.0.1", port_a), 5).close()
        # The stream open on replica a finishes on its old link; a waits for it.
        echo.wait_progress(echo.bytes_ok + MIB)
        self.assertTrue(relay_a.alive(), "relay a stopped while a stream was open")
        status = agent.status()
        self.assertEqual(sorted(link["state"] for link in status["links"]),
                         ["retiring", "up", "up"], status)
        echo.stop()
        self.assertEqual(relay_a.wait(20), 0)
        agent.wait_line(harness.log_message(r"link \d+: retired link has no stream left"))
        # Replica b serves everything now; the agent kept its two links.
        harness.wait_until(lambda: [l["state"] for l in agent.status()["links"]] == ["up", "up"],
                           10, "the agent's links to be the two new ones")
        exchange = harness.EchoStream(("127.0.0.1", port_b), seed=92)
        exchange.wait_progress(MIB)
        exchange.stop()
        self.assertTrue(all(b == relay_a.address("agent") for b in balancer.routed[:2]),
                        balancer.routed)
        self.assertTrue(all(b == relay_b.address("agent") for b in balancer.routed[2:]),
                        balancer.routed)

    def pair_agent(self, h, name, address, fingerprint, body):
        return h.agent(self.agent_yaml(address, fingerprint, name, body), name=name)

    def test_tunnel_moves_to_the_other_replica(self):
        h = self.fresh_harness()
        self.target = h.data_target()
        relay_a = h.relay(self.relay_config(h, "relay-a", harness.free_port()), name="relay-a")
        state = h.path("relay-a-state")
        relay_b = h.relay(self.relay_config(h, "relay-b", harness.free_port(), listener_lines=(
            f"cert_file: {state}/relay-cert.pem", f"key_file: {state}/relay-key.pem")),
            name="relay-b")
        balancer = harness.FailoverBalancer(h.bg, [relay_a.address("agent"), relay_b.address("agent")])
        self.addCleanup(balancer.close)
        serving = self.pair_agent(h, "agent-site", balancer.address, relay_a.fingerprint, f"""\
            services:
              - kind: pair
                name: site
                secret: "{SECRET}-pair"
                target: {self.target.target()}
            """)
        serving.wait_registered("site", "pair")
        port = harness.free_port()
        connecting = self.pair_agent(h, "agent-client", balancer.address, relay_a.fingerprint, f"""\
            connect:
              - listen: 127.0.0.1:{port}
                pair: site
                secret: "{SECRET}-pair"
            """)
        connecting.wait_line(r"tunnel pair site up: peer agent-site via relay-a \(psk\)")
        old = harness.EchoStream(("127.0.0.1", port), seed=93)
        old.wait_progress(MIB)
        connecting.wait_line(r"tunnel pair site: data path up via")

        mark = connecting.mark()
        relay_a.send_signal(signal.SIGTERM)
        # The connecting end retires the tunnel on its link's GoAway, or on the GoAway the
        # serving end sends inside the tunnel when its own link hears it first.
        connecting.wait_line(harness.log_message(
            r"tunnel pair site: (its relay is going away; new connections wait for a new "
            r"tunnel, 1 open streams finish on this one|the other end is going away)"),
            start=mark)
        connecting.wait_line(r"tunnel pair site up: peer agent-site via relay-b \(psk\)",
                             start=mark)
        new = harness.EchoStream(("127.0.0.1", port), seed=94)
        new.wait_progress(MIB)
        # The old tunnel still carries its connection; relay a waits for it.
        old.wait_progress(old.bytes_ok + MIB)
        self.assertTrue(relay_a.alive(), "relay a stopped while a tunnel stream was open")
        states = sorted(t["state"] for t in connecting.status()["tunnels"])
        self.assertEqual(states, ["retiring", "up"], connecting.status())
        old.stop()
        connecting.wait_line(harness.log_message(
            r"tunnel pair site: retired tunnel has no stream left; closing it"), start=mark)
        self.assertEqual(relay_a.wait(20), 0)
        new.wait_progress(new.bytes_ok + MIB)
        new.stop()
        self.assertEqual([t["state"] for t in connecting.status()["tunnels"]], ["up"])
        self.assertEqual(relay_b.metric("rdv_links_active"), 4)


if __name__ == "__main__":
    harness.main()
