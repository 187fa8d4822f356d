#!/usr/bin/python3
"""Who may claim what: refused links and registrations are refused, counted and logged with a reason.

Credentials of the shared relay:
  orang   http:www.orang.com, http:*.orang.com
  other   http:www.orang.com, http:other.example     (overlaps orang: first holder keeps the name)
  fenced  http:fenced.example, networks 10.0.0.0/8  (agents connect from 127.0.0.1)
"""

import os
import re
import secrets
import sys
import textwrap

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SECRETS = {"orang": "orang-auth-secret", "other": "other-auth-secret",
           "fenced": "fenced-auth-secret"}


class AuthTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.token_a = "holder-" + secrets.token_hex(12)
        cls.token_b = "intruder-" + secrets.token_hex(12)
        cls.nginx_a = h.nginx(f'location / {{ return 200 "{cls.token_a}\\n"; }}', name="nginx-a")
        cls.nginx_b = h.nginx(f'location / {{ return 200 "{cls.token_b}\\n"; }}', name="nginx-b")
        cls.relay = h.relay(f"""\
            relay_id: relay-auth
            state_dir: {h.path('relay-state')}
            workers: 2
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]
            http:
              listen: ["127.0.0.1:0"]
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "{SECRETS['orang']}"
                grants: ["http:www.orang.com", "http:*.orang.com"]
              - name: other
                secret: "{SECRETS['other']}"
                grants: ["http:www.orang.com", "http:other.example"]
              - name: fenced
                secret: "{SECRETS['fenced']}"
                grants: ["http:fenced.example"]
                networks: ["10.0.0.0/8"]
            """, name="relay")

    def start_agent(self, name, credential, secret, services):
        agent = self.h.agent(textwrap.dedent(f"""\
            agent_id: {name}
            relays: ["{harness.format_addr(self.relay.address('agent'))}"]
            relay_fingerprint: "sha256:{self.relay.fingerprint}"
            credential:
              name: {credential}
              secret: "{secret}"
            links: 1
            reconnect:
              initial_ms: 100
              max_ms: 1000
            log_level: {harness.LOG_LEVEL}
            services:
            """) + harness.yaml_block(services, 2) + "\n", name=name)
        self.addCleanup(self._stop_agent, agent)
        return agent

    @staticmethod
    def _stop_agent(agent):
        if agent.reaped:
            return
        if agent.alive():
            agent.stop()
            return
        # An agent whose credential was refused may give up (runtime failure, 2); a crash is a bug.
        status = agent.wait()
        if status not in (0, 2):
            raise AssertionError(f"{agent.name} exited with status {status}\n{agent.tail()}")

    def get(self, host):
        return harness.curl(harness.http_url(self.relay.address("http")), host=host)

    def wait_relay_log(self, start, *needles):
        """A relay log line (after `start`) containing every needle; `_` also matches a space."""
        parts = "".join(rf"(?=.*{re.escape(n).replace('_', '[ _]')})" for n in needles)
        return self.relay.wait_line(r"(?i)" + parts, start=start)

    def assert_link_refused(self, credential, secret, reason):
        links = self.relay.metric("rdv_links_active")
        before = self.relay.metric("rdv_auth_refused_total", reason=reason)
        mark = self.relay.mark()
        agent = self.start_agent(f"agent-{reason}", credential, secret, f"""\
            - name: refused-{reason.replace('_', '-')}.orang.com
              kind: http
              target: {self.nginx_b.target()}""")
        self.relay.wait_metric("rdv_auth_refused_total", lambda v: v >= before + 1, reason=reason)
        self.wait_relay_log(mark, credential, reason)
        # The agent says why its link failed, and never gets a link or a registration.
        agent.wait_line(r"(?i)link \d+ .*(down|refused|fail)")
        self.assertEqual(agent.find(harness.log_message(r"(link \d+ up|registered)")), [],
                         agent.tail())
        self.assertEqual(self.relay.metric("rdv_links_active"), links)
        self.assertTrue(self.relay.alive())

    def test_wrong_secret(self):
        self.assert_link_refused("orang", "not-the-right-secret", "bad_secret")

    def test_unknown_credential(self):
        self.assert_link_refused("nobody", "whatever-secret", "unknown_credential")

    def test_source_network_outside_credential(self):
        self.assert_link_refused("fenced", SECRETS["fenced"], "source_network")

    def test_name_outside_grant(self):
        before = self.relay.metric("rdv_register_refused_total", reason="not_granted")
        mark = self.relay.mark()
        agent = self.start_agent("agent-greedy", "orang", SECRETS["orang"], f"""\
            - name: api.orang.com
              kind: http
              target: {self.nginx_a.target()}
            - name: www.evil.com
              kind: http
              target: {self.nginx_b.target()}""")
        reason = agent.wait_refused("www.evil.com", "http")
        self.assertTrue(reason, "agent logged no refusal reason")
        agent.wait_registered("api.orang.com", "http")
        self.relay.wait_metric("rdv_register_refused_total", lambda v: v >= before + 1,
                               reason="not_granted")
        self.wait_relay_log(mark, "www.evil.com", "not_granted")
        self.assertEqual(self.get("www.evil.com").status, 404)
        result = self.get("api.orang.com")
        self.assertEqual((result.status, result.body.strip()), (200, self.token_a), result)

    def test_name_held_by_another_credential(self):
        holder = self.start_agent("agent-holder", "orang", SECRETS["orang"], f"""\
            - name: www.orang.com
              kind: http
              target: {self.nginx_a.target()}""")
        holder.wait_registered("www.orang.com", "http")
        before = self.relay.metric("rdv_register_refused_total", reason="name_taken")
        mark = self.relay.mark()
        intruder = self.start_agent("agent-intruder", "other", SECRETS["other"], f"""\
            - name: www.orang.com
              kind: http
              target: {self.nginx_b.target()}
            - name: other.example
              kind: http
              target: {self.nginx_b.target()}""")
        intruder.wait_refused("www.orang.com", "http")
        intruder.wait_registered("other.example", "http")
        self.relay.wait_metric("rdv_register_refused_total", lambda v: v >= before + 1,
                               reason="name_taken")
        self.wait_relay_log(mark, "www.orang.com", "name_taken")
        for _ in range(10):
            result = self.get("www.orang.com")
            self.assertEqual((result.status, result.body.strip()), (200, self.token_a), result)
        result = self.get("other.example")
        self.assertEqual((result.status, result.body.strip()), (200, self.token_b), result)


if __name__ == "__main__":
    harness.main()
