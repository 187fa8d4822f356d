#!/usr/bin/python3
"""TCP services end to end: raw sockets -> rdv-relay service port -> rdv-agent -> Python target.

The agent publishes three tcp services to one data target:
  sink     port 0          -> the relay allocates a port inside the credential's grant range
  pinned   port LO+3       -> the requested port (inside the grant range)
  db       port 0          -> the relay's fixed mapping (tcp.ports: db -> FIXED, outside the range)
Each carries 5 MiB of pseudo-random bytes in both directions at once, checked by sha256.
"""

import os
import sys
import textwrap

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SECRET = "orang-tcp-secret"
MIB = 1 << 20


class TcpServiceTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.lo, cls.hi = harness.free_port_range(10)
        fixed_lo, _ = harness.free_port_range(1)
        while cls.lo <= fixed_lo <= cls.hi:
            fixed_lo, _ = harness.free_port_range(1)
        cls.fixed = fixed_lo
        cls.target = h.data_target()
        cls.relay = h.relay(f"""\
            relay_id: relay-tcp
            state_dir: {h.path('relay-state')}
            workers: 2
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]
            tcp:
              bind: ["127.0.0.1", "::1"]
              ports:
                - service: db
                  port: {cls.fixed}
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "{SECRET}"
                grants: ["tcp:{cls.lo}-{cls.hi}", "tcp:db"]
            """, name="relay")
        cls.agent = h.agent(textwrap.dedent(f"""\
            agent_id: agent-tcp
            relays: ["{harness.format_addr(cls.relay.address('agent'))}"]
            relay_fingerprint: "sha256:{cls.relay.fingerprint}"
            credential:
              name: orang
              secret: "{SECRET}"
            links: 2
            log_level: {harness.LOG_LEVEL}
            services:
              - name: sink
                kind: tcp
                target: {cls.target.target()}
                port: 0
              - name: pinned
                kind: tcp
                target: {cls.target.target()}
                port: {cls.lo + 3}
              - name: db
                kind: tcp
                target: {cls.target.target()}
            """), name="agent")
        for name in ("sink", "pinned", "db"):
            cls.agent.wait_registered(name, "tcp")

    def transfer(self, addr, seed):
        before = self.relay.metric("rdv_tcp_connections_total")
        harness.exchange(addr, 5 * MIB, 5 * MIB, seed)
        self.relay.wait_metric("rdv_tcp_connections_total", lambda v: v >= before + 1)

    def test_allocated_port_is_in_grant_range(self):
        host, port = self.relay.address("tcp:sink")
        self.assertEqual(host, "127.0.0.1")
        self.assertTrue(self.lo <= port <= self.hi, f"sink got port {port}, grant is "
                                                     f"{self.lo}-{self.hi}")
        self.transfer((host, port), seed=101)

    def test_requested_port(self):
        self.assertEqual(self.relay.port("tcp:pinned"), self.lo + 3)
        self.transfer(self.relay.address("tcp:pinned"), seed=102)

    def test_fixed_port_from_relay_config(self):
        self.assertEqual(self.relay.port("tcp:db"), self.fixed)
        self.transfer(self.relay.address("tcp:db"), seed=103)

    def test_ipv6_bind(self):
        addr6 = self.relay.address("tcp:sink", v6=True)
        self.assertEqual(addr6[1], self.relay.port("tcp:sink"))
        self.transfer(addr6, seed=104)

    def test_streams_are_released(self):
        harness.exchange(self.relay.address("tcp:sink"), MIB, MIB, seed=105)
        self.relay.wait_metric("rdv_streams_active", lambda v: v == 0)


if __name__ == "__main__":
    harness.main()
