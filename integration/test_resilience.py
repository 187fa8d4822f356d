#!/usr/bin/python3
"""Resilience: crashed agents and restarted relays recover fast; one slow reader does not stall a
link; 1,000 concurrent streams share one agent byte-exact.

Each test builds its own relay/agent/target (they kill and restart processes).
"""

import asyncio
import hashlib
import os
import secrets
import socket
import sys
import textwrap
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SECRET = "orang-resilience-secret"
MIB = 1 << 20
RECOVERY_SECONDS = 2.0


def relay_yaml(h, agent_port=0, http_port=0, admin_port=0, extra=""):
    return textwrap.dedent(f"""\
        relay_id: relay-resilience
        state_dir: {h.path('relay-state')}
        workers: 2
        log_level: {harness.LOG_LEVEL}
        agent_listener:
          listen: ["127.0.0.1:{agent_port}"]
        http:
          listen: ["127.0.0.1:{http_port}"]
        admin:
          listen: ["127.0.0.1:{admin_port}"]
        credentials:
          - name: orang
            secret: "{SECRET}"
            grants: ["http:www.orang.com", "tcp:20000-32000"]
        """) + textwrap.dedent(extra)


def agent_yaml(relay, services, links=2):
    return textwrap.dedent(f"""\
        agent_id: agent-resilience
        relays: ["{harness.format_addr(relay.address('agent'))}"]
        relay_fingerprint: "sha256:{relay.fingerprint}"
        credential:
          name: orang
          secret: "{SECRET}"
        links: {links}
        reconnect:
          initial_ms: 100
          max_ms: 500
        log_level: {harness.LOG_LEVEL}
        services:
        """) + harness.yaml_block(services, 2) + "\n"


def poll_until_served(url, host, token, timeout=10):
    """curl until the page comes back; returns seconds elapsed."""
    start = time.monotonic()
    last = None
    while time.monotonic() - start < timeout:
        last = harness.curl(url, host=host, timeout=2)
        if last.status == 200 and last.body.strip() == token:
            return time.monotonic() - start
    raise AssertionError(f"not served within {timeout}s; last {last}")


class ResilienceTest(harness.IntegrationTest):

    def setUp(self):
        self.fresh_harness()

    def start_web(self):
        self.token = "page-" + secrets.token_hex(12)
        self.nginx = self.h.nginx(f'location / {{ return 200 "{self.token}\\n"; }}', name="nginx")
        return f"""\
            - name: www.orang.com
              kind: http
              target: {self.nginx.target()}"""

    def test_agent_killed_and_restarted(self):
        services = self.start_web()
        relay = self.h.relay(relay_yaml(self.h), name="relay")
        url = harness.http_url(relay.address("http"))
        config = agent_yaml(relay, services)
        first = self.h.agent(config, name="agent-first")
        first.wait_registered("www.orang.com", "http")
        poll_until_served(url, "www.orang.com", self.token)

        self.assertEqual(first.kill(), -9)
        start = time.monotonic()
        second = self.h.agent(config, name="agent-second")
        poll_until_served(url, "www.orang.com", self.token)
        elapsed = time.monotonic() - start
        self.assertLess(elapsed, RECOVERY_SECONDS, f"served again {elapsed:.2f}s after restart")
        second.wait_registered("www.orang.com", "http")
        # The dead agent's links are gone; only the new agent's two remain.
        relay.wait_metric("rdv_links_active", lambda v: v == 2)

    def test_relay_restarted_on_same_ports(self):
        services = self.start_web()
        first = self.h.relay(relay_yaml(self.h), name="relay-first")
        ports = {role: first.port(role) for role in ("agent", "http", "admin")}
        agent = self.h.agent(agent_yaml(first, services), name="agent")
        agent.wait_registered("www.orang.com", "http")
        url = harness.http_url(("127.0.0.1", ports["http"]))
        poll_until_served(url, "www.orang.com", self.token)

        first.stop()  # exit status 0 asserted
        mark = agent.mark()
        start = time.monotonic()
        second = self.h.relay(relay_yaml(self.h, ports["agent"], ports["http"], ports["admin"]),
                              name="relay-second")
        self.assertEqual(second.fingerprint, first.fingerprint,
                         "fingerprint changed although state_dir was kept")
        self.assertEqual({role: second.port(role) for role in ports}, ports)
        poll_until_served(url, "www.orang.com", self.token)
        elapsed = time.monotonic() - start
        self.assertLess(elapsed, RECOVERY_SECONDS, f"served again {elapsed:.2f}s after relay restart")
        agent.wait_registered("www.orang.com", "http", start=mark)

    def start_bulk(self, links=1, extra=""):
        """Relay + agent (`links` links) publishing tcp service `bulk` to a data target."""
        self.target = self.h.data_target()
        self.relay = self.h.relay(relay_yaml(self.h, extra=extra), name="relay")
        self.agent = self.h.agent(agent_yaml(self.relay, f"""\
            - name: bulk
              kind: tcp
              target: {self.target.target()}
              port: 0""", links=links), name="agent")
        self.agent.wait_registered("bulk", "tcp")
        self.agent.wait_links_up(links)
        self.relay.wait_metric("rdv_links_active", lambda v: v == links)
        return self.relay.address("tcp:bulk")

    def test_slow_reader_does_not_stall_the_link(self):
        addr = self.start_bulk(links=1, extra="""\
            tcp:
              bind: ["127.0.0.1"]
            link:
              stream_window: 262144
            """)
        stalled_seed, total = 7001, 1 << 30
        stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        stalled.connect(addr)
        try:
            # Ask the target for 1 GiB and never read it.
            stalled.sendall(b"X 0 %d %d\n" % (total, stalled_seed))
            harness.wait_until(lambda: self.target.sent.get(stalled_seed, 0) >= MIB, 10,
                               "the stalled stream to start flowing")

            start = time.monotonic()
            harness.exchange(addr, 20 * MIB, 20 * MIB, seed=7002, timeout=60)
            elapsed = time.monotonic() - start
            self.assertLess(elapsed, 30, f"20 MiB each way took {elapsed:.1f}s next to a stalled "
                                         "stream")
            stuck_at = self.target.sent[stalled_seed]
            self.assertLess(stuck_at, 256 * MIB,
                            f"the relay/agent buffered {stuck_at} bytes for a reader that reads "
                            "nothing (no backpressure)")
            self.relay.wait_metric("rdv_streams_active", lambda v: v == 1)
            self.assertEqual(self.relay.metric("rdv_links_active"), 1)
        finally:
            stalled.close()
        self.relay.wait_metric("rdv_streams_active", lambda v: v == 0)

    @harness.slow
    def test_thousand_concurrent_streams(self):
        addr = self.start_bulk(links=2, extra="""\
            tcp:
              bind: ["127.0.0.1"]
            """)
        count, size = int(os.environ.get("RDV_STREAMS", 1000)), 64 * 1024
        target = self.target

        async def run():
            connect_slots = asyncio.Semaphore(100)
            go = asyncio.Event()

            async def stream(i):
                seed = 10_000 + i
                async with connect_slots:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), 30)
                try:
                    writer.write(b"X %d %d %d\n" % (size, size, seed))
                    await writer.drain()
                    await go.wait()

                    async def upload():
                        writer.write(harness.Pattern(harness.client_seed(seed)).read(size))
                        await writer.drain()

                    async def download():
                        data = await reader.readexactly(size + 32)
                        return data[:size], data[size:]
                    _, (down, trailer) = await asyncio.gather(upload(), download())
                    if hashlib.sha256(down).digest() != harness.pattern_digest(seed, size):
                        return f"stream {i}: target->client bytes differ"
                    if trailer != harness.pattern_digest(harness.client_seed(seed), size):
                        return f"stream {i}: client->target bytes differ"
                    return None
                finally:
                    writer.close()

            tasks = [asyncio.create_task(stream(i)) for i in range(count)]
            # No stream sends its payload before all of them reached the target at once.
            deadline = time.monotonic() + 60
            while (target.active < count and time.monotonic() < deadline
                   and not any(t.done() for t in tasks)):
                await asyncio.sleep(0.05)
            opened_at_once = target.active
            go.set()
            done, pending = await asyncio.wait(tasks, timeout=120)
            if pending:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                stuck = sorted(10_000 + tasks.index(t) for t in pending)
                progress = {s: target.sent.get(s) for s in stuck[:5]}
                raise AssertionError(
                    f"{len(pending)} of {count} streams unfinished after 120s "
                    f"({opened_at_once} were open at once; target has {target.active} open, "
                    f"peak {target.peak_active}, accepted {target.connections}); bytes the "
                    f"target wrote to the first stuck streams: {progress}")
            results = [t.exception() or t.result() for t in tasks]
            return opened_at_once, results

        opened_at_once, results = asyncio.run(run())
        errors = [r if isinstance(r, str) else repr(r) for r in results if r is not None]
        self.assertEqual(errors[:10], [], f"{len(errors)} of {count} streams failed")
        self.assertGreaterEqual(opened_at_once, count,
                                "the 1,000 streams never reached the target at the same time")
        self.assertGreaterEqual(self.relay.metric("rdv_streams_opened_total"), count)
        self.relay.wait_metric("rdv_streams_active", lambda v: v == 0, timeout=30)


if __name__ == "__main__":
    harness.main()
