#!/usr/bin/python3
"""Cascaded relays (docs/protocol.md "Cascaded relays"): relay A dials relay B as if it were an agent.

  relay B (upstream)   credential relay-a: pair:*, private:*, connect:*
  relay A              upstream: relay B, credential relay-a, B pinned by fingerprint

Checked here: A's link authenticates at B (B's log and metrics, A's gauge), a wrong secret is
refused at B and retried by A with backoff, a wrong pin never authenticates, and A redials when
B restarts.
"""

import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

UPSTREAM_SECRET = "relay-a-upstream-secret"


def relay_b_yaml(h, name="relay-b", agent_listen="127.0.0.1:0"):
    return f"""\
        relay_id: relay-b
        state_dir: {h.path(name + '-state')}
        workers: 2
        log_level: {harness.LOG_LEVEL}
        agent_listener:
          listen: ["{agent_listen}"]
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
        relay_b.stop()
        relay_a.wait_line(harness.log_message(r"upstream link down: "), start=mark)
        relay_a.wait_metric("rdv_upstream_relay_up", lambda v: v == 0)
        self.assertEqual(relay_a.metric("rdv_upstream_relay_drops_total"), 1)
        # Same state dir (so the same certificate and fingerprint) and the same port.
        relay_b2 = h.relay(relay_b_yaml(h, agent_listen=b_agent), name="relay-b")
        relay_b2.wait_line(UP_AT_B, timeout=20)
        relay_a.wait_line(UP_AT_A, start=mark, timeout=20)
        relay_a.wait_metric("rdv_upstream_relay_up", lambda v: v == 1)
        self.assertEqual(relay_a.metric("rdv_upstream_relay_links_total"), 2)


if __name__ == "__main__":
    harness.main()
