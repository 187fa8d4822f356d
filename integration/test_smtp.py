#!/usr/bin/python3
"""The smtp entrypoint against two real Postfix instances, one per agent and domain.

Postfix A receives orang.com, Postfix B example.org, each into Maildirs (virtual delivery); each
sits behind its own agent, which registers the domain as an `smtp` service with PROXY protocol
(v1 for A, v2 for B), and Postfix reads that header (smtpd_upstream_proxy_protocol = haproxy).
swaks and smtplib send through the relay's smtp port: plain, STARTTLS, pipelined, a mixed-domain
transaction (451 for the second domain, delivered on its own retry), an unknown domain (550),
and garbage / over-long / too many commands refused and counted without disturbing a session
that runs at the same time. Bodies are compared byte for byte with the Maildir files.
"""

import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

MAX_COMMANDS = 20
CLIENT_IP = "127.0.0.2"  # the tests connect from here, so Postfix must log this address

MASTER_CF = """\
{listen} inet n - n - - smtpd
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
local     unix - n n - - local
virtual   unix - n n - - virtual
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class Postfix:
    """A private Postfix instance in a temp dir of its own: smtpd on a free loopback port behind
    PROXY protocol, virtual Maildir delivery for `domain` and its `users`. stop() stops it and
    removes the dir; it is safe to call more than once. With `direct_listener`, a second smtpd
    without PROXY protocol listens on `direct_port` (the benchmark's baseline); `settings` are
    more main.cf parameters."""

    def __init__(self, name, domain, users, direct_listener=False, settings=None):
        self.name, self.domain = name, domain
        self.dir = tempfile.mkdtemp(prefix=f"rdv-postfix-{name}-")
        os.chmod(self.dir, 0o755)  # the postfix user walks into the queue and data dirs
        self.etc = os.path.join(self.dir, "etc")
        self.queue = os.path.join(self.dir, "queue")
        self.data = os.path.join(self.dir, "data")
        self.mail = os.path.join(self.dir, "mail")
        self.maillog = os.path.join(self.dir, "maillog")
        self.running = False
        for d in (self.etc, self.queue, self.data, self.mail):
            os.makedirs(d)
        shutil.chown(self.data, "postfix")
        nobody = 65534
        os.chown(self.mail, nobody, nobody)
        self.port = harness.free_port()
        self.direct_port = harness.free_port() if direct_listener else None
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
            if direct_listener:
                f.write(f"127.0.0.1:{self.direct_port} inet n - n - - smtpd"
                        " -o smtpd_upstream_proxy_protocol=\n")
        with open(os.path.join(self.etc, "vmailbox"), "w") as f:
            for user in users:
                f.write(f"{user}@{domain} {domain}/{user}/\n")
        open(os.path.join(self.etc, "main.cf"), "w").close()
        main_cf = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue,
            "data_directory": self.data,
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.dir,
            "meta_directory": "/etc/postfix",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": f"{name}.private.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "virtual_mailbox_domains": domain,
            "virtual_mailbox_base": self.mail,
            "virtual_mailbox_maps": f"texthash:{self.etc}/vmailbox",
            "virtual_uid_maps": f"static:{nobody}",
            "virtual_gid_maps": f"static:{nobody}",
            "smtpd_upstream_proxy_protocol": "haproxy",
            "smtpd_peername_lookup": "no",
            "smtpd_banner": "$myhostname ESMTP",
        }
        main_cf.update(settings or {})
        subprocess.run(["postconf", "-c", self.etc, "-e"] + [f"{k}={v}" for k, v in main_cf.items()],
                       check=True, capture_output=True)
        self._postfix("start")
        self.running = True
        harness.wait_until(self._accepting, 20, f"postfix {name} accepting on {self.port}")

    def _postfix(self, command):
        # postfix(1) prints only to a terminal (or syslog); its log file has the details.
        p = subprocess.run(["postfix", "-c", self.etc, command], capture_output=True, timeout=60)
        if p.returncode != 0 and command == "start":
            raise AssertionError(f"postfix {self.name} {command} failed:\n{self.log_text()[-3000:]}")

    def _accepting(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def log_text(self):
        try:
            with open(self.maillog, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def messages(self, user):
        """Raw bytes of every message delivered to user@domain."""
        new = os.path.join(self.mail, self.domain, user, "new")
        if not os.path.isdir(new):
            return []
        out = []
        for name in sorted(os.listdir(new)):
            with open(os.path.join(new, name), "rb") as f:
                out.append(f.read())
        return out

    def all_messages(self):
        out = []
        for root, _, files in os.walk(self.mail):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    out.append(f.read())
        return out

    def wait_message(self, user, token, timeout=20):
        def find():
            return next((m for m in self.messages(user) if token.encode() in m), None)
        try:
            return harness.wait_until(find, timeout, f"{token} in {user}@{self.domain}'s Maildir")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- {self.name} maillog:\n{self.log_text()[-3000:]}") from None

    def has_token(self, token):
        return any(token.encode() in m for m in self.all_messages())

    def stop(self):
        if self.running:
            self.running = False
            pid_file = os.path.join(self.queue, "pid", "master.pid")
            self._postfix("stop")
            try:
                with open(pid_file) as f:
                    pid = int(f.read().strip())
                harness.wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 30,
                                   f"postfix {self.name} master exit")
            except (FileNotFoundError, ValueError):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def make_message(token, body):
    """A message with our own headers for swaks --data; returns (file text, body as it goes on
    the wire). swaks ends the data with CRLF "." itself, so the file omits the body's last CRLF."""
    head = (f"From: sender@client.test\r\nTo: rcpt@rcpt.test\r\nSubject: {token}\r\n"
            f"Message-ID: <{token}@client.test>\r\n")
    assert body.endswith("\r\n")
    return head + "\r\n" + body[:-2], body


def body_of(stored):
    """The body of a message as Postfix stored it (LF line ends; its own headers prepended)."""
    _, _, body = stored.partition(b"\n\n")
    return body


def default_body(token):
    lines = [f"Hello through the relay, {token}.", "", "Second paragraph; tabs\tand  spaces.",
             ".a line with a leading dot (swaks dot-stuffs it)", "x" * 900, "Last line."]
    return "\r\n".join(lines) + "\r\n"


def read_reply(f):
    """One SMTP reply from a socket file: (code, text of all lines)."""
    lines = []
    while True:
        line = f.readline()
        if not line:
            raise AssertionError(f"connection closed after {lines!r}")
        lines.append(line.decode("utf-8", "replace"))
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3]), "".join(lines)


class SmtpTest(harness.IntegrationTest):

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.pf_a = Postfix("mxa", "orang.com", ["alice", "carol"])
        cls.addClassCleanup(cls.pf_a.stop)
        cls.pf_b = Postfix("mxb", "example.org", ["bob"])
        cls.addClassCleanup(cls.pf_b.stop)
        cert, key = h.path("smtp-cert.pem"), h.path("smtp-key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert, "-days",
                        "2", "-subj", "/CN=mx.relay.test"], check=True, capture_output=True)
        cls.relay = h.relay(f"""\
            relay_id: relay-smtp
            state_dir: {h.path('relay-state')}
            log_level: {harness.LOG_LEVEL}
            workers: 1
            agent_listener:
              listen: ["127.0.0.1:0"]
            smtp:
              listen: ["127.0.0.1:0"]
              hostname: mx.relay.test
              cert_file: {cert}
              key_file: {key}
              max_commands: {MAX_COMMANDS}
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "orang-smtp-secret"
                grants: ["smtp:orang.com"]
              - name: example
                secret: "example-smtp-secret"
                grants: ["smtp:example.org"]
            """, name="relay")
        cls.smtp = cls.relay.address("smtp")
        cls.agent_admin = {}
        for name, cred, domain, pf, pp in (("agent-a", "orang", "orang.com", cls.pf_a, "v1"),
                                          ("agent-b", "example", "example.org", cls.pf_b, "v2")):
            admin_port = harness.free_port()
            agent = h.agent(textwrap.dedent(f"""\
                agent_id: {name}
                relays: ["{harness.format_addr(cls.relay.address('agent'))}"]
                relay_fingerprint: "sha256:{cls.relay.fingerprint}"
                credential: {{name: {cred}, secret: "{cred}-smtp-secret"}}
                log_level: {harness.LOG_LEVEL}
                admin: {{listen: "127.0.0.1:{admin_port}"}}
                services:
                  - {{name: {domain}, kind: smtp, target: "127.0.0.1:{pf.port}",
                      proxy_protocol: {pp}}}
                """), name=name)
            agent.wait_registered(domain, "smtp")
            cls.agent_admin[pf.name] = ("127.0.0.1", admin_port)

    def dump_logs(self):
        super().dump_logs()
        for pf in (self.pf_a, self.pf_b):
            print(f"--- {pf.name} maillog (tail):\n{pf.log_text()[-2500:]}", flush=True)

    # -- helpers -----------------------------------------------------------------------------

    def refusals(self, reason):
        return self.relay.metric("rdv_smtp_refusals_total", reason=reason)

    def swaks(self, to, token, body=None, extra=(), expect_ok=True):
        body = body if body is not None else default_body(token)
        text, body = make_message(token, body)
        path = self.h.path(f"{token}.eml")
        with open(path, "w", newline="") as f:
            f.write(text)
        argv = ["swaks", "--server", harness.format_addr(self.smtp), "--local-interface", CLIENT_IP,
                "--helo", "client.test", "--from", "sender@client.test", "--to", to,
                "--data", f"@{path}", "--timeout", "30"] + list(extra)
        p = subprocess.run(argv, capture_output=True, timeout=60)
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        if expect_ok and p.returncode != 0:
            raise AssertionError(f"swaks exited {p.returncode}:\n{out}")
        return p.returncode, out, body

    def assert_delivered_once(self, pf, user, token, body):
        stored = pf.wait_message(user, token)
        self.assertEqual(body_of(stored), body.replace("\r\n", "\n").encode(),
                         "the body in the Maildir differs from the body sent")
        others = [p for p in (self.pf_a, self.pf_b) if p is not pf]
        for other in others:
            self.assertFalse(other.has_token(token), f"{token} also landed at {other.name}")
        self.assertEqual(sum(token.encode() in m for m in pf.all_messages()), 1,
                         f"{token} delivered more than once at {pf.name}")

    # -- tests -------------------------------------------------------------------------------

    def envelopes(self, pf, result):
        """rdv_agent_smtp_envelopes_total{result} of the agent in front of `pf`."""
        return harness.metric_at(self.agent_admin[pf.name], "rdv_agent_smtp_envelopes_total",
                                 result=result)

    def test_plain_delivery_per_domain_and_real_client_address(self):
        token_a, token_b = f"plain-a-{uuid.uuid4().hex}", f"plain-b-{uuid.uuid4().hex}"
        before = {pf.name: self.envelopes(pf, "ok") for pf in (self.pf_a, self.pf_b)}
        _, out, body = self.swaks("alice@orang.com", token_a)
        self.assertIn("250 2.0.0 Ok: queued", out)
        self.assert_delivered_once(self.pf_a, "alice", token_a, body)
        _, _, body = self.swaks("bob@example.org", token_b)
        self.assert_delivered_once(self.pf_b, "bob", token_b, body)
        # Each agent opened its server's conversation from the envelope (Open.smtp) itself.
        for pf in (self.pf_a, self.pf_b):
            self.assertGreaterEqual(self.envelopes(pf, "ok"), before[pf.name] + 1, pf.name)
        for pf in (self.pf_a, self.pf_b):
            self.assertRegex(pf.log_text(), rf"connect from \S*\[{re.escape(CLIENT_IP)}\]",
                             f"{pf.name} did not log the real client address (PROXY protocol)")

    def test_starttls(self):
        token = f"tls-{uuid.uuid4().hex}"
        before = self.relay.metric("rdv_smtp_starttls_total", result="ok")
        _, out, body = self.swaks("bob@example.org", token, extra=["--tls"])
        self.assertIn("STARTTLS", out)
        self.assertRegex(out, r"TLS started")
        self.assert_delivered_once(self.pf_b, "bob", token, body)
        self.assertEqual(self.relay.metric("rdv_smtp_starttls_total", result="ok"), before + 1)

    def test_swaks_pipelining(self):
        token = f"pipe-{uuid.uuid4().hex}"
        _, out, body = self.swaks("carol@orang.com", token, extra=["--pipeline"])
        self.assert_delivered_once(self.pf_a, "carol", token, body)

    def test_mixed_domains_second_gets_451_and_retry_is_delivered(self):
        token = f"mixed-{uuid.uuid4().hex}"
        before = self.refusals("other_domain")
        rc, out, body = self.swaks("alice@orang.com,bob@example.org", token, expect_ok=False)
        self.assertRegex(out, r"<\*\* +451 4\.7\.1 <bob@example\.org>", out)
        self.assert_delivered_once(self.pf_a, "alice", token, body)
        self.assertFalse(self.pf_b.has_token(token))
        self.assertEqual(self.refusals("other_domain"), before + 1)
        self.swaks("bob@example.org", token)  # the sender's separate retry
        self.assertTrue(self.pf_b.wait_message("bob", token))

    def test_unknown_domain_550_nothing_delivered(self):
        token = f"unknown-{uuid.uuid4().hex}"
        before = self.refusals("unknown_domain")
        rc, out, _ = self.swaks("eve@unknown.test", token, expect_ok=False)
        self.assertNotEqual(rc, 0)
        self.assertRegex(out, r"<\*\* +550 5\.1\.2")
        self.assertEqual(self.refusals("unknown_domain"), before + 1)
        # The relay answered itself; no mail server saw a transaction for it.
        self.assertFalse(self.pf_a.has_token(token) or self.pf_b.has_token(token))

    def test_pipelined_replies_in_order_with_filtered_recipient_and_dot_stuffing(self):
        token = f"order-{uuid.uuid4().hex}"
        body = f"{token}\r\n.leading dot line\r\n..two dots\r\n.\tdot tab\r\nend\r\n"
        stuffed = body.replace("\r\n.", "\r\n..")
        with socket.create_connection(self.smtp, timeout=20,
                                      source_address=(CLIENT_IP, 0)) as sock:
            f = sock.makefile("rb")
            self.assertEqual(read_reply(f)[0], 220)
            sock.sendall(b"EHLO pipe.test\r\nMAIL FROM:<s@client.test>\r\n"
                         b"RCPT TO:<alice@orang.com>\r\nRCPT TO:<bob@example.org>\r\n"
                         b"RCPT TO:<nobody@orang.com>\r\nRCPT TO:<carol@ORANG.com>\r\nDATA\r\n")
            codes = [read_reply(f) for _ in range(7)]
            self.assertEqual([c for c, _ in codes], [250, 250, 250, 451, 550, 250, 354], codes)
            self.assertIn("PIPELINING", codes[0][1])
            self.assertNotIn("CHUNKING", codes[0][1])
            self.assertIn("User unknown", codes[4][1])  # Postfix's own answer, relayed
            sock.sendall(f"Subject: {token}\r\n\r\n{stuffed}.\r\nQUIT\r\n".encode())
            self.assertEqual(read_reply(f)[0], 250)
            self.assertEqual(read_reply(f)[0], 221)
        for user in ("alice", "carol"):
            stored = self.pf_a.wait_message(user, token)
            self.assertEqual(body_of(stored), body.replace("\r\n", "\n").encode())
        self.assertFalse(self.pf_b.has_token(token))

    def test_second_transaction_on_one_connection(self):
        token1, token2 = f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"
        with smtplib.SMTP(*self.smtp, source_address=(CLIENT_IP, 0), timeout=20) as client:
            client.ehlo("two.test")
            client.sendmail("s@client.test", ["alice@orang.com"],
                            f"Subject: {token1}\r\n\r\n{token1}\r\n")
            refused = client.sendmail("s@client.test", ["carol@orang.com", "bob@example.org"],
                                      f"Subject: {token2}\r\n\r\n{token2}\r\n")
            self.assertEqual(refused["bob@example.org"][0], 451)
        self.pf_a.wait_message("alice", token1)
        self.pf_a.wait_message("carol", token2)
        self.assertFalse(self.pf_b.has_token(token2))

    def test_refusals_do_not_disturb_a_concurrent_session(self):
        token = f"steady-{uuid.uuid4().hex}"
        good = smtplib.SMTP(*self.smtp, source_address=(CLIENT_IP, 0), timeout=20)
        try:
            good.ehlo("good.test")
            good.mail("s@client.test")
            self.assertEqual(good.rcpt("alice@orang.com")[0], 250)  # routed and spliced

            long_before = self.refusals("line_too_long")
            with socket.create_connection(self.smtp, timeout=20) as bad:
                f = bad.makefile("rb")
                read_reply(f)
                bad.sendall(b"EHLO " + b"a" * 2000 + b"\r\n")
                code, text = read_reply(f)
                self.assertEqual(code, 500, text)
                self.assertEqual(f.read(), b"", "the relay should close after a line too long")
            self.assertEqual(self.refusals("line_too_long"), long_before + 1)

            garbage_before = self.refusals("unknown_command")
            with socket.create_connection(self.smtp, timeout=20) as bad:
                f = bad.makefile("rb")
                read_reply(f)
                bad.sendall(b"\x16\x03\x01\x02\x00\x01\x00\xff\r\nGET / HTTP/1.1\r\n")
                self.assertEqual(read_reply(f)[0], 500)
                self.assertEqual(read_reply(f)[0], 500)
                bad.sendall(b"QUIT\r\n")
                self.assertEqual(read_reply(f)[0], 221)
            self.assertEqual(self.refusals("unknown_command"), garbage_before + 2)

            many_before = self.refusals("too_many_commands")
            with socket.create_connection(self.smtp, timeout=20) as bad:
                f = bad.makefile("rb")
                read_reply(f)
                bad.sendall(b"NOOP\r\n" * (MAX_COMMANDS + 5))
                codes = []
                while True:
                    line = f.readline()
                    if not line:
                        break
                    codes.append(int(line[:3]))
                self.assertEqual(codes, [250] * MAX_COMMANDS + [554])
            self.assertEqual(self.refusals("too_many_commands"), many_before + 1)

            code, _ = good.data(f"Subject: {token}\r\n\r\n{token}\r\n".encode())
            self.assertEqual(code, 250)
        finally:
            good.quit()
        self.pf_a.wait_message("alice", token)

    def test_answers_before_routing(self):
        with socket.create_connection(self.smtp, timeout=20) as sock:
            f = sock.makefile("rb")
            code, text = read_reply(f)
            self.assertEqual(code, 220)
            self.assertIn("mx.relay.test", text)
            sock.sendall(b"MAIL FROM:<s@client.test>\r\nHELO h.test\r\nNOOP\r\nVRFY bob\r\n"
                         b"HELP\r\nRCPT TO:<bob@example.org>\r\nMAIL FROM:<s@client.test> SIZE=999999999999\r\n"
                         b"MAIL FROM:<s@client.test>\r\nRSET\r\nRCPT TO:<bob@example.org>\r\n"
                         b"EXPN list\r\nQUIT\r\n")
            codes = [read_reply(f)[0] for _ in range(12)]
            self.assertEqual(codes, [503, 250, 250, 252, 214, 503, 552, 250, 250, 503, 502, 221])
            self.assertEqual(f.read(), b"")
        with socket.create_connection(self.smtp, timeout=20) as sock:
            f = sock.makefile("rb")
            read_reply(f)
            sock.sendall(b"EHLO e.test\r\n")
            code, text = read_reply(f)
            self.assertEqual(code, 250)
            for ext in ("PIPELINING", "SIZE 52428800", "8BITMIME", "STARTTLS"):
                self.assertIn(ext, text)
            for ext in ("CHUNKING", "SMTPUTF8", "DSN", "AUTH"):
                self.assertNotIn(ext, text)


class SmtpWorkersTest(harness.IntegrationTest):
    """Two relay workers, an agent with one link: connections accepted on the other worker are
    handed to the link's worker with their envelope (and after STARTTLS, their TLS state). Also
    the command timeout."""

    CONNECTIONS = 12  # each lands on either worker; all twelve on the link's worker: p = 1/4096

    @classmethod
    def setUpClass(cls):
        h = cls.shared_harness()
        cls.pf = Postfix("mxw", "orang.com", ["alice"])
        cls.addClassCleanup(cls.pf.stop)
        cert, key = h.path("smtp-cert.pem"), h.path("smtp-key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert, "-days",
                        "2", "-subj", "/CN=mx.relay.test"], check=True, capture_output=True)
        cls.relay = h.relay(f"""\
            relay_id: relay-smtp-workers
            state_dir: {h.path('relay-state')}
            log_level: {harness.LOG_LEVEL}
            workers: 2
            agent_listener:
              listen: ["127.0.0.1:0"]
            smtp:
              listen: ["127.0.0.1:0"]
              command_timeout_ms: 1500
              cert_file: {cert}
              key_file: {key}
            admin:
              listen: ["127.0.0.1:0"]
            credentials:
              - name: orang
                secret: "orang-smtp-secret"
                grants: ["smtp:orang.com"]
            """, name="relay")
        cls.smtp = cls.relay.address("smtp")
        agent = h.agent(textwrap.dedent(f"""\
            agent_id: agent-w
            relays: ["{harness.format_addr(cls.relay.address('agent'))}"]
            relay_fingerprint: "sha256:{cls.relay.fingerprint}"
            credential: {{name: orang, secret: "orang-smtp-secret"}}
            log_level: {harness.LOG_LEVEL}
            links: 1
            services:
              - {{name: orang.com, kind: smtp, target: "127.0.0.1:{cls.pf.port}",
                  proxy_protocol: v2}}
            """), name="agent-w")
        agent.wait_registered("orang.com", "smtp")

    def dump_logs(self):
        super().dump_logs()
        print(f"--- {self.pf.name} maillog (tail):\n{self.pf.log_text()[-2500:]}", flush=True)

    def test_plaintext_clients_on_either_worker_are_delivered(self):
        tokens = [f"worker-{i}-{uuid.uuid4().hex}" for i in range(self.CONNECTIONS)]
        before = self.relay.metric("rdv_worker_handoffs_total")
        for token in tokens:
            with socket.create_connection(self.smtp, timeout=20) as sock:
                f = sock.makefile("rb")
                self.assertEqual(read_reply(f)[0], 220)
                sock.sendall(b"EHLO w.test\r\n")
                self.assertEqual(read_reply(f)[0], 250)
                # DATA pipelined after the RCPT that routes: a hand-off carries the bytes the
                # first worker read but had not processed.
                sock.sendall(b"MAIL FROM:<s@client.test>\r\nRCPT TO:<alice@orang.com>\r\n"
                             b"DATA\r\n")
                self.assertEqual([read_reply(f)[0] for _ in range(3)], [250, 250, 354])
                sock.sendall(f"Subject: {token}\r\n\r\n{token}\r\n.\r\nQUIT\r\n".encode())
                self.assertEqual([read_reply(f)[0] for _ in range(2)], [250, 221])
        for token in tokens:
            self.pf.wait_message("alice", token)
        self.assertGreater(self.relay.metric("rdv_worker_handoffs_total"), before,
                           "no connection was handed between workers")

    def test_starttls_clients_on_either_worker_are_delivered(self):
        tokens = [f"worker-tls-{i}-{uuid.uuid4().hex}" for i in range(self.CONNECTIONS)]
        before = self.relay.metric("rdv_smtp_tls_handoffs_total")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        for token in tokens:
            with smtplib.SMTP(*self.smtp, timeout=20) as client:
                client.ehlo("w.test")
                client.starttls(context=context)
                client.ehlo("w.test")
                client.sendmail("s@client.test", ["alice@orang.com"],
                                f"Subject: {token}\r\n\r\n{token}\r\n")
        for token in tokens:
            self.pf.wait_message("alice", token)
        self.assertGreater(self.relay.metric("rdv_smtp_tls_handoffs_total"), before,
                           "no TLS client was handed between workers")

    def test_command_timeout(self):
        before = self.relay.metric("rdv_smtp_refusals_total", reason="timeout")
        with socket.create_connection(self.smtp, timeout=20) as sock:
            f = sock.makefile("rb")
            self.assertEqual(read_reply(f)[0], 220)
            sock.sendall(b"EHLO idle.test\r\n")
            self.assertEqual(read_reply(f)[0], 250)
            started = time.monotonic()
            code, text = read_reply(f)  # nothing more is sent: the relay times out
            self.assertEqual(code, 421, text)
            self.assertGreaterEqual(time.monotonic() - started, 1.0)
            self.assertEqual(f.read(), b"")
        self.assertEqual(self.relay.metric("rdv_smtp_refusals_total", reason="timeout"), before + 1)


if __name__ == "__main__":
    harness.main()
