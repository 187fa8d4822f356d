"""The `tunnel` phase of the benchmark (bench.py --only tunnel): an end-to-end pair against
OpenSSH through one middle sshd, on 127.0.0.1.

Two targets stand behind "site B": an iperf3 server and an echo server (hold_server.py). The
client in "site A" reaches them through:

  direct      the client connects straight to the target (the floor)
  rendezvous  client -> rdv-agent A (`connect:` plain port of pair bench-*) -> rdv-relay ->
              rdv-agent B (serves the pairs, connects to the target). The tunnel is end-to-end
              TLS 1.3 (PSK, TLS_AES_128_GCM_SHA256) on the relay's data path: one plain TCP
              connection from each agent, spliced by the relay, which forwards ciphertext only
              (docs/protocol.md "Tunnel data path").
  rendezvous_link  the same with `tunnel_data_path: false`: the tunnel's TLS inside the TLS
              links, decrypted and encrypted again by the relay (for reference; measured
              whenever rendezvous is).
  ssh         client -> `ssh -N -L` (site A) -> middle sshd -> the port that `ssh -N -R` (site B)
              exposes on the middle sshd -> ssh -R client -> the target. Both ssh clients use
              the cipher in RDV_BENCH_SSH_CIPHER (default aes128-gcm@openssh.com, the AEAD the
              tunnel's TLS uses too; OpenSSH's default is chacha20-poly1305@openssh.com, slower
              than AES-GCM on CPUs with AES-NI).

Every system is set up first, then the loads run interleaved (system after system, `--repeat`
rounds), so a change in the machine's background load hits all systems alike. Figures:

  tunnel_throughput_gbps  one TCP stream, iperf3 -t <duration> (the receiver's figure), median
                          over the rounds
  tunnel_setup_p50_ms,    connection setup: connect + a 1-byte round trip through the echo
  tunnel_setup_p90_ms     server + close, SAMPLES times in a row per round; median and 90th
                          percentile of all samples
  tunnel_cpu_s_per_gb     CPU time (user + system) the system's own processes (relay and both
                          agents; sshd with its session processes and both ssh clients) spent
                          per GB iperf3 carried, summed over the rounds: the cost of the
                          tunnel itself, which stays meaningful when other work on the machine
                          takes CPU away and throughput alone would mislead

bench.py adds `ratio <metric> rendezvous/ssh` and `rendezvous/direct` lines. The issue's targets:
throughput ratio >= 2, setup latency ratio <= 1; the phase logs whether they were met.
"""

import os
import re
import socket
import statistics
import time

SAMPLES = 200
QUICK_SAMPLES = 50
WARMUP = 5
PAIRS = ("bench-iperf", "bench-echo")
PAIR_SECRET = "bench pairing secret 0123456789abcdef"
SSH_CIPHER = os.environ.get("RDV_BENCH_SSH_CIPHER", "aes128-gcm@openssh.com")


def setup_latencies(m, port, count):
    """`count` sequential connect + 1-byte echo + close; returns the durations in ms."""
    out = []
    for i in range(count + WARMUP):
        t0 = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(b"x")
                got = s.recv(1)
        except OSError as e:
            raise m.BenchError(f"setup latency: connection {i + 1} to 127.0.0.1:{port}: {e}") from e
        dt = (time.perf_counter() - t0) * 1e3
        if got != b"x":
            raise m.BenchError(f"setup latency: connection {i + 1}: no echo (got {got!r})")
        if i >= WARMUP:
            out.append(dt)
    return out


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(roots):
    """User + system CPU seconds of the processes `roots` and all their descendants now alive."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            total += _cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        todo += children.get(pid, [])
    return total


def p90(values):
    return statistics.quantiles(values, n=10, method="inclusive")[8]


# ---------------------------------------------------------------------------------------------
# The systems: each returns {"iperf": port, "echo": port} on 127.0.0.1


def start_rendezvous(b, m, iperf, echo, data_path=True):
    rid = b.next_id("relay-tunnel")
    cfg = os.path.join(b.tmp, f"{rid}.yaml")
    with open(cfg, "w") as f:
        f.write(f"""relay_id: {rid}
state_dir: {b.tmp}/{rid}-state
workers: {b.args.threads}
log_level: info
tunnel_data_path: {"true" if data_path else "false"}
agent_listener:
  listen: ["127.0.0.1:0"]
admin:
  listen: ["127.0.0.1:0"]
credentials:
  - name: bench
    secret: "{m.SECRET}"
    grants: ["pair:*"]
""")
    p = m.Proc(b, rid, [b.relay_binary("rdv-relay"), "--config", cfg], watch=True)
    relay = {"proc": p}
    for role in ("agent", "admin"):
        relay[role] = m.split_addr(p.wait_line(rf"listening {role} (\S+)\s*$").group(1))
    relay["fingerprint"] = p.wait_line(r"fingerprint (sha256:[0-9a-f]{64})").group(1)
    secret_file = os.path.join(b.tmp, "pair.secret")
    with open(secret_file, "w") as f:
        f.write(PAIR_SECRET + "\n")
    host, port = relay["agent"]
    common = f"""relays: ["{host}:{port}"]
relay_fingerprint: "{relay['fingerprint']}"
credential:
  name: bench
  secret: "{m.SECRET}"
links: 1
log_level: info
"""
    # Site B: serves the pairs.
    bid = b.next_id("agent-b")
    targets = dict(zip(PAIRS, (iperf, echo)))
    with open(os.path.join(b.tmp, f"{bid}.yaml"), "w") as f:
        f.write(f"agent_id: bench-{bid}\n{common}services:\n" + "".join(
            f"""  - kind: pair
    name: {name}
    secret_file: {secret_file}
    target: "127.0.0.1:{target}"
""" for name, target in targets.items()))
    agent_b = m.Proc(b, bid, [b.relay_binary("rdv-agent"), "--config",
                              os.path.join(b.tmp, f"{bid}.yaml")], watch=True)
    for name in PAIRS:
        agent_b.wait_line(rf"registered pair {re.escape(name)}\b", fail=rf"refused pair {name}:")
    # Site A: one plain connect port per pair.
    aid = b.next_id("agent-a")
    ports = {name: m.free_port() for name in PAIRS}
    with open(os.path.join(b.tmp, f"{aid}.yaml"), "w") as f:
        f.write(f"agent_id: bench-{aid}\n{common}connect:\n" + "".join(
            f"""  - listen: 127.0.0.1:{port}
    pair: {name}
    secret_file: {secret_file}
""" for name, port in ports.items()))
    agent_a = m.Proc(b, aid, [b.relay_binary("rdv-agent"), "--config",
                              os.path.join(b.tmp, f"{aid}.yaml")], watch=True)
    for port in ports.values():
        agent_a.wait_listening(port)
    # One round trip proves the path end to end (and brings a lazily dialled tunnel up); then
    # both ends must have logged the tunnel up.
    setup_latencies(m, ports["bench-echo"], 1)
    for name in PAIRS:
        for agent in (agent_a, agent_b):
            agent.wait_line(rf"tunnel pair {re.escape(name)} up: ",
                            fail=rf"tunnel pair {re.escape(name)}: relay refused")
            if data_path:  # measure on the data path, not during the switch to it
                agent.wait_line(rf"tunnel pair {re.escape(name)}: data path up via ")
    return {"iperf": ports["bench-iperf"], "echo": ports["bench-echo"],
            "pids": [p.pid, agent_a.pid, agent_b.pid]}


def start_ssh(b, m, iperf, echo):
    sshd_port = b.ssh_setup()
    sshd = b.procs[-1]
    env = dict(os.environ, HOME=b.ssh_home)
    base = ["ssh", "-F", "/dev/null", "-N", "-c", SSH_CIPHER,
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
            "-i", b.ssh_key, "-p", str(sshd_port)]
    # Site B exposes its targets on the middle sshd...
    middle = {"iperf": m.free_port(), "echo": m.free_port()}
    remote = []
    for key, target in (("iperf", iperf), ("echo", echo)):
        remote += ["-R", f"127.0.0.1:{middle[key]}:127.0.0.1:{target}"]
    r = m.Proc(b, "ssh-R-siteB", base + remote + ["root@127.0.0.1"], env=env)
    for port in middle.values():
        r.wait_listening(port)
    # ...and site A forwards local ports to them through the same middle sshd.
    local = {"iperf": m.free_port(), "echo": m.free_port()}
    forwards = []
    for key in ("iperf", "echo"):
        forwards += ["-L", f"127.0.0.1:{local[key]}:127.0.0.1:{middle[key]}"]
    a = m.Proc(b, "ssh-L-siteA", base + forwards + ["root@127.0.0.1"], env=env)
    for port in local.values():
        a.wait_listening(port)
    setup_latencies(m, local["echo"], 1)
    # sshd forks a process per connection (and a privilege-separated child): count its tree.
    return dict(local, pids=[sshd.pid, r.pid, a.pid])


def phase(b, m):
    """Runs the phase on Bench `b`; `m` is bench.py's module (helpers and constants)."""
    systems = [s for s in b.args.systems if s in ("direct", "rendezvous", "ssh")]
    if "rendezvous" in systems:
        systems.insert(systems.index("rendezvous") + 1, "rendezvous_link")
    if not systems:
        m.log("tunnel: skipped (none of direct, rendezvous, ssh among --systems)")
        return
    iperf = b.start_iperf3_server()
    echo = b.start_hold_server()
    m.log(f"tunnel: ssh cipher {SSH_CIPHER}")

    entries = {}
    for system in systems:
        try:
            if system == "direct":
                entries[system] = {"iperf": iperf, "echo": echo}
            elif system == "rendezvous":
                entries[system] = start_rendezvous(b, m, iperf, echo)
            elif system == "rendezvous_link":
                entries[system] = start_rendezvous(b, m, iperf, echo, data_path=False)
            else:
                entries[system] = start_ssh(b, m, iperf, echo)
        except (m.BenchError, OSError) as e:
            m.log(f"FAILED tunnel {system} (setup): {e}")
            b.failures.append(f"tunnel {system}")

    samples = QUICK_SAMPLES if b.args.quick else SAMPLES
    gbps = {s: [] for s in entries}
    lat = {s: [] for s in entries}
    cpu = {s: 0.0 for s in entries}
    for round_ in range(b.args.repeat):
        for system in list(entries):
            try:
                pids = entries[system].get("pids", [])
                before = tree_cpu_seconds(pids)
                gbps[system].append(m.iperf3_gbps(entries[system]["iperf"], b.args.duration))
                cpu[system] += tree_cpu_seconds(pids) - before
                lat[system] += setup_latencies(m, entries[system]["echo"], samples)
            except (m.BenchError, OSError) as e:
                m.log(f"FAILED tunnel {system} (round {round_ + 1}): {e}")
                b.failures.append(f"tunnel {system}")
                del entries[system]
    for system in entries:
        b.emit("tunnel_throughput_gbps", system, statistics.median(gbps[system]), "Gbit/s")
        b.emit("tunnel_setup_p50_ms", system, statistics.median(lat[system]), "ms")
        b.emit("tunnel_setup_p90_ms", system, p90(lat[system]), "ms")
        if system != "direct":
            gigabytes = sum(gbps[system]) * b.args.duration / 8
            b.emit("tunnel_cpu_s_per_gb", system, cpu[system] / gigabytes, "s/GB")
    if "rendezvous" in entries and "ssh" in entries:
        t = statistics.median(gbps["rendezvous"]) / statistics.median(gbps["ssh"])
        l50 = statistics.median(lat["rendezvous"]) / statistics.median(lat["ssh"])
        m.log(f"tunnel: throughput rendezvous/ssh {t:.2f} (target >= 2: "
              f"{'met' if t >= 2 else 'MISSED'}); setup p50 rendezvous/ssh {l50:.2f} "
              f"(target <= 1: {'met' if l50 <= 1 else 'MISSED'})")
