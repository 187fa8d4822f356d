"""Hermetic network-namespace topologies for integration tests (root only).

A `Topology` creates namespaces with names unique to this process (`rdv<pid>-<random>-<short>`),
veth pairs created directly inside the namespaces (nothing appears in the host's namespace), IPv4
and IPv6 addresses, a "LAN" interface inside a site, routes, per-namespace /etc/hosts and
/etc/resolv.conf (`/etc/netns/<ns>/`, which `ip netns exec` bind-mounts over /etc), and an
nftables firewall per site that drops inbound NEW connections with a counter the test can read.

Processes run inside a namespace through `ip netns exec` (which execs, so the pid is the program's
own) as `harness.Process` objects: their logs, `wait_line` and the harness teardown work as for
any other process. Python sockets are opened inside a namespace by a thread of this process that
joined it (`setns(2)` is per thread for network namespaces): `Namespace.connect`, `.listen`,
`.http_get`, `.listening`. A socket keeps its namespace whichever thread uses it afterwards.

Teardown (`Topology.close()`, also as a context manager and from `atexit` and SIGTERM/SIGHUP)
kills what is still running in the namespaces, deletes them (and so every interface in them) and
removes their /etc/netns directories, also when the test failed. A topology left behind by a
process that was SIGKILLed is swept by the next Topology created on the machine (its pid is gone).

    with netns.Topology("demo") as topo:
        relay, a = topo.namespace("relay"), topo.namespace("siteA")
        addr_a, addr_r = topo.link(a, relay, "10.200.1.0/24")
        a.default_route(addr_r)
        fw = a.firewall()
        ...
        fw.dropped_new()   # packets of inbound NEW connections the firewall dropped
"""

import atexit
import concurrent.futures
import ctypes
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import unittest

import harness

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"
NETNS_ETC_DIR = "/etc/netns"
_NAME_RE = re.compile(r"^rdv(\d+)-[0-9a-f]{6}-[A-Za-z0-9_.-]+$")
_libc = ctypes.CDLL(None, use_errno=True)


# ---------------------------------------------------------------------------------------------------
# Can this process build topologies at all?


def unavailable_reason():
    """None when namespaces, veth and nftables can be used here; otherwise why not (one line)."""
    if os.geteuid() != 0:
        return "network-namespace tests need root (they create namespaces, veths and nftables rules)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (scripts/install-deps.sh installs iproute2 and nftables)"
    return None


def skip_unless_available():
    """Raises unittest.SkipTest with a clear message when `unavailable_reason()` says so."""
    reason = unavailable_reason()
    if reason:
        raise unittest.SkipTest(reason)


def _run(argv, check=True, timeout=30, input=None):
    p = subprocess.run(argv, capture_output=True, timeout=timeout, input=input,
                       stdin=None if input is not None else subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"`{' '.join(argv)}` failed with status {p.returncode}: "
                             f"{(p.stderr or p.stdout).decode(errors='replace').strip()}")
    return p


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_pids_in(ns_name):
    """SIGKILLs every process still inside namespace `ns_name` (all of them were started there by
    the topology's owner: its processes and their children)."""
    p = _run(["ip", "netns", "pids", ns_name], check=False)
    for word in p.stdout.decode().split():
        if word.isdigit() and int(word) != os.getpid():
            try:
                os.kill(int(word), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _delete_namespace(ns_name):
    _kill_pids_in(ns_name)
    if os.path.exists(os.path.join(NETNS_RUN_DIR, ns_name)):
        _run(["ip", "netns", "delete", ns_name], check=False)
    shutil.rmtree(os.path.join(NETNS_ETC_DIR, ns_name), ignore_errors=True)


def sweep_stale():
    """Deletes namespaces (and /etc/netns dirs) of earlier topologies whose process is gone."""
    names = set()
    for d in (NETNS_RUN_DIR, NETNS_ETC_DIR):
        try:
            names.update(os.listdir(d))
        except FileNotFoundError:
            pass
    for name in sorted(names):
        m = _NAME_RE.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _delete_namespace(name)


# ---------------------------------------------------------------------------------------------------
# Teardown on exit, whatever happens


_live = set()
_live_lock = threading.Lock()
_hooks_installed = False


def _close_all():
    with _live_lock:
        topologies = list(_live)
    for topo in topologies:
        try:
            topo.close()
        except Exception as e:  # noqa: BLE001 - keep tearing down the others
            print(f"[netns] teardown of {topo.prefix} failed: {e!r}", flush=True)


def _on_signal(signum, _frame):
    # Unwinding runs the tests' cleanups (harness teardown first, then the topology); atexit is
    # the backstop.
    raise SystemExit(128 + signum)


def _install_hooks():
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_close_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)


# ---------------------------------------------------------------------------------------------------
# Processes inside a namespace


class _InNamespace(harness.Process):
    """Mixin below a harness.Process subclass: runs its argv under `ip netns exec <ns>`. The
    subclass sets `self.ns` before calling its base's __init__."""

    def __init__(self, name, argv, log_path, cwd=None):
        super().__init__(name, self.ns.exec_argv(argv), log_path, cwd=cwd)


class NsProcess(_InNamespace):
    """Any program inside a namespace. `expect_status` is the exit status SIGTERM must give (None:
    any; peers like nginx or sshd are not under test)."""

    def __init__(self, ns, name, argv, log_path, cwd=None, expect_status=None):
        self.ns = ns
        self._expect = expect_status
        super().__init__(name, argv, log_path, cwd=cwd)

    def expected_stop_status(self):
        return self._expect


class NsRelay(harness.Relay, _InNamespace):
    """rdv-relay inside a namespace; /metrics is fetched from inside it."""

    def __init__(self, ns, h, name, config_path, ready=True, timeout=10):
        self.ns = ns
        super().__init__(h, name, config_path, ready=ready, timeout=timeout)

    def metrics_text(self):
        status, body = self.ns.http_get(self.address("admin"), "/metrics")
        if status != 200:
            raise AssertionError(f"{self.name}: GET /metrics -> {status}")
        return body.decode("utf-8")


class NsAgent(harness.Agent, _InNamespace):
    """rdv-agent inside a namespace; with an `admin:` listener in its config, its /metrics and
    /status are read from inside the namespace (the address from `admin listening <addr>`)."""

    def __init__(self, ns, h, name, config_path):
        self.ns = ns
        super().__init__(h, name, config_path)

    def admin_address(self, timeout=10):
        m = self.wait_line(harness.log_message(r"admin listening (\S+)\s*$"), timeout)
        return harness.parse_addr(m.group(1))

    def _get(self, path):
        return self.ns.http_get(self.admin_address(), path)

    def metrics_text(self):
        status, body = self._get("/metrics")
        if status != 200:
            raise AssertionError(f"{self.name}: GET /metrics -> {status}")
        return body.decode("utf-8")

    def status(self):
        status, body = self._get("/status")
        if status != 200:
            raise AssertionError(f"{self.name}: GET /status -> {status}: {body[:200]!r}")
        return json.loads(body)

    def metric(self, name, **labels):
        return harness.metric_value(harness.parse_metrics(self.metrics_text()), name, **labels)

    def wait_metric(self, name, predicate, timeout=10, **labels):
        last = [None]

        def check():
            last[0] = self.metric(name, **labels)
            return predicate(last[0])
        try:
            harness.wait_until(check, timeout, f"{self.name} {name}{labels or ''}", interval=0.05)
        except AssertionError as e:
            raise AssertionError(f"{e}; last value {last[0]}\n{self.tail()}") from None
        return last[0]


# ---------------------------------------------------------------------------------------------------
# Firewall


class Firewall:
    """An nftables table in one namespace: inbound packets of NEW connections are dropped and
    counted; established/related traffic, loopback and IPv6 neighbour discovery pass. Outbound is
    not filtered (a site may dial out)."""

    TABLE = "rdv_fw"

    def __init__(self, ns):
        self.ns = ns
        ruleset = f"""
            table inet {self.TABLE} {{
                counter dropped_new {{ }}
                counter dropped_other {{ }}
                chain input {{
                    type filter hook input priority filter; policy drop;
                    iif "lo" accept
                    ct state established,related accept
                    icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert }} accept
                    ct state new counter name "dropped_new" drop
                    counter name "dropped_other" drop
                }}
            }}
        """
        ns.run(["nft", "-f", "-"], input=ruleset.encode())

    def counter(self, name="dropped_new"):
        """(packets, bytes) of a named counter of the table."""
        p = self.ns.run(["nft", "-j", "list", "counter", "inet", self.TABLE, name])
        for item in json.loads(p.stdout)["nftables"]:
            if "counter" in item:
                return item["counter"]["packets"], item["counter"]["bytes"]
        raise AssertionError(f"{self.ns.name}: no nftables counter {name}")

    def dropped_new(self):
        return self.counter("dropped_new")[0]

    def wait_dropped_new(self, beyond, timeout=10):
        """Waits until more than `beyond` packets of NEW inbound connections were dropped."""
        return harness.wait_until(lambda: self.dropped_new() > beyond and self.dropped_new(),
                                  timeout, f"{self.ns.name}: nft counter dropped_new > {beyond}")


# ---------------------------------------------------------------------------------------------------
# Namespaces


class Namespace:
    def __init__(self, topo, short, name):
        self.topo = topo
        self.short = short
        self.name = name
        self.addresses = []         # every address assigned (strings, no prefix length)
        self._executor = None
        self._hosts = {}
        self._ifaces = 0

    def __repr__(self):
        return f"Namespace({self.name})"

    # -- commands ------------------------------------------------------------------------------

    def exec_argv(self, argv):
        return ["ip", "netns", "exec", self.name] + list(argv)

    def run(self, argv, check=True, timeout=30, input=None):
        """Runs a command inside the namespace to completion."""
        return _run(self.exec_argv(argv), check=check, timeout=timeout, input=input)

    def ip(self, *args):
        return _run(["ip", "-n", self.name] + list(args))

    def sysctl(self, key, value):
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    # -- interfaces, addresses, routes ---------------------------------------------------------

    def add_address(self, iface, cidr):
        iface_addr = ipaddress.ip_interface(cidr)
        args = ["addr", "add", cidr, "dev", iface]
        if iface_addr.version == 6:
            args.append("nodad")  # usable at once; no duplicate detection in a private segment
        self.ip(*args)
        self.addresses.append(str(iface_addr.ip))
        return str(iface_addr.ip)

    def lan(self, addresses, iface="lan0"):
        """A local "LAN" interface holding `addresses` (CIDRs) for servers of the site. A dummy
        interface where the kernel has it, else an empty bridge (both just hold addresses)."""
        for kind in ("dummy", "bridge"):
            p = _run(["ip", "-n", self.name, "link", "add", iface, "type", kind], check=False)
            if p.returncode == 0:
                break
        else:
            raise AssertionError(f"{self.name}: cannot create a dummy or bridge interface: "
                                 f"{p.stderr.decode(errors='replace').strip()}")
        self.ip("link", "set", iface, "up")
        return [self.add_address(iface, cidr) for cidr in addresses]

    def default_route(self, via4=None, via6=None):
        if via4:
            self.ip("route", "add", "default", "via", via4)
        if via6:
            self.ip("-6", "route", "add", "default", "via", via6)

    def route(self, destination, via):
        family = "-6" if ":" in destination else "-4"
        self.ip(family, "route", "add", destination, "via", via)

    def forwarding(self, on=True):
        self.sysctl("net.ipv4.ip_forward", int(on))
        self.sysctl("net.ipv6.conf.all.forwarding", int(on))

    # -- /etc/netns/<ns>/ ----------------------------------------------------------------------

    def _etc(self, filename, text):
        d = os.path.join(NETNS_ETC_DIR, self.name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, filename), "w", encoding="utf-8") as f:
            f.write(text)

    def hosts(self, entries):
        """Adds `{name: address}` to the namespace's /etc/hosts (seen by processes started with
        `ip netns exec` from now on)."""
        self._hosts.update(entries)
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        lines += [f"{addr} {name}" for name, addr in self._hosts.items()]
        self._etc("hosts", "\n".join(lines) + "\n")

    def isolate_dns(self):
        """A resolv.conf whose name server is the namespace's own loopback (where nothing
        listens): a name not in /etc/hosts fails at once instead of waiting for a DNS timeout."""
        self._etc("resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    # -- firewall ------------------------------------------------------------------------------

    def firewall(self):
        return Firewall(self)

    # -- Python sockets inside the namespace ----------------------------------------------------

    def _enter(self):
        fd = os.open(os.path.join(NETNS_RUN_DIR, self.name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({self.name}): {os.strerror(err)}")
        finally:
            os.close(fd)

    def call(self, fn, *args, **kwargs):
        """Runs fn(*args) on a thread that joined this namespace; returns its result."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"netns-{self.short}", initializer=self._enter)
        return self._executor.submit(fn, *args, **kwargs).result()

    def connect(self, addr, timeout=10):
        """A TCP connection from inside the namespace (blocking)."""
        return self.call(socket.create_connection, addr, timeout)

    def start_connect(self, addr):
        """Sends a SYN from inside the namespace and returns the non-blocking socket at once (for
        probing a firewall without waiting for a timeout). `connected(sock)` tells the outcome."""
        def go():
            family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex(addr)
            if err not in (0, 115):  # EINPROGRESS
                s.close()
                raise OSError(err, f"connect {addr}: {os.strerror(err)}")
            return s
        return self.call(go)

    def listen(self, addr, backlog=128):
        """A listening TCP socket inside the namespace (port 0: any free port)."""
        def go():
            family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
            s.listen(backlog)
            return s
        return self.call(go)

    def free_port(self, host="127.0.0.1"):
        s = self.listen((host, 0))
        try:
            return s.getsockname()[1]
        finally:
            s.close()

    def listening(self, host, port):
        """True when a TCP socket listens on host:port (or the wildcard) in this namespace; reads
        /proc/thread-self/net/tcp{,6} instead of connecting, so servers see no probe."""
        def scan():
            ip = ipaddress.ip_address(host)
            fname = "/proc/thread-self/net/tcp6" if ip.version == 6 else "/proc/thread-self/net/tcp"
            packed = ip.packed
            # /proc shows each 32-bit word in host byte order.
            words = [packed[i:i + 4][::-1].hex().upper() for i in range(0, len(packed), 4)]
            wanted = {"".join(words) + f":{port:04X}",
                      "0" * (8 * len(words)) + f":{port:04X}"}
            with open(fname, encoding="ascii") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and fields[1] in wanted:
                        return True
            return False
        return self.call(scan)

    def wait_listening(self, addr, timeout=15, proc=None):
        def ready():
            if proc is not None and not proc.alive():
                raise AssertionError(f"{proc.name} exited before listening on {addr}\n{proc.tail()}")
            return self.listening(*addr)
        harness.wait_until(ready, timeout, f"{self.name}: a listener on {harness.format_addr(addr)}")

    def http_get(self, addr, path, host=None, timeout=10):
        """A minimal HTTP/1.0 GET from inside the namespace; returns (status, body bytes)."""
        with self.connect(addr, timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host or harness.format_addr(addr)}\r\n"
                      f"Connection: close\r\n\r\n".encode())
            data, _ = harness.read_until_closed(s, timeout)
        head, _, body = data.partition(b"\r\n\r\n")
        status = harness.http_status(head)
        if status is None:
            raise AssertionError(f"GET {path} from {self.name}: not an HTTP response: {data[:200]!r}")
        return status, body

    # -- processes -----------------------------------------------------------------------------

    def _register(self, h, proc):
        h.processes.append(proc)
        self.topo._processes.append(proc)
        return proc

    def process(self, h, name, argv, cwd=None, expect_status=None):
        """Starts `argv` inside the namespace as a harness process (logs in the harness dir)."""
        return self._register(h, NsProcess(self, name, argv, h.path(f"{name}.log"),
                                           cwd=cwd or h.dir, expect_status=expect_status))

    def relay(self, h, yaml_text, name, ready=True):
        proc = self._register(h, NsRelay(self, h, name, h.write(f"{name}.yaml", yaml_text),
                                         ready=False))
        if ready:
            proc.wait_ready()
        return proc

    def agent(self, h, yaml_text, name):
        return self._register(h, NsAgent(self, h, name, h.write(f"{name}.yaml", yaml_text)))

    def nginx(self, h, name, listen, files):
        """nginx serving `files` ({path: bytes}) on every (host, port) of `listen`."""
        return Nginx(self, h, name, listen, files)

    def sshd(self, h, name, listen):
        """A private OpenSSH server on (host, port) with generated keys; see `Sshd`."""
        return Sshd(self, h, name, listen)

    def data_target(self, h, host, port=0):
        """harness.DataTarget (echo `E` / exchange `X` modes) listening inside the namespace."""
        target = DataTarget(self, h.bg, host, port)
        h._targets.append(target)
        return target

    def close(self):
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


# ---------------------------------------------------------------------------------------------------
# Peers inside a namespace


class DataTarget(harness.DataTarget):
    """The harness's data target with its listening socket opened inside a namespace."""

    def __init__(self, ns, bg, host, port=0):  # noqa: super().__init__ would bind in this netns
        import asyncio
        self._bg = bg
        self.sent = {}
        self.connections = 0
        self.active = 0
        self.peak_active = 0
        self._writers = set()
        sock = ns.listen((host, port), backlog=1024)
        self.server = bg.run(asyncio.start_server(self._handle, sock=sock))
        self.addr = (host, sock.getsockname()[1])


class Nginx:
    """nginx (single process, foreground) inside a namespace serving static files."""

    def __init__(self, ns, h, name, listen, files):
        self.dir = h.path(name)
        www = os.path.join(self.dir, "www")
        os.makedirs(www, exist_ok=True)
        for path, body in files.items():
            full = os.path.join(www, path.lstrip("/"))
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(body)
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(harness.nginx_config(
                self.dir, [f"listen {harness.format_addr(a)};" for a in listen], f"root {www};",
                worker_connections=1024))
        self.listen = list(listen)
        self.proc = ns.process(h, name, ["nginx", "-p", self.dir, "-c", conf, "-e", "stderr"])
        for addr in self.listen:
            ns.wait_listening(addr, proc=self.proc)

    def access_log(self):
        try:
            with open(os.path.join(self.dir, "access.log"), encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return ""


class Sshd:
    """OpenSSH's sshd inside a namespace: its own ed25519 host key and config in the harness dir,
    `-D -e` (foreground, log to stderr), public-key login for root with a generated client key.

    `client_argv(host, port, command)` is an `ssh` command line that trusts exactly this server's
    host key (HostKeyAlias + a private known_hosts, StrictHostKeyChecking=yes), so a login proves
    the connection reached this sshd, whatever address or port it went through."""

    def __init__(self, ns, h, name, listen):
        self.ns = ns
        self.dir = h.path(name)
        os.makedirs(self.dir, exist_ok=True)
        self.alias = f"rdv-{name}"
        self.host_key = os.path.join(self.dir, "ssh_host_ed25519_key")
        self.client_key = os.path.join(self.dir, "id_ed25519")
        for key in (self.host_key, self.client_key):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.alias, "-f", key])
        self.authorized_keys = os.path.join(self.dir, "authorized_keys")
        shutil.copyfile(self.client_key + ".pub", self.authorized_keys)
        with open(self.host_key + ".pub", encoding="ascii") as f:
            key_type, key_b64 = f.read().split()[:2]
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        with open(self.known_hosts, "w", encoding="ascii") as f:
            f.write(f"{self.alias} {key_type} {key_b64}\n")
        host, port = listen
        self.addr = (host, port)
        self.config = os.path.join(self.dir, "sshd_config")
        with open(self.config, "w", encoding="ascii") as f:
            f.write(f"""Port {port}
ListenAddress {host}
HostKey {self.host_key}
PidFile none
AuthorizedKeysFile {self.authorized_keys}
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowTcpForwarding yes
MaxStartups 100
LogLevel INFO
""")
        # sshd needs its privilege-separation directory; a container may never have created it.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        ns.run([sshd, "-t", "-f", self.config])
        # sshd exits 255 on SIGTERM; it is a peer, not under test.
        self.proc = ns.process(h, name, [sshd, "-D", "-e", "-f", self.config])
        ns.wait_listening(self.addr, proc=self.proc)

    def client_argv(self, host, port, command, options=()):
        argv = ["ssh", "-F", "/dev/null", "-i", self.client_key, "-p", str(port),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"HostKeyAlias={self.alias}", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"]
        for opt in options:
            argv += ["-o", opt]
        return argv + [f"root@{host}", command]


# ---------------------------------------------------------------------------------------------------
# Topology


class Topology:
    """Owns namespaces, their /etc/netns dirs, and the processes started in them; `close()`
    removes all of it (idempotent)."""

    def __init__(self, label="t"):
        reason = unavailable_reason()
        if reason:
            raise unittest.SkipTest(reason)
        _install_hooks()
        sweep_stale()
        # pid: no clash with another live run; random: none with an earlier run of a reused pid.
        self.prefix = f"rdv{os.getpid()}-{secrets.token_hex(3)}"
        self.label = label
        self.namespaces = []
        self._processes = []
        self._links = 0
        self._closed = False
        with _live_lock:
            _live.add(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def namespace(self, short):
        """A new namespace with loopback up; `short` names it in logs and interface names."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,12}", short):
            raise ValueError(f"namespace short name {short!r}: 1-12 of [A-Za-z0-9_-]")
        name = f"{self.prefix}-{short}"
        _run(["ip", "netns", "add", name])
        ns = Namespace(self, short, name)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def link(self, a, b, net4, net6=None):
        """A veth pair between namespaces a and b, created directly inside them. `a` gets the first
        host address of each network, `b` the second. Returns (addr_a, addr_b) for IPv4, plus
        (addr6_a, addr6_b) when `net6` is given."""
        self._links += 1
        if_a = f"v{self._links}-{b.short}"[:15]
        if_b = f"v{self._links}-{a.short}"[:15]
        _run(["ip", "link", "add", if_a, "netns", a.name, "type", "veth",
              "peer", "name", if_b, "netns", b.name])
        result = []
        for net in (net4, net6):
            if net is None:
                continue
            n = ipaddress.ip_network(net)
            hosts = n.hosts()
            ha, hb = next(hosts), next(hosts)
            result.append(a.add_address(if_a, f"{ha}/{n.prefixlen}"))
            result.append(b.add_address(if_b, f"{hb}/{n.prefixlen}"))
        a.ip("link", "set", if_a, "up")
        b.ip("link", "set", if_b, "up")
        return tuple(result)

    def close(self):
        if self._closed:
            return
        self._closed = True
        errors = []
        # Whatever the harness did not stop already (teardown order, or we are in atexit).
        for proc in self._processes:
            try:
                if proc.alive():
                    proc.proc.kill()
                    proc.proc.wait(10)
            except Exception as e:  # noqa: BLE001
                errors.append(f"{proc.name}: {e!r}")
        for ns in reversed(self.namespaces):
            try:
                ns.close()
                _delete_namespace(ns.name)
            except Exception as e:  # noqa: BLE001
                errors.append(f"{ns.name}: {e!r}")
        with _live_lock:
            _live.discard(self)
        left = [ns.name for ns in self.namespaces
                if os.path.exists(os.path.join(NETNS_RUN_DIR, ns.name))
                or os.path.exists(os.path.join(NETNS_ETC_DIR, ns.name))]
        if left:
            errors.append(f"still present after teardown: {left}")
        if errors:
            raise AssertionError("netns teardown:\n" + "\n".join(errors))


def connected(sock):
    """For a socket from `Namespace.start_connect`: True once connected, False while the handshake
    is pending, raises the connect error if it failed."""
    import select
    _, writable, _ = select.select([], [sock], [], 0)
    if not writable:
        return False
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))
    return True
