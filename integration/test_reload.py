#!/usr/bin/python3
"""Relay configuration reload: SIGHUP applies a changed `credentials` section without a restart.

Each test starts a relay (two workers, HTTP entrypoint, a tcp service port) from a YAML file,
rewrites the file and sends SIGHUP:
  added     an agent refused under an unknown credential links once the credential is added, and
            curl reaches its page
  changed   narrowed grants: the agent's links get GoAway, it reconnects at once, the name now
            outside its grants is refused (404 through the relay) while its other names answer,
            and a tcp stream open before the reload goes on byte-exact to its end
  removed   the agent's links are closed at once, its redials are refused and its name is
            released (404 through the relay)
  invalid   a broken file is logged with its line and counted, and changes nothing; a changed
            section other than credentials is named in a warning (it waits for a restart)
"""

import os
import signal
import sys
import textwrap

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

MIB = 1 << 20
ORANG = ("orang", "orang-reload-secret")
SPARE = ("spare", "spare-reload-secret")


class ReloadTest(harness.IntegrationTest):

    def relay_yaml(self, credentials, log_level=harness.LOG_LEVEL):
        """`credentials`: (name, secret, grants) triples."""
        entries = "".join(f"""
              - name: {name}
                secret: "{secret}"
                grants: [{", ".join(f'"{g}"' for g in grants)}]""" for name, secret, grants in credentials)
        return f"""\
            relay_id: relay-reload
            state_dir: {self.h.path('relay-state')}
            workers: 2
            log_level: {log_level}
            agent_listener:
              listen: ["127.0.0.1:0"]
            http:
              listen: ["127.0.0.1:0"]
            tcp:
              bind: ["127.0.0.1"]
              ports:
                - service: svc
                  port: {self.port}
            admin:
              listen: ["127.0.0.1:0"]
            credentials:{entries}
            """

    def start(self, credentials):
        self.h = self.fresh_harness()
        self.port = harness.free_port()
        self.nginx = self.h.nginx('location / { return 200 "$host\\n"; }')
        self.target = self.h.data_target()
        self.relay = self.h.relay(self.relay_yaml(credentials), name="relay")

    def reload(self, text):
        """Rewrites the relay's config file and sends SIGHUP; returns the log mark before it."""
        mark = self.relay.mark()
        self.h.write("relay.yaml", text)
        self.relay.send_signal(signal.SIGHUP)
        return mark

    def agent(self, name, credential, services):
        return self.h.agent(textwrap.dedent(f"""\
            agent_id: {name}
            relays: ["{harness.format_addr(self.relay.address('agent'))}"]
            relay_fingerprint: "sha256:{self.relay.fingerprint}"
            credential:
              name: {credential[0]}
              secret: "{credential[1]}"
            links: 2
            reconnect:
              initial_ms: 100
              max_ms: 300
            log_level: {harness.LOG_LEVEL}
            services:
            """) + "".join(f"  - name: {service}\n    kind: {kind}\n    target: {target}\n"
                           for kind, service, target in services), name=name)

    def get(self, host):
        res = harness.curl(harness.http_url(self.relay.address("http")), host=host)
        return res.status, res.body

    def test_added_credential_links(self):
        self.start([(*ORANG, ["http:www.orang.test"])])
        late = self.agent("late", SPARE, [("http", "late.orang.test", self.nginx.target())])
        self.relay.wait_metric("rdv_auth_refused_total", lambda v: v >= 1,
                               reason="unknown_credential")
        mark = self.reload(self.relay_yaml([(*ORANG, ["http:www.orang.test"]),
                                            (*SPARE, ["http:late.orang.test"])]))
        self.relay.wait_line(harness.log_message(
            r"reload: \S+relay.yaml: credentials: 1 added, 0 removed, 0 changed"), start=mark)
        late.wait_registered("late.orang.test", "http", timeout=15)
        self.assertEqual(self.get("late.orang.test"), (200, "late.orang.test\n"))
        self.assertEqual(self.relay.metric("rdv_config_reloads_total", result="ok"), 1)
        self.assertEqual(self.relay.find(harness.log_message(r"reload: changes to")), [])

    def test_changed_grants_move_the_agent(self):
        grants = ["http:www.orang.test", "http:api.orang.test", "tcp:svc"]
        self.start([(*ORANG, grants)])
        agent = self.agent("orang", ORANG, [("http", "www.orang.test", self.nginx.target()),
                                             ("http", "api.orang.test", self.nginx.target()),
                                             ("tcp", "svc", self.target.target())])
        agent.wait_registered("api.orang.test", "http")
        agent.wait_registered("svc", "tcp")
        self.assertEqual(self.get("api.orang.test"), (200, "api.orang.test\n"))
        echo = harness.EchoStream(("127.0.0.1", self.port), seed=31)
        echo.wait_progress(MIB)

        agent_mark = agent.mark()
        mark = self.reload(self.relay_yaml([(*ORANG, ["http:www.orang.test", "tcp:svc"])]))
        self.relay.wait_line(harness.log_message(
            r"reload: \S+relay.yaml: credentials: 0 added, 0 removed, 1 changed; "
            r"1 claimed names released"), start=mark)
        self.relay.wait_line(harness.log_message(
            r"agent link \d+: credential 'orang' changed by a reload; GoAway"), start=mark)
        agent.wait_line(harness.log_message(r"link \d+: the relay is going away; dialing a new link"),
                        start=agent_mark)
        agent.wait_registered("www.orang.test", "http", start=agent_mark)
        reason = agent.wait_refused("api.orang.test", "http", start=agent_mark)
        self.assertIn("grant", reason)
        self.assertEqual(self.get("api.orang.test")[0], 404)
        self.assertEqual(self.get("www.orang.test"), (200, "www.orang.test\n"))
        # The stream opened before the reload finishes on the retired link.
        echo.wait_progress(echo.bytes_ok + MIB)
        echo.stop()
        fresh = harness.EchoStream(("127.0.0.1", self.port), seed=32)
        fresh.wait_progress(MIB)
        fresh.stop()

    def test_removed_credential_closes_links(self):
        self.start([(*ORANG, ["http:www.orang.test"]), (*SPARE, ["http:spare.orang.test"])])
        spare = self.agent("spare", SPARE, [("http", "spare.orang.test", self.nginx.target())])
        spare.wait_registered("spare.orang.test", "http")
        self.assertEqual(self.get("spare.orang.test"), (200, "spare.orang.test\n"))
        refused_before = self.relay.metric("rdv_auth_refused_total", reason="unknown_credential")
        mark = self.reload(self.relay_yaml([(*ORANG, ["http:www.orang.test"])]))
        self.relay.wait_line(harness.log_message(
            r"reload: \S+relay.yaml: credentials: 0 added, 1 removed, 0 changed; "
            r"1 claimed names released"), start=mark)
        self.relay.wait_line(harness.log_message(
            r"agent link \d+: credential 'spare' removed by a reload; closing the link"),
            start=mark)
        self.relay.wait_metric("rdv_links_active", lambda v: v == 0)
        self.relay.wait_metric("rdv_auth_refused_total", lambda v: v > refused_before,
                               reason="unknown_credential")
        # The name's claim went with the credential: unknown now, free for another credential.
        self.assertEqual(self.get("spare.orang.test")[0], 404)

    def test_invalid_file_changes_nothing(self):
        self.start([(*ORANG, ["http:www.orang.test"])])
        agent = self.agent("orang", ORANG, [("http", "www.orang.test", self.nginx.target())])
        agent.wait_registered("www.orang.test", "http")
        good = self.relay_yaml([(*ORANG, ["http:www.orang.test"])])
        mark = self.reload(good.replace("grants:", "grant:"))
        m = self.relay.wait_line(harness.log_message(
            r"reload: (.*); the running configuration stays"), start=mark)
        self.assertRegex(m.group(1), r"relay\.yaml:\d+:.*grant")
        self.assertEqual(self.relay.metric("rdv_config_reloads_total", result="error"), 1)
        self.assertEqual(self.relay.metric("rdv_links_active"), 2)
        self.assertEqual(self.get("www.orang.test"), (200, "www.orang.test\n"))
        # A section outside credentials: named, and left for the next restart.
        mark = self.reload(self.relay_yaml([(*ORANG, ["http:www.orang.test"])], log_level="debug"))
        self.relay.wait_line(harness.log_message(
            r"reload: changes to log_level take effect at the next restart"), start=mark)
        self.assertEqual(self.relay.metric("rdv_config_reloads_total", result="ok"), 1)
        self.assertEqual(self.relay.metric("rdv_links_active"), 2)
        self.assertTrue(self.relay.alive())
        self.assertTrue(agent.alive())


if __name__ == "__main__":
    harness.main()
