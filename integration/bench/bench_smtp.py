"""SMTP phase of the benchmark (`integration/bench/run --only smtp`): messages per second into one
real Postfix, directly and through the relay's smtp entrypoint (relay + agent, TLS link, PROXY
protocol v2 to Postfix). For scale, also through HAProxy as one plain `mode tcp` hop with
`send-proxy-v2` into the same Postfix listener: the cost of any user-space proxy in the path, which
routes nothing.

Load: CONNECTIONS client processes (Python smtplib, one process each so the client is not one
GIL), each sending messages one after the other for the run's duration (10 s, 2 s with --quick),
one SMTP connection per message (connect, EHLO, MAIL, RCPT, DATA with a ~1 KiB message, QUIT) --
the relay routes every connection afresh, as it would for mail from the Internet. Postfix accepts
into its queue and discards (virtual_transport = discard), so delivery work does not compete with
the relay for the CPU. Figure: messages whose DATA got 250, divided by the wall time from the start
until the last sender finished its last message. Any refused message fails the run.

Prints `smtp_msgs <system> <value> msg/s`; bench.py adds `ratio smtp_msgs rendezvous/direct` (the
issue's target) and `rendezvous/haproxy`.
"""

import multiprocessing
import os
import signal
import smtplib
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # integration/: test_smtp's Postfix helper

DOMAIN = "bench.test"
CONNECTIONS = 8
WARMUP_MESSAGES = 2
BODY = ("Subject: bench\r\n\r\n" + ("rendezvous smtp benchmark line of text...\r\n" * 24))


def _sender_init():
    # bench.py's signal handlers are for its own cleanup, not for the pool's workers.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def _send_one(port):
    """One message on its own connection; True when DATA got 250 (sendmail raises otherwise)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("bench.client")
        return not client.sendmail("sender@client.test", [f"user@{DOMAIN}"], BODY)


def _sender(args):
    """Sends until `deadline` (time.monotonic(), the same clock in every process); returns
    (accepted, refused)."""
    port, deadline = args
    accepted = refused = 0
    while time.monotonic() < deadline:
        try:
            if _send_one(port):
                accepted += 1
            else:
                refused += 1
        except (smtplib.SMTPException, OSError):
            refused += 1
    return accepted, refused


def messages_per_second(port, seconds, connections=CONNECTIONS):
    for _ in range(WARMUP_MESSAGES):  # routing, Postfix processes
        _send_one(port)
    with multiprocessing.get_context("fork").Pool(connections, initializer=_sender_init) as pool:
        started = time.monotonic()
        results = pool.map(_sender, [(port, started + seconds)] * connections)
        elapsed = time.monotonic() - started
    accepted = sum(a for a, _ in results)
    refused = sum(r for _, r in results)
    if refused:
        raise RuntimeError(f"{refused} of {accepted + refused} messages were not accepted")
    return accepted / elapsed


def phase(bench, mod):
    """Runs the phase inside bench.py's Bench `bench`; `mod` is bench.py's module."""
    from test_smtp import Postfix

    try:
        postfix = Postfix("bench", DOMAIN, [], direct_listener=True, settings={
            "virtual_mailbox_maps": f"static:{DOMAIN}/user/",
            "virtual_transport": "discard:",
            "smtpd_client_connection_count_limit": "0",
            "default_process_limit": "200",
        })
    except (AssertionError, OSError, Exception) as e:  # noqa: B014 - any setup failure
        raise mod.BenchError(f"postfix: {e}") from e
    try:
        for system in bench.args.systems:
            if system not in ("direct", "rendezvous", "haproxy"):
                continue

            def one(system=system):
                if system == "direct":
                    port = postfix.direct_port
                elif system == "haproxy":
                    port = bench.haproxy("tcp", postfix.port, send_proxy=True)
                else:
                    port = start_rendezvous(bench, mod, postfix.port)
                runs = [messages_per_second(port, bench.args.duration) for _ in range(bench.args.repeat)]
                runs.sort()
                bench.emit("smtp_msgs", system, runs[len(runs) // 2], "msg/s")
            bench.measure(f"smtp {system}", one)
    finally:
        postfix.stop()


def start_rendezvous(bench, mod, postfix_port):
    """relay with an smtp entrypoint + one agent registering DOMAIN; returns the relay smtp port."""
    rid = bench.next_id("relay")
    cfg = os.path.join(bench.tmp, f"{rid}.yaml")
    with open(cfg, "w") as f:
        f.write(f"""relay_id: {rid}
state_dir: {bench.tmp}/{rid}-state
workers: {bench.args.threads}
log_level: info
agent_listener:
  listen: ["127.0.0.1:0"]
smtp:
  listen: ["127.0.0.1:0"]
  hostname: mx.bench.test
admin:
  listen: ["127.0.0.1:0"]
credentials:
  - name: bench
    secret: "{mod.SECRET}"
    grants: ["smtp:{DOMAIN}"]
""")
    p = mod.Proc(bench, rid, [bench.relay_binary("rdv-relay"), "--config", cfg], watch=True)
    relay = {"proc": p}
    for role in ("agent", "smtp", "admin"):
        relay[role] = mod.split_addr(p.wait_line(rf"listening {role} (\S+)\s*$").group(1))
    relay["fingerprint"] = p.wait_line(r"fingerprint (sha256:[0-9a-f]{64})").group(1)
    aid = bench.next_id("agent")
    acfg = os.path.join(bench.tmp, f"{aid}.yaml")
    host, port = relay["agent"]
    with open(acfg, "w") as f:
        f.write(f"""agent_id: bench-{aid}
relays: ["{host}:{port}"]
relay_fingerprint: "{relay['fingerprint']}"
credential:
  name: bench
  secret: "{mod.SECRET}"
links: 2
log_level: info
services:
  - name: {DOMAIN}
    kind: smtp
    target: "127.0.0.1:{postfix_port}"
    proxy_protocol: v2
""")
    agent = mod.Proc(bench, aid, [bench.relay_binary("rdv-agent"), "--config", acfg], watch=True)
    agent.wait_line(rf"registered smtp {DOMAIN}\b", fail=rf"refused smtp {DOMAIN}:")
    bench.wait_metric(relay, "rdv_links_active", 2, mod.START_TIMEOUT, procs=[agent])
    return relay["smtp"][1]
