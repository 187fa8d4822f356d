"""End-to-end harness: drives the real rdv-relay / rdv-agent binaries and real peers.

A test writes each binary's YAML inline, starts the processes through a `Harness`, learns the ports the
relay bound from its log (`listening <role> <addr>`, `fingerprint sha256:<hex>`), drives real clients
(curl, sockets, python websockets) and asserts on responses and on the relay's `/metrics`.

Synchronisation is always on an event: a log line, a counter reaching a value, a port accepting. Waits
poll with a deadline; there are no fixed sleeps. Every process a harness starts is torn down by
`Harness.close()` (also when the test failed); a relay or agent must exit 0 on SIGTERM, and one that
died on its own is reported as a failure.

Scripts call `harness.main()`, which runs the module's unittest cases and ends with the line
`N passed, N failed` (exit status non-zero on any failure).
"""

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
import urllib.request

BUILD_DIR = os.environ.get(
    "RDV_BUILD", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build"))

# A 1,000-stream test needs a few thousand descriptors in this process and in the children (which
# inherit the limit).
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _hard == resource.RLIM_INFINITY or _hard > 65536:
    _hard = 65536
if _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))

# log_level for the binaries under test (RDV_LOG_LEVEL=debug when chasing a failure).
LOG_LEVEL = os.environ.get("RDV_LOG_LEVEL", "info")

# Anything a test starts must not go through an environment proxy.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def relay_binary():
    return os.path.join(BUILD_DIR, "relay", "rdv-relay")


def agent_binary():
    return os.path.join(BUILD_DIR, "agent", "rdv-agent")


# ---------------------------------------------------------------------------------------------------
# Waiting


def wait_until(predicate, timeout, what, interval=0.02):
    """Polls `predicate` until it returns a truthy value (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def yaml_block(text, indent):
    """Re-indents a YAML fragment written inline (any indentation) to `indent` spaces."""
    return textwrap.indent(textwrap.dedent(text).strip("\n"), " " * indent)


def log_message(pattern):
    """Regex for a log message whose text (after the logger's time/level prefix) starts with
    `pattern`; the prefix format is not part of the contract, only the message text."""
    return r"(?:^|[\s\]])" + pattern


# ---------------------------------------------------------------------------------------------------
# Ports and addresses


def free_port(host="127.0.0.1"):
    """A port that was free a moment ago (for peers that cannot report the port they bound)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_free(port, hosts=("127.0.0.1", "::1")):
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port_range(count, hosts=("127.0.0.1", "::1")):
    """`count` consecutive free ports below the ephemeral range (so port-0 binds do not take them)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - count)
        if all(_port_free(p, hosts) for p in range(base, base + count)):
            return base, base + count - 1
    raise AssertionError(f"no {count} consecutive free ports found")


def parse_addr(text):
    """`127.0.0.1:7000` / `[::1]:7000` -> (host, port)."""
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not m:
        raise ValueError(f"not an address: {text!r}")
    if m.group(1) is not None:
        return m.group(1), int(m.group(2))
    return m.group(3), int(m.group(4))


def format_addr(addr):
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect(addr, timeout=10):
    return socket.create_connection(addr, timeout=timeout)


# ---------------------------------------------------------------------------------------------------
# Processes


class Process:
    """A child process whose combined stdout/stderr is captured line by line (and into a log file)."""

    def __init__(self, name, argv, log_path, cwd=None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.lines = []
        self.eof = False
        self.returncode = None
        # Set once the test has collected the exit status itself (stop(), kill(), wait()).
        self.reaped = False
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name=f"log-{name}", daemon=True)
        self._reader.start()

    def _read(self):
        with open(self.log_path, "a", encoding="utf-8") as log:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                log.write(line + "\n")
                log.flush()
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    # -- log lines -------------------------------------------------------------------------------

    def mark(self):
        """Index of the next log line; pass as `start` to wait for lines logged after this point."""
        with self._cond:
            return len(self.lines)

    def find(self, pattern, start=0):
        """All matches of `pattern` in lines logged so far (from index `start`)."""
        regex = re.compile(pattern)
        with self._cond:
            lines = self.lines[start:]
        return [m for m in (regex.search(line) for line in lines) if m]

    def wait_line(self, pattern, timeout=10, start=0):
        """Waits for a log line matching `pattern` (from index `start`) and returns the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    m = regex.search(self.lines[index])
                    index += 1
                    if m:
                        return m
                if self.eof:
                    self.proc.wait()
                    raise AssertionError(
                        f"{self.name} exited (status {self.proc.returncode}) before logging "
                        f"/{pattern}/\n{self._tail_locked()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.name}: no log line /{pattern}/ within {timeout}s\n"
                                         f"{self._tail_locked()}")
                self._cond.wait(remaining)

    def _tail_locked(self, count=40):
        body = "\n".join(f"    | {line}" for line in self.lines[-count:])
        return f"  --- last {min(count, len(self.lines))} lines of {self.name} ({self.log_path}):\n{body}"

    def tail(self, count=40):
        with self._cond:
            return self._tail_locked(count)

    # -- lifetime --------------------------------------------------------------------------------

    def alive(self):
        return self.proc.poll() is None

    def send_signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout=20):
        """Waits for exit; returns the exit status (negative signal number when killed)."""
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout}s\n{self.tail()}")
        self._reader.join(5)
        self.reaped = True
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=20, expect=0):
        """Sends `sig` and waits; asserts the exit status is `expect` (None: any)."""
        self.send_signal(sig)
        try:
            rc = self.wait(timeout)
        except AssertionError:
            self.proc.kill()
            self.proc.wait()
            self.reaped = True
            raise AssertionError(f"{self.name} did not exit within {timeout}s of signal {sig!s}; "
                                 f"killed\n{self.tail()}")
        if expect is not None and rc != expect:
            raise AssertionError(f"{self.name} exited with status {rc} on {sig!s}, expected {expect}"
                                 f"\n{self.tail()}")
        return rc

    def kill(self):
        """SIGKILL, as a crash would."""
        self.send_signal(signal.SIGKILL)
        return self.wait()

    def teardown(self):
        """Harness teardown: a still-running process gets SIGTERM; one that died unasked is an error."""
        if self.reaped:
            return
        if not self.alive():
            self.wait()
            raise AssertionError(f"{self.name} exited on its own with status {self.returncode}"
                                 f"\n{self.tail()}")
        self.stop(expect=self.expected_stop_status())

    def expected_stop_status(self):
        return 0


class Relay(Process):
    """rdv-relay. Ready once it logged its fingerprint and a `listening` line for each configured
    entrypoint section (agent, http, admin)."""

    def __init__(self, harness, name, config_path, ready=True, timeout=10):
        super().__init__(name, [relay_binary(), "--config", config_path],
                         harness.path(f"{name}.log"), cwd=harness.dir)
        self.config_path = config_path
        with open(config_path, encoding="utf-8") as f:
            text = f.read()
        self.roles = ["agent"] + [r for r in ("http", "admin") if re.search(rf"(?m)^{r}:", text)]
        if ready:
            self.wait_ready(timeout)

    def wait_ready(self, timeout=10):
        m = self.wait_line(log_message(r"fingerprint sha256:([0-9a-f]{64})\s*$"), timeout)
        self.fingerprint = m.group(1)
        for role in self.roles:
            self.address(role, timeout=timeout)
        return self

    def addresses(self, role):
        """Every address the relay reported for `role` (`agent`, `http`, `admin`, `tcp:<name>`)."""
        matches = self.find(log_message(rf"listening {re.escape(role)} (\S+)\s*$"))
        return [parse_addr(m.group(1)) for m in matches]

    def address(self, role, v6=False, timeout=10):
        """The first IPv4 (or, with v6, IPv6) address reported for `role`, waiting for it."""
        def pick():
            for host, port in self.addresses(role):
                if (":" in host) == v6:
                    return host, port
            return None
        try:
            return wait_until(pick, timeout, f"relay `listening {role}` ({'v6' if v6 else 'v4'})")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.tail()}") from None

    def port(self, role, v6=False, timeout=10):
        return self.address(role, v6, timeout)[1]

    # -- metrics ---------------------------------------------------------------------------------

    def metrics_text(self):
        host, port = self.address("admin")
        url = f"http://{format_addr((host, port))}/metrics"
        with _NO_PROXY_OPENER.open(url, timeout=5) as resp:
            return resp.read().decode("utf-8")

    def metrics(self):
        return parse_metrics(self.metrics_text())

    def metric(self, name, **labels):
        """Sum of the samples of `name` whose labels include `labels`; 0 when there is none (a
        labelled counter that never fired may be absent). The spec's gauges must always be there:
        an absent gauge reads as "unknown", not 0, so it fails the test."""
        samples = self.metrics()
        if name in GAUGES and not any(n == name for n, _, _ in samples):
            raise AssertionError(f"gauge {name} is absent from /metrics")
        return metric_value(samples, name, **labels)

    def wait_metric(self, name, predicate, timeout=10, **labels):
        """Polls /metrics until predicate(value) holds; returns the value."""
        last = [None]

        def check():
            last[0] = self.metric(name, **labels)
            return predicate(last[0])
        try:
            wait_until(check, timeout, f"{name}{labels or ''}", interval=0.05)
        except AssertionError as e:
            raise AssertionError(f"{e}; last value {last[0]}\n{self.tail()}") from None
        return last[0]


class Agent(Process):
    def __init__(self, harness, name, config_path):
        super().__init__(name, [agent_binary(), "--config", config_path],
                         harness.path(f"{name}.log"), cwd=harness.dir)
        self.config_path = config_path

    def wait_registered(self, service, kind=None, timeout=10, start=0):
        """Waits for `registered <kind> <service> <route>`; returns the route."""
        kind_re = re.escape(kind) if kind else r"\S+"
        m = self.wait_line(log_message(rf"registered {kind_re} {re.escape(service)} (.*?)\s*$"),
                           timeout, start)
        return m.group(1)

    def status(self):
        """`rdv-agent status --json` against the agent's admin listener (config `admin.listen`)."""
        admin = self.wait_line(r"admin listening (\S+)").group(1)
        rc, out = run_expect_exit([agent_binary(), "status", "--admin", admin, "--json"])
        if rc != 0:
            raise AssertionError(f"rdv-agent status --admin {admin} --json: status {rc}\n{out}")
        return json.loads(out)

    def wait_refused(self, service, kind=None, timeout=10, start=0):
        """Waits for `refused <kind> <service>: <reason>`; returns the reason."""
        kind_re = re.escape(kind) if kind else r"\S+"
        m = self.wait_line(log_message(rf"refused {kind_re} {re.escape(service)}: (.*?)\s*$"),
                           timeout, start)
        return m.group(1)

    def wait_links_up(self, count=1, timeout=10, start=0):
        """Waits until `count` distinct links logged `link <n> up` (after `start`)."""
        def up():
            ids = {m.group(1) for m in self.find(log_message(r"link (\d+) up\b"), start)}
            return len(ids) >= count
        try:
            wait_until(up, timeout, f"{count} x `link <n> up` from {self.name}")
        except AssertionError as e:
            if not self.alive():
                raise AssertionError(f"{self.name} exited with status {self.proc.poll()}\n"
                                     f"{self.tail()}") from None
            raise AssertionError(f"{e}\n{self.tail()}") from None


def nginx_config(directory, listen_lines, server_body, worker_connections, http_extra=""):
    """An nginx.conf for a foreground single-process nginx keeping everything in `directory`,
    with one server {} block: `listen_lines` then `server_body` (location blocks or a root)."""
    listens = "".join(f"        {line}\n" for line in listen_lines)
    extra = f"    {http_extra}\n" if http_extra else ""
    body = textwrap.indent(textwrap.dedent(server_body).strip(), " " * 8)
    return (f"""daemon off;
master_process off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log stderr warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    default_type text/plain;
{extra}    server {{
{listens}        server_name _;
{body}
    }}
}}
""")


class Nginx(Process):
    """nginx (nginx-light) in the foreground, single process, everything inside a private directory.

    `locations` is the body of the one `server {}` block (location blocks)."""

    def __init__(self, harness, name, locations, host="127.0.0.1", listen_options=""):
        self.dir = harness.path(name)
        os.makedirs(self.dir, exist_ok=True)
        for attempt in range(5):
            port = free_port(host)
            conf = os.path.join(self.dir, "nginx.conf")
            listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            with open(conf, "w", encoding="utf-8") as f:
                f.write(nginx_config(self.dir, [f"listen {listen} {listen_options};"], locations,
                                     worker_connections=4096, http_extra="keepalive_requests 1000;"))
            super().__init__(f"{name}", ["nginx", "-p", self.dir, "-c", conf, "-e", "stderr"],
                             harness.path(f"{name}.log"), cwd=self.dir)
            self.port = port
            self.addr = (host, port)
            if self._wait_accepting():
                return
            self.wait()
            if not any("in use" in line for line in self.lines):
                raise AssertionError(f"nginx failed to start\n{self.tail()}")
        raise AssertionError("nginx: no free port after 5 attempts")

    def _wait_accepting(self, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            try:
                with connect(self.addr, timeout=1):
                    return True
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"nginx not accepting on {self.addr} after {timeout}s\n{self.tail()}")

    def target(self):
        return format_addr(self.addr)

    def expected_stop_status(self):
        return None


# ---------------------------------------------------------------------------------------------------
# Metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


# Unlabelled metrics of the spec (relay admin /metrics); GAUGES must be present whenever read.
GAUGES = ("rdv_links_active", "rdv_services_registered", "rdv_streams_active")
COUNTERS = ("rdv_links_accepted_total", "rdv_http_requests_total", "rdv_streams_opened_total",
            "rdv_streams_refused_total", "rdv_tcp_connections_total")


def metric_at(address, name, **labels):
    """`name` (summed over samples whose labels include `labels`; 0 when absent) from the
    /metrics of an admin listener at `address` ((host, port)), e.g. an agent's."""
    url = f"http://{format_addr(address)}/metrics"
    with _NO_PROXY_OPENER.open(url, timeout=5) as resp:
        return metric_value(parse_metrics(resp.read().decode("utf-8")), name, **labels)


def metric_types(text):
    """`# TYPE name kind` lines -> {name: kind}."""
    return dict(re.findall(r"(?m)^#\s*TYPE\s+(\S+)\s+(\S+)", text))


def parse_metrics(text):
    """Prometheus text format -> list of (name, {label: value}, float)."""
    samples = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise AssertionError(f"unparsable /metrics line: {line!r}")
        labels = {}
        if m.group(2):
            for lm in _LABEL.finditer(m.group(2)):
                labels[lm.group(1)] = (lm.group(2).replace(r"\"", '"').replace(r"\n", "\n")
                                       .replace("\\\\", "\\"))
        samples.append((m.group(1), labels, float(m.group(3))))
    return samples


def metric_value(samples, name, **labels):
    total = 0.0
    for sample_name, sample_labels, value in samples:
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            total += value
    return total


# ---------------------------------------------------------------------------------------------------
# Deterministic data and the data target
#
# Data streams are pseudo-random blocks from a seed, so both ends can produce or check them without
# sharing the bytes. The target speaks one line of header, then:
#   `X <to_target> <from_target> <seed>\n`: concurrently reads <to_target> bytes (hashing them) and
#       writes <from_target> bytes of pattern(seed); then writes sha256(what it read) (32 bytes) and
#       waits for the client to close.
#   `E\n`: echoes everything until EOF.
# Anything else: the target closes the connection.

BLOCK = 65536


class Pattern:
    """An endless deterministic byte stream; read(n) returns the next n bytes."""

    def __init__(self, seed):
        self._rng = random.Random(seed)
        self._buf = b""

    def read(self, n):
        while len(self._buf) < n:
            self._buf += self._rng.randbytes(BLOCK)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def pattern_digest(seed, length):
    h = hashlib.sha256()
    p = Pattern(seed)
    while length:
        chunk = p.read(min(BLOCK, length))
        h.update(chunk)
        length -= len(chunk)
    return h.digest()


def client_seed(seed):
    return seed ^ 0x5A5A5A5A


class BackgroundLoop:
    """An asyncio loop on its own thread, for servers that must serve while the test blocks."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="asyncio", daemon=True)
        self._thread.start()

    def run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self.run(cancel_all(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


class DataTarget:
    """Asyncio TCP target (the private service behind an agent) for byte-exact stream tests."""

    _HEADER = re.compile(rb"^(?:E|X (\d+) (\d+) (\d+))\n$")

    def __init__(self, bg, host="127.0.0.1"):
        self._bg = bg
        self.sent = {}          # seed -> bytes written so far (X mode)
        self.connections = 0    # accepted so far
        self.active = 0         # open right now
        self.peak_active = 0
        self._writers = set()
        self.server = bg.run(asyncio.start_server(self._handle, host, 0, backlog=4096))
        self.addr = self.server.sockets[0].getsockname()[:2]

    def target(self):
        return format_addr(self.addr)

    async def _handle(self, reader, writer):
        self.connections += 1
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        self._writers.add(writer)
        try:
            header = await reader.readline()
            m = self._HEADER.match(header)
            if not m:
                return
            if m.group(1) is None:
                while True:
                    data = await reader.read(BLOCK)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
                return
            to_target, from_target, seed = (int(g) for g in m.groups())
            self.sent[seed] = 0

            async def receive():
                h = hashlib.sha256()
                got = 0
                while got < to_target:
                    data = await reader.read(min(BLOCK, to_target - got))
                    if not data:
                        raise ConnectionError(f"EOF after {got} of {to_target} bytes")
                    h.update(data)
                    got += len(data)
                return h.digest()

            async def send():
                pattern = Pattern(seed)
                left = from_target
                while left:
                    chunk = pattern.read(min(BLOCK, left))
                    writer.write(chunk)
                    await writer.drain()
                    left -= len(chunk)
                    self.sent[seed] += len(chunk)

            digest, _ = await asyncio.gather(receive(), send())
            writer.write(digest)
            await writer.drain()
            while await reader.read(BLOCK):
                pass
        except (ConnectionError, OSError, ValueError, asyncio.LimitOverrunError,
                asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            self._writers.discard(writer)
            writer.close()

    def close(self):
        async def shut():
            self.server.close()
            for w in list(self._writers):
                w.close()
            await self.server.wait_closed()
        self._bg.run(shut())


class FailoverBalancer:
    """A TCP load balancer in front of relay replicas, as a Kubernetes Service is: each connection
    goes to the first backend that accepts it, and its bytes are copied both ways."""

    def __init__(self, bg, backends):
        self.bg = bg
        self.backends = backends
        self.server = bg.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.address = self.server.sockets[0].getsockname()[:2]
        self.routed = []  # the backend of each connection, in order

    def close(self):
        async def close():
            self.server.close()
            await self.server.wait_closed()
        self.bg.run(close())

    async def _serve(self, reader, writer):
        for backend in self.backends:
            try:
                up_reader, up_writer = await asyncio.open_connection(*backend)
                break
            except OSError:
                continue
        else:
            writer.close()
            return
        self.routed.append(backend)

        async def pump(source, sink):
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


def exchange(addr, to_target, from_target, seed, timeout=60):
    """One X exchange over a fresh connection; asserts both directions arrived byte-exact."""
    with connect(addr, timeout) as sock:
        return exchange_on(sock, to_target, from_target, seed, timeout)


def exchange_on(sock, to_target, from_target, seed, timeout=60):
    sock.settimeout(timeout)
    error = []

    def upload():
        try:
            sock.sendall(b"X %d %d %d\n" % (to_target, from_target, seed))
            pattern = Pattern(client_seed(seed))
            left = to_target
            while left:
                chunk = pattern.read(min(BLOCK, left))
                sock.sendall(chunk)
                left -= len(chunk)
        except OSError as e:
            error.append(e)

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    h = hashlib.sha256()
    got = 0
    trailer = b""
    try:
        while got < from_target or len(trailer) < 32:
            data = sock.recv(BLOCK)
            if not data:
                break
            take = min(len(data), from_target - got)
            h.update(data[:take])
            got += take
            trailer += data[take:]
    except OSError as e:
        raise AssertionError(f"stream seed={seed}: receive failed after {got}/{from_target} bytes: "
                             f"{e!r}") from None
    sender.join(timeout)
    if error:
        raise AssertionError(f"stream seed={seed}: send failed: {error[0]!r}")
    if got != from_target or len(trailer) != 32:
        raise AssertionError(f"stream seed={seed}: connection closed after {got}/{from_target} bytes "
                             f"(+{len(trailer)} trailer bytes)")
    if h.digest() != pattern_digest(seed, from_target):
        raise AssertionError(f"stream seed={seed}: {from_target} bytes target->client differ "
                             f"(sha256 mismatch)")
    if trailer != pattern_digest(client_seed(seed), to_target):
        raise AssertionError(f"stream seed={seed}: {to_target} bytes client->target differ "
                             f"(sha256 mismatch)")
    return got


class EchoStream:
    """A long-lived echo stream on a background thread: sends chunks, checks each echo byte-exact.

    `bytes_ok` grows while the stream works; `error` holds the first failure."""

    def __init__(self, addr, chunk=16384, seed=1):
        self.bytes_ok = 0
        self.error = None
        self._stop = threading.Event()
        self._sock = connect(addr, 10)
        self._sock.sendall(b"E\n")
        self._pattern = Pattern(seed)
        self._chunk = chunk
        self._thread = threading.Thread(target=self._run, name="echo-stream", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                data = self._pattern.read(self._chunk)
                self._sock.sendall(data)
                got = b""
                while len(got) < len(data):
                    more = self._sock.recv(len(data) - len(got))
                    if not more:
                        raise ConnectionError(f"EOF after {self.bytes_ok + len(got)} echoed bytes")
                    got += more
                if got != data:
                    raise AssertionError(f"echo differs after {self.bytes_ok} bytes")
                self.bytes_ok += len(data)
        except Exception as e:  # reported by check()/stop()
            self.error = e

    def check(self):
        if self.error:
            raise AssertionError(f"concurrent echo stream failed: {self.error!r}")

    def wait_progress(self, beyond, timeout=10):
        wait_until(lambda: self.error or self.bytes_ok > beyond, timeout,
                   f"echo stream to pass {beyond} bytes")
        self.check()

    def stop(self):
        self._stop.set()
        self._thread.join(15)
        self._sock.close()
        self.check()


# ---------------------------------------------------------------------------------------------------
# Clients


class CurlResult:
    def __init__(self, rc, status, body, stderr):
        self.rc, self.status, self.body, self.stderr = rc, status, body, stderr

    def __repr__(self):
        return f"curl(rc={self.rc}, status={self.status}, body={self.body[:200]!r}, err={self.stderr!r})"


def curl(url, host=None, args=(), timeout=10):
    """Runs curl; returns CurlResult(rc, HTTP status (0 if none), body text, stderr)."""
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", str(timeout), "-o", "-",
            "-w", "\n%{http_code}"]
    if host:
        argv += ["-H", f"Host: {host}"]
    argv += list(args) + [url]
    p = subprocess.run(argv, capture_output=True, timeout=timeout + 5)
    out = p.stdout.decode("utf-8", errors="replace")
    body, _, code = out.rpartition("\n")
    return CurlResult(p.returncode, int(code) if code.isdigit() else 0, body,
                      p.stderr.decode("utf-8", errors="replace").strip())


def http_url(addr, path="/"):
    return f"http://{format_addr(addr)}{path}"


def read_until_closed(sock, timeout=10):
    """Reads until the peer closes; returns (bytes, how) with how 'eof' or 'reset'. Asserts the peer
    closed within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"connection still open after {timeout}s (received {data[:200]!r})")
        sock.settimeout(remaining)
        try:
            more = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return data, "reset"
        except ssl.SSLError as e:
            return data, f"ssl: {e.reason or e}"
        if not more:
            return data, "eof"
        data += more


def http_status(response_bytes):
    """Status code of a raw HTTP/1.x response, or None."""
    m = re.match(rb"HTTP/1\.[01] (\d{3})", response_bytes)
    return int(m.group(1)) if m else None


def client_hello(alpn=("rdv/1",), server_name="relay.test"):
    """The bytes of a real TLS ClientHello, as the ssl module would send them."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def tls_connect(addr, alpn=("rdv/1",), timeout=10):
    """TLS 1.3 client to the agent listener without verification (as an attacker would)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    raw = connect(addr, timeout)
    return ctx.wrap_socket(raw, server_hostname="relay.test")


def run_expect_exit(argv, timeout=15):
    """Runs a binary that should exit by itself; returns (status, combined output)."""
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{argv} still running after {timeout}s (expected it to exit)") from e
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------------
# The harness


class Harness:
    """Owns a temp dir and everything started in it; close() tears all of it down."""

    def __init__(self, name, need_binaries=True):
        for binary in (relay_binary(), agent_binary()) if need_binaries else ():
            if not os.access(binary, os.X_OK):
                raise AssertionError(f"binary not built: {binary} (build dir {BUILD_DIR})")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[-60:]
        self.dir = tempfile.mkdtemp(prefix=f"rdv-{safe}-")
        self.processes = []
        self._bg = None
        self._targets = []
        self._counter = 0
        self.failed = False

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def write(self, name, text):
        path = self.path(name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
        return path

    def _unique(self, name):
        self._counter += 1
        return f"{name}{self._counter}"

    @property
    def bg(self):
        if self._bg is None:
            self._bg = BackgroundLoop()
        return self._bg

    def relay(self, yaml_text, name=None, ready=True):
        name = name or self._unique("relay")
        proc = Relay(self, name, self.write(f"{name}.yaml", yaml_text), ready=False)
        self.processes.append(proc)
        if ready:
            proc.wait_ready()
        return proc

    def agent(self, yaml_text, name=None):
        name = name or self._unique("agent")
        proc = Agent(self, name, self.write(f"{name}.yaml", yaml_text))
        self.processes.append(proc)
        return proc

    def nginx(self, locations, name=None, host="127.0.0.1", listen_options=""):
        """`listen_options` go on the listen line, e.g. "proxy_protocol"."""
        name = name or self._unique("nginx")
        proc = Nginx(self, name, locations, host, listen_options)
        self.processes.append(proc)
        return proc

    def data_target(self, host="127.0.0.1"):
        target = DataTarget(self.bg, host)
        self._targets.append(target)
        return target

    def ws_echo_server(self, host="127.0.0.1"):
        """python3-websockets echo server; returns its (host, port)."""
        import websockets

        async def echo(ws, path=None):
            async for message in ws:
                await ws.send(message)

        async def start():
            return await websockets.serve(echo, host, 0, max_size=None)
        server = self.bg.run(start())
        self._targets.append(_WsServer(self.bg, server))
        return server.sockets[0].getsockname()[:2]

    def dump(self, stream=None):
        stream = stream or sys.stdout
        for proc in self.processes:
            print(proc.tail(60), file=stream)
        print(f"  (logs kept in {self.dir})", file=stream, flush=True)

    def close(self):
        """Stops processes newest first; raises if a relay/agent did not exit 0 on SIGTERM or died."""
        errors = []
        for proc in reversed(self.processes):
            try:
                proc.teardown()
            except AssertionError as e:
                errors.append(str(e))
            except Exception as e:  # keep tearing down the rest
                errors.append(f"{proc.name}: {e!r}")
        for target in self._targets:
            try:
                target.close()
            except Exception as e:
                errors.append(f"target close: {e!r}")
        if self._bg is not None:
            try:
                self._bg.close()
            except Exception as e:
                errors.append(f"asyncio loop close: {e!r}")
        if errors or self.failed or os.environ.get("RDV_KEEP_TMP"):
            print(f"[harness] logs kept in {self.dir}", flush=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise AssertionError("teardown:\n" + "\n".join(errors))


class _WsServer:
    def __init__(self, bg, server):
        self._bg, self._server = bg, server

    def close(self):
        async def shut():
            self._server.close()
            await self._server.wait_closed()
        self._bg.run(shut())


class IntegrationTest(unittest.TestCase):
    """Base class: `self.h` is the harness in use (per test or per class); its logs are dumped when
    a test fails."""

    h = None

    @classmethod
    def shared_harness(cls):
        """A harness shared by the class's tests, torn down after the last one (or a failed setUp)."""
        cls.h = Harness(cls.__name__)
        cls.addClassCleanup(cls.h.close)
        return cls.h

    def fresh_harness(self):
        """A harness for this test only."""
        self.h = Harness(self.id().split(".", 1)[-1])
        self.addCleanup(self.h.close)
        return self.h

    def dump_logs(self):
        if self.h is not None:
            self.h.failed = True
            self.h.dump()


# ---------------------------------------------------------------------------------------------------
# Runner


def slow(test_method):
    """Marks a test as heavy: `--skip-slow` leaves it out, `--slow-only` runs only such tests."""
    test_method.rdv_slow = True
    return test_method


class _Result(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passed = set()
        self.class_errors = 0

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed.add(test.id())

    def _dump(self, test):
        dump = getattr(test, "dump_logs", None)
        if dump:
            dump()

    def addFailure(self, test, err):
        self._dump(test)
        super().addFailure(test, err)

    def addError(self, test, err):
        if not isinstance(test, unittest.TestCase):  # setUpClass / tearDownClass / class cleanup
            self.class_errors += 1
        else:
            self._dump(test)
        super().addError(test, err)

    def addSubTest(self, test, subtest, err):
        if err is not None:
            self._dump(test)
        super().addSubTest(test, subtest, err)


def _flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def main():
    global BUILD_DIR
    parser = argparse.ArgumentParser(description="Rendezvous integration tests")
    parser.add_argument("--build", default=BUILD_DIR, help="CMake build directory")
    parser.add_argument("--skip-slow", action="store_true", help="leave out tests marked slow")
    parser.add_argument("--slow-only", action="store_true", help="run only tests marked slow")
    parser.add_argument("tests", nargs="*", help="TestClass or TestClass.test_method")
    args = parser.parse_args()
    BUILD_DIR = os.path.abspath(args.build)

    module = sys.modules["__main__"]
    loader = unittest.TestLoader()
    loaded = (loader.loadTestsFromNames(args.tests, module) if args.tests
              else loader.loadTestsFromModule(module))
    tests = []
    for test in _flatten(loaded):
        is_slow = getattr(getattr(test, getattr(test, "_testMethodName", ""), None), "rdv_slow",
                          False)
        if (args.skip_slow and is_slow) or (args.slow_only and not is_slow):
            continue
        tests.append(test)
    suite = unittest.TestSuite(tests)
    total = suite.countTestCases()

    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=_Result)
    result = runner.run(suite)
    skipped = len(result.skipped)
    passed = len(result.passed)
    failed = total - passed - skipped
    if failed == 0:
        # Every method passed but a class teardown (e.g. relay exit status) failed.
        failed = result.class_errors
    if skipped:
        print(f"{skipped} skipped")
    print(f"{passed} passed, {failed} failed", flush=True)
    sys.exit(0 if failed == 0 and total > 0 else 1)
