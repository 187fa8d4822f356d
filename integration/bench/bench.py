#!/usr/bin/python3
"""Rendezvous benchmark harness (driven by integration/bench/run; see README.md).

Measures, on loopback only, single-stream throughput (iperf3), small-response HTTP rate and
latency (wrk against nginx) for direct / rendezvous / ssh -R / haproxy, and the relay's RSS
with many idle agent links and many open streams. Every process it needs it starts itself, in
its own session, and stops again; everything it writes goes into one temporary directory.

Result lines go to stdout (and integration/bench/results/latest.txt); progress goes to stderr.
"""

import argparse
import json
import math
import grp
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
PYTHON = "/usr/bin/python3"

SYSTEMS = ["direct", "rendezvous", "ssh", "haproxy"]
PHASES = ["throughput", "http", "rss", "sni", "smtp", "tunnel"]
RATIO_METRICS = ["throughput_gbps", "http_rps", "http_p50_ms", "http_p99_ms", "https_sni_rps",
                 "https_sni_conn_rps", "smtp_msgs", "tunnel_throughput_gbps", "tunnel_setup_p50_ms",
                 "tunnel_setup_p90_ms", "tunnel_cpu_s_per_gb"]
RATIO_PEERS = ["ssh", "haproxy", "direct"]

SECRET = "bench-secret-0123456789"
HTTP_HOST = "bench.local"
HTTP_PATH = "/small.txt"
# ~100-byte static body served by nginx for the HTTP figures.
HTTP_BODY = (b"rendezvous benchmark payload " * 4)[:99] + b"\n"

# Generous deadlines for conditions the harness polls; they only matter when something is broken.
START_TIMEOUT = 30.0
LINKS_TIMEOUT = 180.0


class BenchError(Exception):
    """A measurement could not be taken; the message says why."""


class Interrupted(BaseException):
    """Raised from the signal handler so that `finally` blocks run the cleanup."""


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def wait_until(cond, timeout, what, check=None, interval=0.05):
    """Polls cond() until it returns a true value or the deadline passes.

    check() is called between polls so that a dead process fails the wait at once
    instead of at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if check is not None:
            check()
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Ports and sockets


_handed_out_ports = set()


def free_port():
    """A currently unused loopback TCP port, never the same one twice in a run."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise BenchError("no free port")


def is_listening(port):
    """True when some socket listens on 127.0.0.1:port or 0.0.0.0:port.

    Reads /proc/net/tcp rather than connecting, so servers that react to a bare connect
    (iperf3 does) are not disturbed.
    """
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "0A" and fields[1] in wanted:
                return True
    return False


def split_addr(addr):
    """'127.0.0.1:7000' or '[::1]:7000' -> (host, port)."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def settled_rss_kib(pid, timeout=10.0):
    """RSS once it has stopped moving: the links or streams are idle, not still settling in.

    Samples every 0.25 s until five samples in a row (one second) are within 0.5% of each other
    (the relay returns memory freed by a burst of handshakes 0.2 s after it), or the timeout
    passes.
    """
    deadline = time.monotonic() + timeout
    samples = [rss_kib(pid)]
    while time.monotonic() < deadline:
        time.sleep(0.25)
        samples.append(rss_kib(pid))
        last = samples[-5:]
        if len(last) == 5 and max(last) - min(last) <= max(last) * 0.005:
            break
    return samples[-1]


# ---------------------------------------------------------------------------------------------
# Processes


class Proc:
    """A child process in its own session with its output in <tmp>/logs/<name>.log.

    With watch=True its stderr is also kept in memory line by line so that wait_line() can
    find the log lines the spec defines (relay and agent).
    """

    def __init__(self, bench, name, argv, watch=False, env=None):
        self.bench = bench
        self.name = name
        self.argv = argv
        self.logpath = os.path.join(bench.logdir, f"{name}.log")
        self.logfile = open(self.logpath, "ab", buffering=0)
        self.lines = []
        self.cond = threading.Condition()
        self.reader = None
        log(f"start {name}: {' '.join(argv)}")
        try:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self.logfile,
                stderr=subprocess.PIPE if watch else subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        except OSError as e:
            self.logfile.close()
            raise BenchError(f"cannot start {name}: {e}") from e
        bench.procs.append(self)
        if watch:
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()

    @property
    def pid(self):
        return self.popen.pid

    def _read(self):
        for raw in self.popen.stderr:
            self.logfile.write(raw)
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def tail(self, n=15):
        try:
            with open(self.logpath, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join("    " + l for l in text.splitlines()[-n:])

    def check(self):
        rc = self.popen.poll()
        if rc is not None:
            raise BenchError(f"{self.name} exited with status {rc}; end of {self.logpath}:\n{self.tail()}")

    def wait_line(self, pattern, timeout=START_TIMEOUT, fail=None):
        """First match of pattern among all stderr lines so far or to come.

        A line matching fail (if given) ends the wait with an error.
        """
        rx = re.compile(pattern)
        frx = re.compile(fail) if fail else None
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                    if frx and frx.search(line):
                        raise BenchError(f"{self.name}: {line}")
                seen = len(self.lines)
                if self.popen.poll() is not None and (self.reader is None or not self.reader.is_alive()):
                    self.check()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(
                        f"timed out after {timeout:.0f}s waiting for /{pattern}/ from {self.name}; "
                        f"end of {self.logpath}:\n{self.tail()}"
                    )
                self.cond.wait(min(left, 0.2))

    def wait_listening(self, port, timeout=START_TIMEOUT):
        wait_until(lambda: is_listening(port), timeout, f"{self.name} to listen on 127.0.0.1:{port}",
                   check=self.check)

    def stop(self, timeout=10.0):
        """SIGTERM to the child's process group, SIGKILL if it does not go in time."""
        if self in self.bench.procs:
            self.bench.procs.remove(self)
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for {timeout:.0f}s; killing it")
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait()
        # Whatever the leader left behind in its group goes too.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.reader is not None:
            self.reader.join(5)
        self.logfile.close()
        return self.popen.returncode


def run_tool(argv, timeout, what):
    """Runs a load generator to completion; returns its stdout."""
    log(f"run {what}: {' '.join(argv)}")
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{what} did not finish in {timeout:.0f}s") from e
    if r.returncode != 0:
        raise BenchError(f"{what} failed with status {r.returncode}: {(r.stderr or r.stdout).strip()[-2000:]}")
    return r.stdout


# ---------------------------------------------------------------------------------------------
# Load generators


def iperf3_gbps(port, secs):
    out = subprocess.run(
        ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(secs), "-J"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=secs + 60,
    )
    log(f"ran iperf3 -c 127.0.0.1 -p {port} -t {secs} -J (status {out.returncode})")
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError as e:
        raise BenchError(f"iperf3 gave no JSON (status {out.returncode}): {out.stderr.strip()[-500:]}") from e
    if data.get("error"):
        raise BenchError(f"iperf3: {data['error']}")
    try:
        bps = data["end"]["sum_received"]["bits_per_second"]
    except KeyError as e:
        raise BenchError("iperf3 JSON has no end.sum_received.bits_per_second") from e
    return bps / 1e9


_LAT_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _wrk_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not m:
        raise BenchError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _LAT_UNITS[m.group(2)]


def wrk(url, secs, host=None):
    """wrk -t2 -c50 --latency; returns (req/s, p50 ms, p99 ms)."""
    argv = ["wrk", "-t2", "-c50", f"-d{secs}s", "--latency"]
    if host:
        argv += ["-H", f"Host: {host}"]
    argv.append(url)
    out = run_tool(argv, secs + 60, "wrk")
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", out, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in", out, re.M)
    if not (rps and p50 and p99 and total):
        raise BenchError(f"cannot parse wrk output:\n{out}")
    requests = int(total.group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    if errors:
        log(f"wrk: {errors.group(0)}")
    if bad:
        n = int(bad.group(1))
        log(f"wrk: {n} of {requests} responses were not 2xx/3xx")
        if n * 100 > requests:
            raise BenchError(f"{n} of {requests} responses were errors; the figure would measure error pages")
    if requests == 0:
        raise BenchError("wrk completed no request")
    return float(rps.group(1)), _wrk_ms(p50.group(1)), _wrk_ms(p99.group(1))


def http_get(port, host=None, timeout=10.0):
    """One GET of the small file; raises unless it is a 200 with the expected body."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{HTTP_PATH}")
    if host:
        req.add_header("Host", host)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            body = resp.read()
            status = resp.status
    except Exception as e:  # urllib raises a zoo of exception types
        raise BenchError(f"GET {req.full_url} (Host: {host or '127.0.0.1'}) failed: {e}") from e
    if status != 200 or body != HTTP_BODY:
        raise BenchError(f"GET {req.full_url}: status {status}, {len(body)}-byte body differs from the file")


# ---------------------------------------------------------------------------------------------
# The harness


class Bench:
    def __init__(self, args, tmp, build_dir):
        self.args = args
        self.tmp = tmp
        self.build_dir = build_dir
        self.logdir = os.path.join(tmp, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.procs = []
        self.results = []  # (metric, system, value, unit)
        self.failures = []
        self.seq = 0

    # -- bookkeeping ----------------------------------------------------------------------

    def next_id(self, prefix):
        self.seq += 1
        return f"{prefix}-{self.seq}"

    def emit(self, metric, system, value, unit):
        self.results.append((metric, system, value, unit))
        print(f"{metric} {system} {fmt(metric, value)} {unit}", flush=True)

    def stop_all(self):
        # Clients before servers: the reverse of the order they were started in.
        for p in reversed(list(self.procs)):
            try:
                p.stop(timeout=5)
            except Exception as e:  # keep cleaning up the rest
                log(f"stopping {p.name}: {e}")

    def measure(self, what, fn):
        """Runs one measurement; a failure is reported and the run goes on with the next one."""
        started = len(self.procs)
        try:
            fn()
        except (BenchError, OSError) as e:
            log(f"FAILED {what}: {e}")
            self.failures.append(what)
        finally:
            for p in reversed(self.procs[started:]):
                p.stop()

    # -- backends -------------------------------------------------------------------------

    def start_iperf3_server(self):
        port = free_port()
        p = Proc(self, "iperf3-server", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)])
        p.wait_listening(port)
        return port

    def start_nginx(self):
        d = os.path.join(self.tmp, "nginx")
        www = os.path.join(d, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, HTTP_PATH.lstrip("/")), "wb") as f:
            f.write(HTTP_BODY)
        # Started as root, nginx would drop its worker to `nobody`, which cannot enter the
        # private temp dir; keep the worker as the user running the harness instead.
        user = ""
        if os.geteuid() == 0:
            user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
        port = free_port()
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""{user}daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} default_server;
        server_name _;
        root {www};
    }}
}}
""")
        p = Proc(self, "nginx", ["nginx", "-p", d + "/", "-e", f"{d}/error.log", "-c", conf])
        p.wait_listening(port)
        http_get(port)
        return port

    def start_hold_server(self):
        port = free_port()
        p = Proc(self, "hold-server", [PYTHON, os.path.join(HERE, "hold_server.py"), str(port)])
        p.wait_listening(port)
        return port

    # -- systems: each returns the loopback port a client uses to reach `target` -----------

    def haproxy(self, mode, target, send_proxy=False):
        """One plain hop; with `send_proxy` it opens each server connection with a PROXY v2 header."""
        port = free_port()
        cfg = os.path.join(self.tmp, f"{self.next_id('haproxy')}.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
    nbthread {self.args.threads}
    maxconn 4096

defaults
    mode {mode}
    timeout connect 5s
    timeout client 1m
    timeout server 1m

listen bench
    bind 127.0.0.1:{port}
    server target 127.0.0.1:{target}{" send-proxy-v2" if send_proxy else ""}
""")
        p = Proc(self, f"haproxy-{mode}", ["haproxy", "-db", "-f", cfg])
        p.wait_listening(port)
        return port

    def ssh_setup(self):
        """A private sshd (own host key, own authorized_keys) on a free port; returns its port."""
        d = os.path.join(self.tmp, "ssh")
        home = os.path.join(d, "home")
        os.makedirs(os.path.join(home, ".ssh"), exist_ok=True)
        host_key = os.path.join(d, "ssh_host_ed25519_key")
        self.ssh_key = os.path.join(home, ".ssh", "id_ed25519")
        self.ssh_home = home
        for key in (host_key, self.ssh_key):
            if not os.path.exists(key):
                run_tool(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rdv-bench", "-f", key], 30,
                         "ssh-keygen")
        authorized = os.path.join(home, ".ssh", "authorized_keys")
        shutil.copyfile(self.ssh_key + ".pub", authorized)
        port = free_port()
        cfg = os.path.join(d, "sshd_config")
        with open(cfg, "w") as f:
            f.write(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile none
AuthorizedKeysFile {authorized}
StrictModes no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowTcpForwarding yes
GatewayPorts no
MaxSessions 100
MaxStartups 100
LogLevel INFO
""")
        # sshd refuses to start without its privilege-separation directory; the Debian service
        # creates it at boot, which a container may never have done.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        run_tool([sshd, "-t", "-f", cfg], 30, "sshd -t")
        p = Proc(self, "sshd", [sshd, "-D", "-e", "-f", cfg])
        p.wait_listening(port)
        return port

    def ssh(self, target):
        sshd_port = self.ssh_setup()
        port = free_port()
        env = dict(os.environ, HOME=self.ssh_home)
        p = Proc(self, "ssh-R", [
            "ssh", "-F", "/dev/null", "-N", "-R", f"{port}:127.0.0.1:{target}",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
            "-i", self.ssh_key, "-p", str(sshd_port), "root@127.0.0.1",
        ], env=env)
        p.wait_listening(port)  # sshd binds the -R port once the client's request is granted
        return port

    # -- rendezvous -----------------------------------------------------------------------

    def relay_binary(self, name):
        path = os.path.join(self.build_dir, name.split("-")[1], name)
        if not os.access(path, os.X_OK):
            raise BenchError(f"{path} does not exist (build failed or RDV_BUILD_DIR is wrong)")
        return path

    def start_relay(self, max_links=64):
        rid = self.next_id("relay")
        cfg = os.path.join(self.tmp, f"{rid}.yaml")
        with open(cfg, "w") as f:
            f.write(f"""relay_id: {rid}
state_dir: {self.tmp}/{rid}-state
workers: {self.args.threads}
log_level: info
agent_listener:
  listen: ["127.0.0.1:0"]
http:
  listen: ["127.0.0.1:0"]
tcp:
  bind: ["127.0.0.1"]
admin:
  listen: ["127.0.0.1:0"]
credentials:
  - name: bench
    secret: "{SECRET}"
    grants: ["http:{HTTP_HOST}", "tcp:1-65535", "tcp:*"]
    max_links: {max_links}
""")
        p = Proc(self, rid, [self.relay_binary("rdv-relay"), "--config", cfg], watch=True)
        relay = {"proc": p}
        for role in ("agent", "http", "admin"):
            relay[role] = split_addr(p.wait_line(rf"listening {role} (\S+)\s*$").group(1))
        relay["fingerprint"] = p.wait_line(r"fingerprint (sha256:[0-9a-f]{64})").group(1)
        return relay

    def start_agent(self, relay, services, links=2):
        """services: list of (kind, name, target_port). Waits until every one is registered."""
        aid = self.next_id("agent")
        cfg = os.path.join(self.tmp, f"{aid}.yaml")
        host, port = relay["agent"]
        svc = "".join(
            f"""  - name: {name}
    kind: {kind}
    target: "127.0.0.1:{target}"
""" for kind, name, target in services)
        with open(cfg, "w") as f:
            f.write(f"""agent_id: bench-{aid}
relays: ["{host}:{port}"]
relay_fingerprint: "{relay['fingerprint']}"
credential:
  name: bench
  secret: "{SECRET}"
links: {links}
log_level: info
services:
{svc}""")
        p = Proc(self, aid, [self.relay_binary("rdv-agent"), "--config", cfg], watch=True)
        for kind, name, _ in services:
            p.wait_line(rf"registered {kind} {re.escape(name)}\b", fail=rf"refused {kind} {re.escape(name)}:")
        return p

    def relay_tcp_port(self, relay, service):
        return split_addr(relay["proc"].wait_line(rf"listening tcp:{re.escape(service)} (\S+)\s*$").group(1))[1]

    def metric(self, relay, name):
        """Sum of all samples of `name` on the relay's /metrics."""
        host, port = relay["admin"]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://{host}:{port}/metrics", timeout=10) as resp:
                text = resp.read().decode()
        except Exception as e:
            raise BenchError(f"GET /metrics failed: {e}") from e
        total, found = 0.0, False
        for m in re.finditer(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)", text, re.M):
            total += float(m.group(1))
            found = True
        return total if found else None

    def wait_metric(self, relay, name, target, timeout, procs=()):
        def check():
            relay["proc"].check()
            for p in procs:
                p.check()
        last = [None]

        def reached():
            last[0] = self.metric(relay, name)
            return last[0] is not None and last[0] >= target
        try:
            wait_until(reached, timeout, f"{name} >= {target}", check=check, interval=0.1)
        except BenchError as e:
            raise BenchError(f"{e} (last value {last[0]})") from None

    def rendezvous(self, kind, target):
        """relay + agent publishing one service; returns the client-side port on the relay."""
        relay = self.start_relay()
        if kind == "tcp":
            agent = self.start_agent(relay, [("tcp", "bench", target)])
            port = self.relay_tcp_port(relay, "bench")
        else:
            agent = self.start_agent(relay, [("http", HTTP_HOST, target)])
            port = relay["http"][1]
        self.wait_metric(relay, "rdv_links_active", 2, START_TIMEOUT, procs=[agent])
        return port

    # -- phases ---------------------------------------------------------------------------

    def entry(self, system, kind, target):
        if system == "direct":
            return target
        if system == "rendezvous":
            return self.rendezvous(kind, target)
        if system == "ssh":
            return self.ssh(target)
        if system == "haproxy":
            return self.haproxy(kind, target)
        raise AssertionError(system)

    def phase_throughput(self):
        server = self.start_iperf3_server()
        for system in self.args.systems:
            def one(system=system):
                port = self.entry(system, "tcp", server)
                runs = [iperf3_gbps(port, self.args.duration) for _ in range(self.args.repeat)]
                self.emit("throughput_gbps", system, statistics.median(runs), "Gbit/s")
            self.measure(f"throughput {system}", one)

    def phase_http(self):
        nginx = self.start_nginx()
        for system in self.args.systems:
            def one(system=system):
                port = self.entry(system, "http", nginx)
                host = HTTP_HOST if system == "rendezvous" else None
                http_get(port, host)
                runs = [wrk(f"http://127.0.0.1:{port}{HTTP_PATH}", self.args.duration, host)
                        for _ in range(self.args.repeat)]
                self.emit("http_rps", system, statistics.median(r[0] for r in runs), "req/s")
                self.emit("http_p50_ms", system, statistics.median(r[1] for r in runs), "ms")
                self.emit("http_p99_ms", system, statistics.median(r[2] for r in runs), "ms")
            self.measure(f"http {system}", one)

    def phase_sni(self):
        # HTTPS routed by SNI (TLS passthrough): see bench_sni.py.
        import bench_sni
        bench_sni.phase_sni(self, sys.modules[__name__])

    def phase_smtp(self):
        import bench_smtp  # integration/bench/bench_smtp.py: Postfix direct vs through the relay
        bench_smtp.phase(self, sys.modules[__name__])

    def phase_tunnel(self):
        # An end-to-end pair against OpenSSH through a middle sshd: see bench_tunnel.py.
        import bench_tunnel
        bench_tunnel.phase(self, sys.modules[__name__])

    def phase_rss(self):
        if "rendezvous" not in self.args.systems:
            log("rss: skipped (rendezvous is not among --systems)")
            return
        hold = self.start_hold_server()
        self.measure("rss idle links", lambda: self.rss_links(hold))
        self.measure("rss streams", lambda: self.rss_streams(hold))

    def rss_links(self, hold):
        links = self.args.links
        per_agent = self.args.links_per_agent
        relay = self.start_relay(max_links=links + 16)
        before = rss_kib(relay["proc"].pid)
        t0 = time.monotonic()
        agents, left, i = [], links, 0
        while left > 0:
            n = min(per_agent, left)
            i += 1
            # Distinct service names: several agents may not share one tcp service name.
            agents.append(self.start_agent(relay, [("tcp", f"idle-{i}", hold)], links=n))
            left -= n
        self.wait_metric(relay, "rdv_links_active", links, LINKS_TIMEOUT, procs=agents)
        after = settled_rss_kib(relay["proc"].pid)
        log(f"rss: {links} links up in {time.monotonic() - t0:.1f}s with {len(agents)} agent(s); "
            f"relay RSS {before} -> {after} KiB")
        self.emit("relay_rss_base_kib", "rendezvous", before, "KiB")
        self.emit("relay_rss_links_kib", "rendezvous", after, "KiB")
        self.emit("relay_rss_idle_link_kib", "rendezvous", (after - before) / links, "KiB")

    def rss_streams(self, hold):
        n = self.args.streams
        relay = self.start_relay()
        agent = self.start_agent(relay, [("tcp", "hold", hold)])
        port = self.relay_tcp_port(relay, "hold")
        self.wait_metric(relay, "rdv_links_active", 2, START_TIMEOUT, procs=[agent])
        # The echoed byte proves each stream reached the target; the gauge, when the relay
        # exports it, additionally proves the relay still counts them all as open.
        gauge = self.metric(relay, "rdv_streams_active") is not None
        if not gauge:
            log("rss: relay exports no rdv_streams_active; relying on the echoes alone")
        # One stream end to end first, so one-time setup is not charged to the 1,000.
        self.hold_streams(port, 1).pop().close()
        if gauge:
            wait_until(lambda: self.metric(relay, "rdv_streams_active") == 0, START_TIMEOUT,
                       "rdv_streams_active == 0", check=relay["proc"].check)
        before = rss_kib(relay["proc"].pid)
        socks = self.hold_streams(port, n)
        try:
            if gauge:
                self.wait_metric(relay, "rdv_streams_active", n, START_TIMEOUT, procs=[agent])
            after = rss_kib(relay["proc"].pid)
        finally:
            for s in socks:
                s.close()
        log(f"rss: {n} streams open; relay RSS {before} -> {after} KiB")
        self.emit("relay_rss_streams_kib", "rendezvous", after, "KiB")
        self.emit("relay_rss_stream_kib", "rendezvous", (after - before) / n, "KiB")

    def hold_streams(self, port, n):
        """n client connections through the relay, each proven end to end by an echoed byte."""
        socks = []
        try:
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", port), timeout=START_TIMEOUT)
                socks.append(s)
                s.sendall(b"x")
            deadline = time.monotonic() + START_TIMEOUT
            for i, s in enumerate(socks):
                s.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    got = s.recv(1)
                except socket.timeout:
                    raise BenchError(f"stream {i + 1} of {n}: no echo from the target in time") from None
                if got != b"x":
                    raise BenchError(f"stream {i + 1} of {n}: closed before the target echoed")
            return socks
        except BaseException as e:
            for s in socks:
                s.close()
            if isinstance(e, OSError):
                raise BenchError(f"stream {len(socks)} of {n}: {e}") from e
            raise

    def run(self):
        for phase in PHASES:
            if phase in self.args.only:
                log(f"phase {phase}")
                started = len(self.procs)
                try:
                    getattr(self, f"phase_{phase}")()
                except (BenchError, OSError) as e:
                    log(f"FAILED {phase}: {e}")
                    self.failures.append(phase)
                finally:
                    for p in reversed(self.procs[started:]):
                        p.stop()
        return self.ratio_lines()

    def ratio_lines(self):
        values = {(m, s): v for m, s, v, _ in self.results}
        lines = []
        for metric in RATIO_METRICS:
            ours = values.get((metric, "rendezvous"))
            for peer in RATIO_PEERS:
                theirs = values.get((metric, peer))
                if ours is None or not theirs:
                    continue
                lines.append(f"ratio {metric} rendezvous/{peer} {ours / theirs:.2f}")
        return lines


def warn_if_busy():
    """The figures assume an otherwise idle machine; say so when it is not.

    Samples CPU use over half a second (the load average would still show the build that
    just ran).
    """
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    t0, i0 = sample()
    time.sleep(0.5)
    t1, i1 = sample()
    busy = 1.0 - (i1 - i0) / max(1, t1 - t0)
    cores = os.cpu_count() or 1
    if busy > 0.25:
        log(f"WARNING: {busy:.0%} of {cores} cores busy before the run; other work on this machine "
            "competes for the CPU and the figures will be noisy")


def fmt(metric, value):
    if metric.endswith("_rps"):
        return f"{value:.0f}"
    if metric.endswith("_kib") and float(value).is_integer():
        return f"{value:.0f}"
    if metric.endswith("_kib"):
        return f"{value:.1f}"
    return f"{value:.2f}"


# ---------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="integration/bench/run",
        description="Benchmarks Rendezvous against direct, ssh -R and haproxy on loopback.")
    ap.add_argument("--quick", action="store_true", help="2-second runs instead of 10 (smoke test)")
    ap.add_argument("--only", default=",".join(PHASES),
                    help="comma-separated subset of: throughput, http, rss, sni, smtp, tunnel "
                         "(default: all)")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help="comma-separated subset of: direct, rendezvous, ssh, haproxy (default: all)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each throughput/HTTP/tunnel load N times against the same setup, "
                         "report the median")
    ap.add_argument("--threads", type=int, default=1,
                    help="relay `workers` and haproxy `nbthread` (default 1, see README)")
    ap.add_argument("--links", type=int, default=1000, help="idle agent links for the RSS figure")
    ap.add_argument("--links-per-agent", type=int, default=1000,
                    help="links per rdv-agent (spec allows 1..1024); more agents are started as needed")
    ap.add_argument("--streams", type=int, default=1000, help="open streams for the RSS figure")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs) and print its path")
    args = ap.parse_args(argv)
    args.only = [x for x in args.only.split(",") if x]
    args.systems = [x for x in args.systems.split(",") if x]
    for x in args.only:
        if x not in PHASES:
            ap.error(f"--only: unknown phase {x!r}")
    for x in args.systems:
        if x not in SYSTEMS:
            ap.error(f"--systems: unknown system {x!r}")
    args.systems = [s for s in SYSTEMS if s in args.systems]
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    if not 1 <= args.links_per_agent <= 1024:
        ap.error("--links-per-agent must be in 1..1024")
    args.duration = 2 if args.quick else 10
    return args


def prepare(args):
    """Dependencies and the Release build; returns the build dir (None if not needed)."""
    deps = os.path.join(ROOT, "scripts", "install-deps.sh")
    log(f"{deps} --bench")
    r = subprocess.run([deps, "--bench"], stdout=sys.stderr, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise BenchError(f"install-deps.sh --bench failed with status {r.returncode}")
    need = "rendezvous" in args.systems and any(p in args.only for p in PHASES)
    if not need:
        return None
    env_dir = os.environ.get("RDV_BUILD_DIR")
    if env_dir:
        if not os.path.isdir(env_dir):
            raise BenchError(f"RDV_BUILD_DIR={env_dir} is not a directory")
        log(f"using the existing build in {env_dir}")
        return os.path.abspath(env_dir)
    build = os.path.join(ROOT, "build-bench")
    for argv in (["cmake", "-S", ROOT, "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release"],
                 ["ninja", "-C", build, "rdv-relay", "rdv-agent"]):
        log(" ".join(argv))
        r = subprocess.run(argv, stdout=sys.stderr, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise BenchError(f"build failed: {' '.join(argv)} exited with {r.returncode}")
    return build


def main(argv):
    args = parse_args(argv)

    def on_signal(signum, _frame):
        # Later signals must not interrupt the cleanup the first one starts.
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    # 1,000 links or streams need a few thousand descriptors here and in the children.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    base = os.environ.get("RDV_BENCH_TMP")
    tmp = tempfile.mkdtemp(prefix="work.", dir=base if base else "/tmp")
    bench = None
    try:
        build = prepare(args)
        log(f"temp dir {tmp}; {os.cpu_count()} cores; runs of {args.duration}s")
        warn_if_busy()
        bench = Bench(args, tmp, build)
        ratios = bench.run()
        for line in ratios:
            print(line, flush=True)
        lines = [f"{m} {s} {fmt(m, v)} {u}" for m, s, v, u in bench.results] + ratios
        results = os.path.join(HERE, "results")
        os.makedirs(results, exist_ok=True)
        with open(os.path.join(results, "latest.txt"), "w") as f:
            f.write("".join(l + "\n" for l in lines))
        if bench.failures:
            log(f"failed: {', '.join(bench.failures)}")
            return 1
        return 0
    except (BenchError, OSError) as e:
        log(f"error: {e}")
        return 2
    except Interrupted as e:
        log(f"interrupted by signal {e.args[0]}; cleaning up")
        return 128 + e.args[0]
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        if bench is not None:
            bench.stop_all()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
