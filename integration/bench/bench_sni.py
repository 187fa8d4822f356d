"""The `sni` phase of the benchmark (bench.py --only sni): HTTPS through SNI passthrough.

One nginx serves HTTPS (its own certificate, from a throwaway private CA). wrk (2 threads,
50 connections) fetches the small file through:

  direct      wrk -> nginx
  rendezvous  wrk -> rdv-relay tls entrypoint (routes by SNI) -> agent link -> rdv-agent -> nginx
  haproxy     wrk -> haproxy `mode tcp`, `tcp-request inspect-delay` + `req.ssl_sni` -> nginx

The TLS session is wrk's and nginx's in every case; the relay and HAProxy only read the
ClientHello and copy bytes. Two loads:

  https_sni_*       keep-alive connections (nginx keepalive_requests is raised so that they are
                    never recycled): the steady-state cost of carrying TLS records
  https_sni_conn_*  `Connection: close`, a new TCP connection and full TLS handshake per request:
                    the cost of reading the ClientHello and routing, next to the handshake itself

wrk takes the SNI from the URL's host, which must resolve, so the service is named `localhost`.
"""

import os
import re
import statistics
import sys

SNI_NAME = "localhost"
PATH = "/small.txt"

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import private_ca  # noqa: E402  (integration/private_ca.py)


def _start_nginx(b, m, cert, key):
    """HTTPS nginx serving the bench's small file; returns its port."""
    d = os.path.join(b.tmp, "nginx-sni")
    www = os.path.join(d, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, PATH.lstrip("/")), "wb") as f:
        f.write(m.HTTP_BODY)
    user = ""
    if os.geteuid() == 0:
        import grp
        import pwd
        user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    port = m.free_port()
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
    keepalive_requests 1000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl default_server;
        server_name _;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {www};
    }}
}}
""")
    p = m.Proc(b, "nginx-sni", ["nginx", "-p", d + "/", "-e", f"{d}/error.log", "-c", conf])
    p.wait_listening(port)
    return port


def _haproxy(b, m, target):
    port = m.free_port()
    cfg = os.path.join(b.tmp, f"{b.next_id('haproxy-sni')}.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
    nbthread {b.args.threads}
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend sni
    bind 127.0.0.1:{port}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req.ssl_hello_type 1 }}
    use_backend www if {{ req.ssl_sni -i {SNI_NAME} }}

backend www
    server nginx 127.0.0.1:{target}
""")
    p = m.Proc(b, "haproxy-sni", ["haproxy", "-f", cfg, "-db"])
    p.wait_listening(port)
    return port


def _rendezvous(b, m, target):
    rid = b.next_id("relay-sni")
    cfg = os.path.join(b.tmp, f"{rid}.yaml")
    with open(cfg, "w") as f:
        f.write(f"""relay_id: {rid}
state_dir: {b.tmp}/{rid}-state
workers: {b.args.threads}
log_level: info
agent_listener:
  listen: ["127.0.0.1:0"]
tls:
  listen: ["127.0.0.1:0"]
admin:
  listen: ["127.0.0.1:0"]
credentials:
  - name: bench
    secret: "{m.SECRET}"
    grants: ["tls:{SNI_NAME}"]
""")
    p = m.Proc(b, rid, [b.relay_binary("rdv-relay"), "--config", cfg], watch=True)
    relay = {"proc": p}
    for role in ("agent", "tls", "admin"):
        relay[role] = m.split_addr(p.wait_line(rf"listening {role} (\S+)\s*$").group(1))
    relay["fingerprint"] = p.wait_line(r"fingerprint (sha256:[0-9a-f]{64})").group(1)
    agent = b.start_agent(relay, [("tls", SNI_NAME, target)])
    b.wait_metric(relay, "rdv_links_active", 2, m.START_TIMEOUT, procs=[agent])
    return relay["tls"][1]


def _wrk(m, port, secs, fresh):
    url = f"https://{SNI_NAME}:{port}{PATH}"
    if not fresh:
        return m.wrk(url, secs)
    # wrk has no option for new connections; `Connection: close` makes nginx close after each
    # response and wrk reconnect.
    argv = ["wrk", "-t2", "-c50", f"-d{secs}s", "--latency", "-H", "Connection: close", url]
    out = m.run_tool(argv, secs + 60, "wrk")
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", out, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and p50 and p99):
        raise m.BenchError(f"cannot parse wrk output:\n{out}")
    if re.search(r"Non-2xx or 3xx responses", out):
        raise m.BenchError(f"wrk saw error responses:\n{out}")
    return float(rps.group(1)), m._wrk_ms(p50.group(1)), m._wrk_ms(p99.group(1))


def _check_get(m, port, cafile):
    """One HTTPS GET with SNI, certificate verified against the private CA."""
    import ssl
    import urllib.request
    ctx = ssl.create_default_context(cafile=cafile)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx))
    url = f"https://{SNI_NAME}:{port}{PATH}"
    try:
        with opener.open(url, timeout=10) as resp:
            body = resp.read()
    except Exception as e:
        raise m.BenchError(f"GET {url} failed: {e}") from e
    if body != m.HTTP_BODY:
        raise m.BenchError(f"GET {url}: the body differs from the file")


def phase_sni(b, m):
    """Runs the phase on Bench `b`; `m` is the bench module (its helpers and constants)."""
    ca = private_ca.PrivateCa(os.path.join(b.tmp, "sni-ca"))
    cert, key = ca.server(SNI_NAME)
    nginx = _start_nginx(b, m, cert, key)
    for system in b.args.systems:
        if system == "ssh":
            continue  # ssh -R is a port forward; it does not route by SNI

        def one(system=system):
            if system == "direct":
                port = nginx
            elif system == "rendezvous":
                port = _rendezvous(b, m, nginx)
            else:
                port = _haproxy(b, m, nginx)
            _check_get(m, port, ca.cert)
            for prefix, fresh in (("https_sni", False), ("https_sni_conn", True)):
                runs = [_wrk(m, port, b.args.duration, fresh) for _ in range(b.args.repeat)]
                b.emit(f"{prefix}_rps", system, statistics.median(r[0] for r in runs), "req/s")
                b.emit(f"{prefix}_p50_ms", system, statistics.median(r[1] for r in runs), "ms")
                b.emit(f"{prefix}_p99_ms", system, statistics.median(r[2] for r in runs), "ms")
        b.measure(f"sni {system}", one)
