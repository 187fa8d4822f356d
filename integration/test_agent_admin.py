#!/usr/bin/python3
"""The agent's local admin listener (`admin: {listen: host:port}`): GET /metrics, GET /status and
`rdv-agent status --admin host:port [--json]`.

  relay   agent listener + http on 127.0.0.1:0, admin on 127.0.0.1:0
  agent   2 links to it, admin on 127.0.0.1:<free port>
Also: an agent whose relay does not answer (its links are not up, on an IPv6 admin address bound
to port 0), the CLI against a port nothing listens on, and bad admin addresses in the config.
"""

import json
import os
import re
import socket
import sys
import textwrap
import urllib.error
import urllib.request

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SECRET = "orang-admin-secret"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(addr, path):
    """(status, content type, body text) of GET http://addr/path."""
    url = f"http://{harness.format_addr(addr)}{path}"
    try:
        with _OPENER.open(url, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type"), resp.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode("utf-8")


def agent_yaml(relay_addr, fingerprint, admin_listen, agent_id="agent-admin", links=2):
    return textwrap.dedent(f"""\
        agent_id: {agent_id}
        relays: ["{relay_addr}"]
        relay_fingerprint: "sha256:{fingerprint}"
        credential:
          name: orang
          secret: "{SECRET}"
        links: {links}
        reconnect:
          initial_ms: 100
          max_ms: 200
        log_level: {harness.LOG_LEVEL}
        services:
          - name: www.orang.com
            kind: http
            target: 127.0.0.1:9
        admin:
          listen: "{admin_listen}"
        """)


def status_command(*args):
    return harness.run_expect_exit([harness.agent_binary(), "status", *args])


class AgentAdminTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.relay = h.relay(f"""\
            relay_id: relay-admin
            state_dir: {h.path('relay-state')}
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]
            http:
              listen: ["127.0.0.1:0"]
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "{SECRET}"
                grants: ["http:www.orang.com"]
            """, name="relay")
        port = harness.free_port()
        cls.agent = h.agent(agent_yaml(harness.format_addr(cls.relay.address("agent")),
                                       cls.relay.fingerprint, f"127.0.0.1:{port}"), name="agent")
        m = cls.agent.wait_line(harness.log_message(r"admin listening (\S+)\s*$"))
        cls.admin = harness.parse_addr(m.group(1))
        assert cls.admin == ("127.0.0.1", port), cls.admin
        cls.agent.wait_links_up(2)
        cls.agent.wait_registered("www.orang.com", "http")

    def metric(self, name, **labels):
        _, _, text = get(self.admin, "/metrics")
        return harness.metric_value(harness.parse_metrics(text), name, **labels)

    def wait_status(self, predicate, what):
        last = [None]

        def check():
            code, _, body = get(self.admin, "/status")
            last[0] = (code, body)
            return code == 200 and predicate(json.loads(body))
        try:
            harness.wait_until(check, 10, what, interval=0.05)
        except AssertionError as e:
            raise AssertionError(f"{e}; last answer {last[0]}") from None
        return json.loads(last[0][1])

    def test_metrics_has_agent_counters(self):
        code, content_type, text = get(self.admin, "/metrics")
        self.assertEqual(code, 200)
        self.assertIn("text/plain", content_type)
        types = harness.metric_types(text)
        self.assertEqual(types.get("rdv_agent_links_up"), "gauge")
        self.assertEqual(types.get("rdv_agent_link_drops_total"), "counter")
        harness.wait_until(lambda: self.metric("rdv_agent_links_up") == 2, 10,
                           "rdv_agent_links_up == 2")

    def test_status_json_names_the_agent_and_its_links(self):
        status = self.wait_status(
            lambda s: [link["state"] for link in s["links"]] == ["up", "up"], "both links up")
        relay = harness.format_addr(self.relay.address("agent"))
        self.assertEqual(status["agent_id"], "agent-admin")
        self.assertEqual(status["links"], [{"relay": relay, "state": "up"},
                                           {"relay": relay, "state": "up"}])
        self.assertEqual(status["tunnels"], [])
        code, content_type, _ = get(self.admin, "/status")
        self.assertEqual((code, content_type), (200, "application/json"))

    def test_status_command_summary_and_json(self):
        self.wait_status(lambda s: all(link["state"] == "up" for link in s["links"]), "links up")
        admin = harness.format_addr(self.admin)
        rc, output = status_command("--admin", admin)
        self.assertEqual(rc, 0, output)
        relay = harness.format_addr(self.relay.address("agent"))
        self.assertIn("agent agent-admin\n", output)
        self.assertEqual(output.count(f"  {relay} up\n"), 2, output)
        self.assertIn("tunnels: none", output)

        rc, output = status_command("--admin", admin, "--json")
        self.assertEqual(rc, 0, output)
        status = json.loads(output)
        self.assertEqual(status["agent_id"], "agent-admin")
        self.assertEqual(len(status["links"]), 2)

    def test_status_command_when_nothing_listens(self):
        port = harness.free_port()
        rc, output = status_command("--admin", f"127.0.0.1:{port}")
        self.assertEqual(rc, 2, output)
        self.assertIn(f"127.0.0.1:{port}", output)
        self.assertIn("nothing listens", output)
        rc, output = status_command("--admin", "not an address")
        self.assertEqual(rc, 2, output)
        rc, output = status_command()
        self.assertEqual(rc, 1, output)
        self.assertIn("--admin", output)

    def test_unknown_path_method_and_garbage(self):
        code, _, body = get(self.admin, "/nope")
        self.assertEqual(code, 404, body)
        with harness.connect(self.admin) as sock:
            sock.sendall(b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            data, _ = harness.read_until_closed(sock)
        self.assertEqual(harness.http_status(data), 405, data)
        before = self.metric("rdv_protocol_errors_total", listener="admin")
        with harness.connect(self.admin) as sock:
            sock.sendall(b"\x00\xff" + os.urandom(4096))
            try:
                data, _ = harness.read_until_closed(sock)
            except ConnectionResetError:
                data = b""
        if data:
            self.assertEqual(harness.http_status(data), 400, data)
        harness.wait_until(
            lambda: self.metric("rdv_protocol_errors_total", listener="admin") > before, 10,
            "rdv_protocol_errors_total{listener=admin} to grow")


class AgentAdminAloneTest(harness.IntegrationTest):
    """An agent whose relay never answers still serves its status; an IPv6 admin address on port
    0 is reported in the log."""

    def test_links_not_up_and_ipv6_port_zero(self):
        h = self.fresh_harness()
        dead_relay = f"127.0.0.1:{harness.free_port()}"
        agent = h.agent(agent_yaml(dead_relay, "ab" * 32, "[::1]:0", agent_id="agent-alone",
                                   links=1), name="agent")
        m = agent.wait_line(harness.log_message(r"admin listening (\S+)\s*$"))
        host, port = harness.parse_addr(m.group(1))
        self.assertEqual(host, "::1")
        self.assertNotEqual(port, 0)
        agent.wait_line(harness.log_message(r"link 0 down"))
        rc, output = status_command("--admin", m.group(1))
        self.assertEqual(rc, 0, output)
        self.assertIn("agent agent-alone\n", output)
        self.assertRegex(output, rf"  {re.escape(dead_relay)} (down|connecting)\n")
        rc, output = status_command("--admin", m.group(1), "--json")
        self.assertEqual(rc, 0, output)
        status = json.loads(output)
        self.assertEqual(len(status["links"]), 1)
        self.assertIn(status["links"][0]["state"], ("down", "connecting"))
        agent.stop()  # exits 0: the admin listener and its sessions closed cleanly

    def test_bad_admin_address_is_refused_with_file_and_line(self):
        h = self.fresh_harness()
        for listen, problem in (("localhost:9101", "must be an IP address"),
                                ("127.0.0.1:99999", "invalid address"),
                                ("no-port", "invalid address")):
            with self.subTest(listen=listen):
                text = agent_yaml("127.0.0.1:7000", "ab" * 32, listen)
                path = h.write(f"bad-admin-{len(listen)}.yaml", text)
                line = text.splitlines().index(f'  listen: "{listen}"') + 1
                for argv in ([harness.agent_binary(), "--config", path],
                             [harness.agent_binary(), "--check-config", "--config", path]):
                    rc, output = harness.run_expect_exit(argv)
                    self.assertEqual(rc, 1, output)
                    self.assertIn(f"{path}:{line}: admin.listen", output)
                    self.assertIn(problem, output)

    def test_admin_port_in_use_fails_the_start(self):
        h = self.fresh_harness()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            path = h.write("in-use.yaml", agent_yaml("127.0.0.1:7000", "ab" * 32,
                                                     f"127.0.0.1:{port}"))
            rc, output = harness.run_expect_exit([harness.agent_binary(), "--config", path])
        self.assertEqual(rc, 2, output)
        self.assertIn(f"admin.listen 127.0.0.1:{port}", output)


if __name__ == "__main__":
    harness.main()
