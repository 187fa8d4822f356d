#!/usr/bin/python3
"""Cascaded relays (docs/protocol.md "Cascaded relays"): relay A dials relay B as if it were an agent.

  relay B (upstream)   credentials relay-a and site-b: pair:*, private:*, connect:*
  relay A              upstream: relay B, credential relay-a, B pinned by fingerprint;
                       credential site-a: pair:*

UpstreamReplicaTest: two replicas of B behind a failover balancer; SIGTERM to one and A's upstream
link, the agents and a tunnel move to the other while a connection open in the old tunnel finishes.

UpstreamLinkTest: A's link authenticates at B (B's log and metrics, A's gauge), a wrong secret is
refused at B and retried by A with backoff, a wrong pin never authenticates, A redials when B
is killed and restarts and registers its agents' pairs there again.

CascadeTunnelTest (agent -> relay A -> relay B <- agent, both ways): a pair served at B and
connected from A, and a pair served at A (registered at B by A, withdrawn when its agent leaves)
and connected from B. A plain connect port carries curl to nginx behind the serving agent; both
ends' `rdv-agent status --json` show the same two hops, in order from the connecting end. Also a
private service (PSK) served at A and connected from B, and a wrong pairing secret at B for a pair
held at A: refused at B, and B's TunnelNotice reaches the holder at A through A's upstream link.
"""

import os
import signal
import sys
import textwrap
import types

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

UPSTREAM_SECRET = "relay-a-upstream-secret"


def relay_b_yaml(h, name="relay-b", agent_listen="127.0.0.1:0", relay_id="relay-b",
                 listener_extra=""):
    return f"""\
        relay_id: {relay_id}
        state_dir: {h.path(name + '-state')}
        workers: 2
        log_level: {harness.LOG_LEVEL}
        agent_listener:
          listen: ["{agent_listen}"]{listener_extra}
        admin:
          listen: ["127.0.0.1:0"]
        credentials:
          - name: relay-a
            secret: "{UPSTREAM_SECRET}"
            grants: ["pair:*", "private:*", "connect:*"]
          - name: site-b
            secret: "site-b-agent-secret"
            grants: ["pair:*", "private:*", "connect:*"]
        """


def relay_a_yaml(h, relay_b, secret=UPSTREAM_SECRET, fingerprint=None, name="relay-a"):
    """`relay_b`: the upstream, or anything with its address("agent") and fingerprint."""
    return f"""\
        relay_id: relay-a
        state_dir: {h.path(name + '-state')}
        workers: 2
        log_level: {harness.LOG_LEVEL}
        agent_listener:
          listen: ["127.0.0.1:0"]
        admin:
          listen: ["127.0.0.1:0"]
        link:
          ping_interval_ms: 500
          idle_timeout_ms: 2000
        upstream:
          relay: "{harness.format_addr(relay_b.address('agent'))}"
          credential: {{name: relay-a, secret: "{secret}"}}
          relay_fingerprint: "sha256:{fingerprint or relay_b.fingerprint}"
        credentials:
          - name: site-a
            secret: "site-a-agent-secret"
            grants: ["pair:*", "private:*", "connect:*"]
        """


def agent_yaml(relay, agent_id, credential, body):
    return textwrap.dedent(f"""\
        agent_id: {agent_id}
        relays: ["{harness.format_addr(relay.address('agent'))}"]
        relay_fingerprint: "sha256:{relay.fingerprint}"
        credential:
          name: {credential}
          secret: "{credential}-agent-secret"
        links: 1
        reconnect:
          initial_ms: 100
          max_ms: 400
        log_level: {harness.LOG_LEVEL}
        admin:
          listen: "127.0.0.1:0"
        """) + textwrap.dedent(body)


def serving(kind, name, target):
    """A `services:` block with one pair or private service secured by a secret."""
    return f"""\
        services:
          - kind: {kind}
            name: {name}
            secret: "{name}-{kind}-secret"
            target: {target}
        """


def connecting(kind, name, port, secret=None):
    """A `connect:` block: a plain port for the pair or private service `name`."""
    return f"""\
        connect:
          - listen: 127.0.0.1:{port}
            {kind}: {name}
            secret: "{secret or f'{name}-{kind}-secret'}"
        """


def registered_at_b(kind, name):
    return harness.log_message(
        rf"agent link \d+ \(relay-a, credential relay-a\): registered {kind} {name}\s*$")


UP_AT_B = harness.log_message(r"agent link \d+ up: agent relay-a credential relay-a from ")
UP_AT_A = harness.log_message(r"upstream link: authenticated at relay relay-b as relay-a")


class UpstreamLinkTest(harness.IntegrationTest):

    def test_link_authenticates_at_upstream(self):
        h = self.fresh_harness()
        relay_b = h.relay(relay_b_yaml(h), name="relay-b")
        relay_a = h.relay(relay_a_yaml(h, relay_b), name="relay-a")
        relay_b.wait_line(UP_AT_B)
        relay_a.wait_line(UP_AT_A)
        self.assertEqual(relay_b.wait_metric("rdv_links_active", lambda v: v == 1), 1)
        self.assertGreaterEqual(relay_b.metric("rdv_links_accepted_total"), 1)
        self.assertEqual(relay_a.wait_metric("rdv_upstream_relay_up", lambda v: v == 1), 1)
        self.assertEqual(relay_a.metric("rdv_upstream_relay_links_total"), 1)
        # A is an agent to B, not the other way round.
        self.assertEqual(relay_a.metric("rdv_links_active"), 0)

    def test_wrong_secret_is_refused_and_retried(self):
        h = self.fresh_harness()
        relay_b = h.relay(relay_b_yaml(h), name="relay-b")
        relay_a = h.relay(relay_a_yaml(h, relay_b, secret="not-the-upstream-secret"),
                          name="relay-a")
        relay_b.wait_metric("rdv_auth_refused_total", lambda v: v >= 2, reason="bad_secret")
        relay_a.wait_line(harness.log_message(
            r"upstream link refused by \S+: authentication failed"))
        self.assertEqual(relay_a.metric("rdv_upstream_relay_up"), 0)
        self.assertEqual(relay_b.metric("rdv_links_active"), 0)
        self.assertEqual(relay_a.find(UP_AT_A), [])

    def test_wrong_pin_never_authenticates(self):
        h = self.fresh_harness()
        relay_b = h.relay(relay_b_yaml(h), name="relay-b")
        relay_a = h.relay(relay_a_yaml(h, relay_b, fingerprint="00" * 32), name="relay-a")
        relay_a.wait_line(harness.log_message(r"upstream link down: "))
        relay_a.wait_line(harness.log_message(r"upstream link down: "), start=relay_a.mark())
        self.assertEqual(relay_b.metric("rdv_links_accepted_total"), 0)
        self.assertEqual(relay_a.metric("rdv_upstream_relay_up"), 0)

    def test_redials_when_upstream_restarts(self):
        h = self.fresh_harness()
        relay_b = h.relay(relay_b_yaml(h), name="relay-b")
        b_agent = harness.format_addr(relay_b.address("agent"))
        relay_a = h.relay(relay_a_yaml(h, relay_b), name="relay-a")
        relay_a.wait_line(UP_AT_A)
        mark = relay_a.mark()
        relay_b.kill()  # a crash: the link drops (a drain's GoAway is UpstreamReplicaTest's)
        relay_a.wait_line(harness.log_message(r"upstream link down: "), start=mark)
        relay_a.wait_metric("rdv_upstream_relay_up", lambda v: v == 0)
        self.assertEqual(relay_a.metric("rdv_upstream_relay_drops_total"), 1)
        # Same state dir (so the same certificate and fingerprint) and the same port.
        relay_b2 = h.relay(relay_b_yaml(h, agent_listen=b_agent), name="relay-b")
        relay_b2.wait_line(UP_AT_B, timeout=20)
        relay_a.wait_line(UP_AT_A, start=mark, timeout=20)
        relay_a.wait_metric("rdv_upstream_relay_up", lambda v: v == 1)
        self.assertEqual(relay_a.metric("rdv_upstream_relay_links_total"), 2)

    def test_registers_again_after_upstream_restart(self):
        h = self.fresh_harness()
        relay_b = h.relay(relay_b_yaml(h), name="relay-b")
        b_agent = harness.format_addr(relay_b.address("agent"))
        relay_a = h.relay(relay_a_yaml(h, relay_b), name="relay-a")
        agent = h.agent(agent_yaml(relay_a, "agent-a", "site-a",
                                   serving("pair", "kept", "127.0.0.1:9")), name="agent-a")
        agent.wait_registered("kept", "pair")
        relay_b.wait_line(registered_at_b("pair", "kept"))
        relay_a.wait_line(harness.log_message(r"upstream link: registered pair kept at relay relay-b"))
        relay_b.stop()
        relay_b2 = h.relay(relay_b_yaml(h, agent_listen=b_agent), name="relay-b")
        relay_b2.wait_line(registered_at_b("pair", "kept"), timeout=20)


class UpstreamReplicaTest(harness.IntegrationTest):
    """Two replicas of the upstream relay behind one address (a failover balancer, as a
    Kubernetes Service): SIGTERM to replica b1 and relay A dials a new upstream link at once,
    which reaches b2; the agent serving at b moves there too, the connecting agent at A moves its
    tunnel to b2 for new connections while the connection open in the old tunnel goes on; once
    it closes, b1 exits and A closes its retired upstream link."""

    def test_upstream_going_away_moves_the_cascade(self):
        h = self.fresh_harness()
        target = h.data_target()
        relay_b1 = h.relay(relay_b_yaml(h, name="relay-b1", relay_id="relay-b1"), name="relay-b1")
        state = h.path("relay-b1-state")
        relay_b2 = h.relay(relay_b_yaml(
            h, name="relay-b2", relay_id="relay-b2",
            listener_extra=(f"\n          cert_file: {state}/relay-cert.pem"
                            f"\n          key_file: {state}/relay-key.pem")), name="relay-b2")
        balancer = harness.FailoverBalancer(h.bg, [relay_b1.address("agent"),
                                                   relay_b2.address("agent")])
        self.addCleanup(balancer.close)
        front = types.SimpleNamespace(address=lambda role: balancer.address,
                                      fingerprint=relay_b1.fingerprint)
        relay_a = h.relay(relay_a_yaml(h, front), name="relay-a")
        relay_a.wait_line(harness.log_message(r"upstream link: authenticated at relay relay-b1"))
        server = h.agent(agent_yaml(front, "serve-at-b", "site-b",
                                    serving("pair", "moving", target.target())), name="serve-at-b")
        server.wait_registered("moving", "pair")
        port = harness.free_port()
        connector = h.agent(agent_yaml(relay_a, "connect-at-a", "site-a",
                                       connecting("pair", "moving", port)), name="connect-at-a")
        connector.wait_line(harness.log_message(
            r"tunnel pair moving up: peer serve-at-b via relay-a,relay-b1 \(psk\)"), timeout=20)
        old = harness.EchoStream(("127.0.0.1", port), seed=41)
        old.wait_progress(1 << 20)

        mark_a, mark_c = relay_a.mark(), connector.mark()
        relay_b1.send_signal(signal.SIGTERM)
        relay_a.wait_line(harness.log_message(
            r"upstream link: the upstream relay is going away; dialing a new link"), start=mark_a)
        relay_a.wait_line(harness.log_message(r"upstream link: authenticated at relay relay-b2"),
                          start=mark_a)
        connector.wait_line(harness.log_message(
            r"tunnel pair moving up: peer serve-at-b via relay-a,relay-b2 \(psk\)"),
            start=mark_c, timeout=20)
        new = harness.EchoStream(("127.0.0.1", port), seed=42)
        new.wait_progress(1 << 20)
        old.wait_progress(old.bytes_ok + (1 << 20))
        self.assertTrue(relay_b1.alive(), "relay b1 stopped while a tunnel stream was open")
        relay_a.wait_metric("rdv_upstream_relay_up", lambda v: v == 1)
        old.stop()
        self.assertEqual(relay_b1.wait(20), 0)
        relay_a.wait_line(harness.log_message(
            r"upstream link: retired link has no stream left; closing it"), start=mark_a)
        new.wait_progress(new.bytes_ok + (1 << 20))
        new.stop()
        self.assertEqual(relay_a.metric("rdv_upstream_relay_up"), 1)
        self.assertEqual(relay_a.metric("rdv_upstream_relay_drops_total"), 0)


class CascadeTunnelTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.page = "behind the serving agent"
        cls.nginx = h.nginx(f'location / {{ return 200 "{cls.page}\\n"; }}')
        cls.relay_b = h.relay(relay_b_yaml(h), name="relay-b")
        cls.relay_a = h.relay(relay_a_yaml(h, cls.relay_b), name="relay-a")
        cls.relay_a.wait_line(UP_AT_A)

    def start_agent(self, relay, agent_id, credential, body):
        agent = self.h.agent(agent_yaml(relay, agent_id, credential, body), name=agent_id)
        self.addCleanup(lambda: agent.reaped or agent.stop())
        return agent

    def assert_tunnel(self, connector, server, name, port, hops, kind="pair"):
        """Both ends log the tunnel up with `hops`, curl crosses it, both statuses agree."""
        via = ",".join(hops)
        connector.wait_line(harness.log_message(
            rf"tunnel {kind} {name} up: peer {server.name} via {via} \(psk\)"), timeout=20)
        server.wait_line(harness.log_message(
            rf"tunnel {kind} {name} up: peer {connector.name} via {via} \(psk\)"), timeout=20)
        r = harness.curl(f"http://127.0.0.1:{port}/")
        self.assertEqual((r.rc, r.status, r.body.strip()), (0, 200, self.page), r)
        for agent, role, peer in ((connector, "connect", server.name),
                                  (server, "serve", connector.name)):
            status = agent.status()
            tunnels = [t for t in status["tunnels"] if t["name"] == name and t["role"] == role]
            self.assertEqual(len(tunnels), 1, status)
            self.assertEqual({k: tunnels[0][k] for k in ("kind", "state", "peer_agent", "hops")},
                             {"kind": kind, "state": "up", "peer_agent": peer, "hops": hops},
                             status)

    def test_served_at_upstream_connected_downstream(self):
        # agent -> relay A -> relay B <- agent: A has no holder of the pair, so it forwards the
        # Open upstream.
        server = self.start_agent(self.relay_b, "serve-at-b", "site-b",
                                  serving("pair", "at-b", self.nginx.target()))
        server.wait_registered("at-b", "pair")
        port = harness.free_port()
        connector = self.start_agent(self.relay_a, "connect-at-a", "site-a",
                                     connecting("pair", "at-b", port))
        self.assert_tunnel(connector, server, "at-b", port, ["relay-a", "relay-b"])
        self.relay_a.wait_line(harness.log_message(
            r"tunnel pair at-b bridged: connect-at-a -> upstream "))
        self.relay_b.wait_line(harness.log_message(
            r"tunnel pair at-b bridged: relay-a -> serve-at-b"))

    def test_served_downstream_connected_at_upstream(self):
        # agent -> relay B -> relay A <- agent: A registered the pair at B, so B routes the Open
        # to A's link, and A routes it to its own agent.
        mark_b = self.relay_b.mark()
        server = self.start_agent(self.relay_a, "serve-at-a", "site-a",
                                  serving("pair", "at-a", self.nginx.target()))
        server.wait_registered("at-a", "pair")
        self.relay_b.wait_line(registered_at_b("pair", "at-a"), start=mark_b)
        port = harness.free_port()
        connector = self.start_agent(self.relay_b, "connect-at-b", "site-b",
                                     connecting("pair", "at-a", port))
        self.assert_tunnel(connector, server, "at-a", port, ["relay-b", "relay-a"])
        # The serving agent leaves: A withdraws the pair at B.
        mark_b = self.relay_b.mark()
        server.stop()
        self.relay_b.wait_line(harness.log_message(
            r"agent link \d+ \(relay-a, credential relay-a\): unregistered pair at-a"),
            start=mark_b)

    def test_private_service_served_downstream(self):
        mark_b = self.relay_b.mark()
        server = self.start_agent(self.relay_a, "private-at-a", "site-a",
                                  serving("private", "db-at-a", self.nginx.target()))
        server.wait_registered("db-at-a", "private")
        self.relay_b.wait_line(registered_at_b("private", "db-at-a"), start=mark_b)
        port = harness.free_port()
        connector = self.start_agent(self.relay_b, "private-from-b", "site-b",
                                     connecting("private", "db-at-a", port))
        self.assert_tunnel(connector, server, "db-at-a", port, ["relay-b", "relay-a"],
                           kind="private")

    def test_wrong_pairing_secret_notice_reaches_the_downstream_holder(self):
        mark_b = self.relay_b.mark()
        holder = self.start_agent(self.relay_a, "holder-at-a", "site-a",
                                  serving("pair", "guarded", self.nginx.target()))
        holder.wait_registered("guarded", "pair")
        self.relay_b.wait_line(registered_at_b("pair", "guarded"), start=mark_b)
        port = harness.free_port()
        stranger = self.start_agent(self.relay_b, "stranger-at-b", "site-b",
                                    connecting("pair", "guarded", port, "not-the-pairing-secret"))
        stranger.wait_line(harness.log_message(
            r"tunnel pair guarded: relay refused: pair 'guarded' is registered with a different "
            r"pairing secret"))
        self.relay_a.wait_line(harness.log_message(
            r"upstream link: notice from relay relay-b for pair guarded: an agent "
            r"\(stranger-at-b\) asked for pair 'guarded' with a different pairing secret"))
        holder.wait_line(harness.log_message(
            r"tunnel pair guarded: notice from relay: an agent \(stranger-at-b\) asked for pair "
            r"'guarded' with a different pairing secret"))
        self.assertEqual(holder.find(r"tunnel pair guarded up"), [])


if __name__ == "__main__":
    harness.main()
