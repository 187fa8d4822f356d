#!/usr/bin/python3
"""`/TUNNEL:<name>/` paths end to end: curl and headless Chromium -> rdv-relay -> rdv-agent -> nginx.

Topology:
  relay   http on 127.0.0.1:0 (zone relay.test)
  agent   www.orang.com   -> nginx (rewrite_html: true)
          plain.orang.com -> the same nginx (rewrite_html off: headers only)
          ws.orang.com    -> a websockets echo server (Upgrade inside the prefix)
  nginx   a small web app that only the agent can reach: index.html with a relative stylesheet, a
          root-relative script and image, links; /go (302), /login (cookie with Path=/account, 302
          to /account/), /account/ (echoes the cookie), /refresh, /gz (a gzip-encoded html body).
Chromium runs headless with its own profile; screenshots are kept in
<build>/integration-artifacts/tunnel/ (or $RDV_ARTIFACT_DIR).
"""

import gzip
import os
import re
import shutil
import subprocess
import sys
import textwrap

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SECRET = "orang-tunnel-secret"

INDEX = """\
<!DOCTYPE html>
<html><head><title>Orang</title>
<link rel="stylesheet" href="style.css">
<script src="/app.js"></script>
</head><body>
<h1 id="title">Orang through the tunnel</h1>
<p id="status">script did not run</p>
<p id="css">css unknown</p>
<p id="img">image unknown</p>
<img id="logo" src="/logo.svg" width="64" height="64" alt="logo">
<p><a id="landing" href="/landing.html">landing</a>
<a id="abs" href="http://www.orang.com/landing.html">absolute</a>
<a id="rel" href="landing.html">relative</a>
<a id="other" href="http://example.net/x">other</a></p>
<form id="form" action="/login" method="get"><img srcset="/logo.svg 1x, /logo.svg 2x" alt=""></form>
<script>var inline = '<a href="/not-rewritten">';</script>
</body></html>
"""

APP_JS = """\
window.addEventListener('load', function () {
  document.getElementById('status').textContent = 'script ran';
  var color = getComputedStyle(document.getElementById('title')).color;
  document.getElementById('css').textContent = 'css ' + color;
  var img = document.getElementById('logo');
  document.getElementById('img').textContent =
      'image ' + (img.complete && img.naturalWidth > 0 ? 'loaded' : 'missing');
});
"""

STYLE_CSS = "#title { color: rgb(1, 2, 3); } body { background: #ffcc88; font-family: sans-serif; }\n"

LOGO_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
            '<circle cx="32" cy="32" r="30" fill="#e60"/></svg>\n')

PATH_SCRIPT = ("<script>document.getElementById('path').textContent = "
               "'path ' + location.pathname;</script>")

LANDING = f"""\
<!DOCTYPE html>
<html><body><h1 id="landed">landed</h1><p id="path"></p>{PATH_SCRIPT}</body></html>
"""

LOCATIONS = """
root {site};
types {{ text/html html; text/css css; application/javascript js; image/svg+xml svg; }}
location = /go {{ return 302 /landing.html; }}
location = /login {{
    add_header Set-Cookie "session=s3cr3t; Path=/account; HttpOnly" always;
    add_header Set-Cookie "plain=1" always;
    return 302 /account/;
}}
location /account/ {{
    default_type text/html;
    if ($cookie_session) {{
        return 200 "<html><body><p id=c>cookie $cookie_session</p><p id=path></p>{script}</body></html>";
    }}
    return 200 "<html><body><p id=c>no cookie</p><p id=path></p>{script}</body></html>";
}}
location = /refresh {{
    add_header Refresh "0; url=/landing.html";
    add_header Content-Location /refresh.html;
    return 200 "refresh\\n";
}}
location = /gz {{
    default_type text/html;
    add_header Content-Encoding gzip;
}}
location = /echo {{
    return 200 "$http_host|$request_uri|$http_x_forwarded_host|$http_x_forwarded_prefix|$http_referer|$http_accept_encoding\\n";
}}
"""


def agent_yaml(relay, nginx_target, ws_target):
    return textwrap.dedent(f"""\
        agent_id: agent-tunnel
        relays: ["{harness.format_addr(relay.address('agent'))}"]
        relay_fingerprint: "sha256:{relay.fingerprint}"
        credential:
          name: orang
          secret: "{SECRET}"
        links: 1
        log_level: {harness.LOG_LEVEL}
        services:
          - name: www.orang.com
            kind: http
            target: {nginx_target}
            rewrite_html: true
          - name: plain.orang.com
            kind: http
            target: {nginx_target}
          - name: ws.orang.com
            kind: http
            target: {ws_target}
            rewrite_html: true
        """)


def artifact_dir():
    path = os.environ.get("RDV_ARTIFACT_DIR") or os.path.join(harness.BUILD_DIR,
                                                              "integration-artifacts", "tunnel")
    os.makedirs(path, exist_ok=True)
    return path


class TunnelTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        site = h.path("site")
        os.makedirs(os.path.join(site, "account"), exist_ok=True)
        for name, text in (("index.html", INDEX), ("app.js", APP_JS), ("style.css", STYLE_CSS),
                           ("logo.svg", LOGO_SVG), ("landing.html", LANDING)):
            with open(os.path.join(site, name), "w", encoding="utf-8") as f:
                f.write(text)
        with open(os.path.join(site, "gz"), "wb") as f:
            f.write(gzip.compress(b'<a href="/inside-gzip">x</a>'))
        cls.nginx = h.nginx(LOCATIONS.format(site=site, script=PATH_SCRIPT.replace('"', '\\"')),
                            name="nginx-app")
        cls.relay = h.relay(f"""\
            relay_id: relay-tunnel
            state_dir: {h.path('relay-state')}
            workers: 2
            log_level: {harness.LOG_LEVEL}
            agent_listener:
              listen: ["127.0.0.1:0"]
            http:
              listen: ["127.0.0.1:0"]
              zone: relay.test
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "{SECRET}"
                grants: ["http:*.orang.com", "http:www.orang.com"]
            """, name="relay")
        cls.http_addr = cls.relay.address("http")
        ws_target = harness.format_addr(h.ws_echo_server())
        cls.agent = h.agent(agent_yaml(cls.relay, cls.nginx.target(), ws_target), name="agent")
        cls.agent.wait_registered("www.orang.com", "http")
        cls.agent.wait_registered("plain.orang.com", "http")
        cls.agent.wait_registered("ws.orang.com", "http")
        cls.base = f"http://{harness.format_addr(cls.http_addr)}"
        cls.relay_host = harness.format_addr(cls.http_addr)

    # -- helpers -------------------------------------------------------------------------------

    def curl(self, path, args=()):
        return harness.curl(self.base + path, args=list(args))

    def head_and_body(self, path, args=()):
        """curl -i: (status, {lower-case name: [values]}, body)."""
        result = self.curl(path, ["-i", *args])
        self.assertEqual(result.rc, 0, result)
        head, _, body = result.body.replace("\r\n", "\n").partition("\n\n")
        headers = {}
        for line in head.split("\n")[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        return result.status, headers, body

    def chromium(self, url, *extra, profile="profile", budget_ms=5000):
        argv = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking",
                "--no-proxy-server", f"--user-data-dir={self.h.path(profile)}",
                f"--virtual-time-budget={budget_ms}", *extra, url]
        p = subprocess.run(argv, capture_output=True, timeout=120)
        return p.stdout.decode("utf-8", errors="replace")

    def dump_dom(self, path, profile="profile"):
        return self.chromium(self.base + path, "--dump-dom", profile=profile)

    # -- request side --------------------------------------------------------------------------

    def test_request_reaches_service_with_its_own_host_and_path(self):
        before = self.relay.metric("rdv_http_tunnel_requests_total") or 0
        referer = f"{self.base}/TUNNEL:www.orang.com/index.html"
        result = self.curl("/TUNNEL:www.orang.com/echo?x=1",
                           ["-H", f"Referer: {referer}", "-H", "Accept-Encoding: gzip"])
        self.assertEqual(result.status, 200, result)
        self.assertEqual(result.body.strip(),
                         f"www.orang.com|/echo?x=1|{self.relay_host}|/TUNNEL:www.orang.com|"
                         "http://www.orang.com/index.html|", result)
        # Without rewrite_html the client's Accept-Encoding is left alone.
        result = self.curl("/TUNNEL:plain.orang.com/echo", ["-H", "Accept-Encoding: gzip"])
        self.assertEqual(result.body.strip().split("|")[-1], "gzip", result)
        self.relay.wait_metric("rdv_http_tunnel_requests_total", lambda v: v >= before + 2)

    def test_any_relay_host_name(self):
        result = harness.curl(self.base + "/TUNNEL:www.orang.com/echo", host="whatever.example")
        self.assertEqual(result.status, 200, result)
        self.assertTrue(result.body.startswith("www.orang.com|/echo|whatever.example|"), result)

    def test_missing_slash_redirects(self):
        status, headers, _ = self.head_and_body("/TUNNEL:www.orang.com?a=b")
        self.assertEqual(status, 301)
        self.assertEqual(headers["location"], ["/TUNNEL:www.orang.com/?a=b"])

    def test_unknown_tunnel_is_404(self):
        before = self.relay.metric("rdv_http_errors_total", code="404") or 0
        for path in ("/TUNNEL:nosuch.example.net/", "/TUNNEL:/x", "/TUNNEL:bad%20name/"):
            result = self.curl(path)
            self.assertEqual(result.status, 404, f"{path}: {result}")
        self.relay.wait_metric("rdv_http_errors_total", lambda v: v >= before + 3, code="404")

    def test_direct_and_tunnelled_requests_on_one_connection(self):
        import http.client
        conn = http.client.HTTPConnection(*self.http_addr, timeout=10)
        try:
            for path, host, expect_prefix in (("/echo", "www.orang.com", ""),
                                              ("/TUNNEL:www.orang.com/echo", "relay", "/TUNNEL"),
                                              ("/TUNNEL:www.orang.com/echo", "relay", "/TUNNEL"),
                                              ("/echo", "www.orang.com", "")):
                conn.request("GET", path, headers={"Host": host})
                resp = conn.getresponse()
                fields = resp.read().decode().strip().split("|")
                self.assertEqual(resp.status, 200)
                self.assertEqual(fields[0], "www.orang.com")
                self.assertTrue(fields[3].startswith(expect_prefix), fields)
                self.assertFalse(resp.will_close)
        finally:
            conn.close()

    def test_websocket_inside_prefix(self):
        import asyncio
        import websockets

        async def run():
            url = f"ws://{self.relay_host}/TUNNEL:ws.orang.com/echo"
            async with websockets.connect(url, open_timeout=10, max_size=None) as ws:
                await ws.send("hello inside the prefix")
                self.assertEqual(await asyncio.wait_for(ws.recv(), 10), "hello inside the prefix")
                blob = os.urandom(128 * 1024)
                await ws.send(blob)
                self.assertEqual(await asyncio.wait_for(ws.recv(), 10), blob)
        asyncio.run(run())

    def test_head_and_post(self):
        result = self.curl("/TUNNEL:www.orang.com/", ["-I"])
        self.assertEqual(result.status, 200, result)
        result = self.curl("/TUNNEL:www.orang.com/echo", ["--data-binary", "x" * 100000])
        self.assertEqual(result.status, 200, result)
        self.assertTrue(result.body.startswith("www.orang.com|/echo|"), result)

    # -- response headers ----------------------------------------------------------------------

    def test_location_rewritten(self):
        for service in ("www.orang.com", "plain.orang.com"):
            status, headers, _ = self.head_and_body(f"/TUNNEL:{service}/go")
            self.assertEqual(status, 302)
            # nginx sends an absolute URL to its own host and port: it lands inside the prefix.
            self.assertEqual(headers["location"], [f"/TUNNEL:{service}/landing.html"], headers)

    def test_set_cookie_path_rewritten(self):
        status, headers, _ = self.head_and_body("/TUNNEL:www.orang.com/login")
        self.assertEqual(status, 302)
        self.assertEqual(sorted(headers["set-cookie"]),
                         ["plain=1; Path=/TUNNEL:www.orang.com/",
                          "session=s3cr3t; Path=/TUNNEL:www.orang.com/account; HttpOnly"])
        self.assertEqual(headers["location"], ["/TUNNEL:www.orang.com/account/"])
        # curl's cookie engine honours the rewritten paths.
        jar = self.h.path("curl-cookies")
        self.curl("/TUNNEL:www.orang.com/login", ["-c", jar])
        inside = self.curl("/TUNNEL:www.orang.com/account/", ["-b", jar])
        self.assertIn("cookie s3cr3t", inside.body)
        outside = self.curl("/TUNNEL:plain.orang.com/account/", ["-b", jar])
        self.assertIn("no cookie", outside.body)

    def test_refresh_and_content_location_rewritten(self):
        status, headers, _ = self.head_and_body("/TUNNEL:www.orang.com/refresh")
        self.assertEqual(status, 200)
        self.assertEqual(headers["refresh"], ["0; url=/TUNNEL:www.orang.com/landing.html"])
        self.assertEqual(headers["content-location"], ["/TUNNEL:www.orang.com/refresh.html"])

    def test_direct_requests_untouched(self):
        result = harness.curl(self.base + "/go", host="www.orang.com", args=["-i"])
        self.assertRegex(result.body, r"(?i)location: http://www\.orang\.com:\d+/landing\.html")

    # -- bodies --------------------------------------------------------------------------------

    def test_html_links_rewritten_and_chunked(self):
        status, headers, body = self.head_and_body("/TUNNEL:www.orang.com/")
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("transfer-encoding"), ["chunked"], headers)
        self.assertNotIn("content-length", headers)
        for fragment in ('href="style.css"', 'src="/TUNNEL:www.orang.com/app.js"',
                         'src="/TUNNEL:www.orang.com/logo.svg"',
                         'href="/TUNNEL:www.orang.com/landing.html"',
                         'id="abs" href="/TUNNEL:www.orang.com/landing.html"',
                         'href="landing.html"', 'href="http://example.net/x"',
                         'action="/TUNNEL:www.orang.com/login"',
                         'srcset="/TUNNEL:www.orang.com/logo.svg 1x, '
                         '/TUNNEL:www.orang.com/logo.svg 2x"',
                         "var inline = '<a href=\"/not-rewritten\">';"):
            self.assertIn(fragment, body)
        # Not HTML: untouched, with its own length.
        status, headers, body = self.head_and_body("/TUNNEL:www.orang.com/app.js")
        self.assertEqual(body, APP_JS)
        self.assertEqual(headers["content-length"], [str(len(APP_JS))])

    def test_html_untouched_without_rewrite_html(self):
        status, headers, body = self.head_and_body("/TUNNEL:plain.orang.com/")
        self.assertEqual(status, 200)
        self.assertEqual(body, INDEX)
        self.assertEqual(headers["content-length"], [str(len(INDEX))])

    def test_gzip_html_passes_untouched(self):
        result = self.curl("/TUNNEL:www.orang.com/gz", ["--compressed"])
        self.assertEqual(result.body, '<a href="/inside-gzip">x</a>')

    def test_http10_client_gets_close_delimited_html(self):
        with harness.connect(self.http_addr) as sock:
            sock.sendall(b"GET /TUNNEL:www.orang.com/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            response, how = harness.read_until_closed(sock, 10)
        head, _, body = response.partition(b"\r\n\r\n")
        self.assertEqual(how, "eof")
        self.assertNotIn(b"chunked", head.lower())
        self.assertNotIn(b"content-length", head.lower())
        self.assertIn(b'src="/TUNNEL:www.orang.com/app.js"', body)
        self.assertTrue(body.endswith(b"</html>\n"), body[-100:])

    def test_keep_alive_after_rewritten_body(self):
        import http.client
        conn = http.client.HTTPConnection(*self.http_addr, timeout=10)
        try:
            for _ in range(3):
                for path in ("/TUNNEL:www.orang.com/", "/TUNNEL:www.orang.com/style.css"):
                    conn.request("GET", path, headers={"Host": "relay.test"})
                    resp = conn.getresponse()
                    data = resp.read().decode()
                    self.assertEqual(resp.status, 200)
                    self.assertFalse(resp.will_close)
                    self.assertTrue(data.endswith("</html>\n") or data == STYLE_CSS, data[-80:])
        finally:
            conn.close()

    # -- a real browser ------------------------------------------------------------------------

    def test_chromium_page_with_rewriting(self):
        dom = self.dump_dom("/TUNNEL:www.orang.com/", profile="chromium-rewrite")
        self.assertIn("script ran", dom, dom)          # root-relative /app.js
        self.assertIn("css rgb(1, 2, 3)", dom, dom)    # relative style.css
        self.assertIn("image loaded", dom, dom)        # root-relative /logo.svg
        shot = os.path.join(artifact_dir(), "tunnel-index.png")
        if os.path.exists(shot):
            os.remove(shot)
        self.chromium(self.base + "/TUNNEL:www.orang.com/", f"--screenshot={shot}",
                      "--window-size=800,600", "--hide-scrollbars", profile="chromium-rewrite")
        self.assertTrue(os.path.exists(shot), f"no screenshot at {shot}")
        with open(shot, "rb") as f:
            png = f.read()
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        self.assertGreater(len(png), 3000, "screenshot suspiciously small")
        print(f"[tunnel] screenshot: {shot}", flush=True)

    def test_chromium_redirect_and_cookie(self):
        for service in ("www.orang.com", "plain.orang.com"):
            profile = f"chromium-cookie-{service}"
            dom = self.dump_dom(f"/TUNNEL:{service}/go", profile=profile)
            self.assertIn(f"path /TUNNEL:{service}/landing.html", dom, dom)
            # /login sets a cookie for Path=/account and redirects to /account/.
            dom = self.dump_dom(f"/TUNNEL:{service}/login", profile=profile)
            self.assertIn("cookie s3cr3t", dom, dom)
            self.assertIn(f"path /TUNNEL:{service}/account/", dom, dom)
        self.assertGreaterEqual(self.relay.metric("rdv_http_tunnel_html_rewritten_total"), 1)

    def test_chromium_page_without_rewriting(self):
        dom = self.dump_dom("/TUNNEL:plain.orang.com/", profile="chromium-plain")
        # Relative assets resolve inside the prefix; root-relative ones escape it (no rewriting).
        self.assertIn("css unknown", dom, dom)  # the script never ran...
        self.assertIn("script did not run", dom, dom)
        self.assertIn('href="/landing.html"', dom, dom)


if __name__ == "__main__":
    harness.main()
