"""billing-mailer against a real SMTP server: aiosmtpd (tests/smtp_server.py),
started here on loopback; plain, STARTTLS with a throwaway certificate and
AUTH, implicit TLS; and the refusals: server down, 4xx then success on a
later run, 5xx, a server that stalls.  Every delivered message is parsed
with Python's email package (a standard MIME parser): headers, encodings,
both parts, the escaped HTML, Message-ID stable across a retry; two
overlapping runs deliver each notification exactly once.  The first test
goes all the way: Stripe events into the real webhook.cgi, mails out.
"""
import datetime
import email
import email.policy
import email.utils
import html.parser
import json
import mailbox
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SmtpServer, Stack, Tap, free_port, program_env  # noqa: E402
from test_webhook import PRICE_PRO_MONTH, deliver, event  # noqa: E402

BUILDDIR = os.path.abspath(os.environ.get("BUILDDIR") or os.getcwd())
SRCDIR = os.environ.get("SRCDIR") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAILER = os.path.join(BUILDDIR, "bin", "billing-mailer")
CUS77 = "cus_TVr3Nq8HsK1pLe"

# Untrusted-looking text with every HTML special, a quote and non-ASCII.
APP = "Ada & <Bob>'s \"Pain\" Tracker \u2713"
ACCOUNT_URL = "https://app.example.test/account?tab=billing&lang=en"
INVOICE_URL = "https://invoice.stripe.com/i/acct_1/test_x?s=ap&lang=en"
MAIL = {
    "MAIL_FROM": "Pain Tracker Billing <billing@example.test>",
    "MAIL_REPLY_TO": "Support <support@example.test>",
    "MAIL_APP_NAME": APP,
    "MAIL_ACCOUNT_URL": ACCOUNT_URL,
    "MAIL_TEMPLATE_DIR": os.path.join(SRCDIR, "mail"),
    "SMTP_TIMEOUT": "5",
}
STACK_SETTINGS = {"STRIPE_SYNC_MODE": "event", "STRIPE_PRICE_PRO_MONTHLY": PRICE_PRO_MONTH,
                  "STRIPE_PRICE_ENTERPRISE_YEARLY": "price_1SZUaLkdIwHu7ixLJ4d8jOCs",
                  "NOTIFY_KINDS": "all"}
PAYLOAD = {"plan": "pro", "interval": "monthly", "amount": 1500, "currency": "usd",
           "hosted_invoice_url": INVOICE_URL, "invoice_number": "INV-0001",
           "trial_end": "2026-11-27T09:00:00Z", "ended_at": "2026-12-23T11:20:31Z"}
SUMMARY = re.compile(r"sent=(\d+) retry=(\d+) failed=(\d+) no_email=(\d+) due=(-?\d+)")
MSGID = re.compile(r"<billing\.(\d+)\.(\d+)@example\.test>")


# ---------------------------------------------------------------------------
# helpers

def sql_str(s):
    return "NULL" if s is None else "'" + str(s).replace("'", "''") + "'"


def reset(st):
    st.psql("TRUNCATE billing_events, subscriptions, customers, notifications RESTART IDENTITY")


def customer(st, user, email_addr):
    st.psql(f"INSERT INTO customers (user_id, stripe_customer_id, email) VALUES"
            f" ({sql_str(user)}, {sql_str('cus_' + user)}, {sql_str(email_addr)})")


def queue(st, kind="payment_failed", user="u1", payload=None, attempts=0):
    """A pending notification as the webhook writes it; returns its id."""
    p = json.dumps(PAYLOAD if payload is None else payload)
    return st.psql_one(
        f"INSERT INTO notifications (user_id, kind, payload, dedupe_key, attempts) VALUES"
        f" ({sql_str(user)}, {sql_str(kind)}, {sql_str(p)}::jsonb,"
        f" 'evt_' || md5(random()::text) || ':{kind}', {attempts}) RETURNING id")


def row(st, nid):
    r = st.psql(f"SELECT status, attempts, last_error, message_id, recipient,"
                f" extract(epoch FROM next_attempt_at - now())::int, sent_at IS NOT NULL"
                f" FROM notifications WHERE id = {nid}")[0]
    return {"status": r[0], "attempts": int(r[1]), "last_error": r[2], "message_id": r[3],
            "recipient": r[4], "due_in": int(r[5]), "sent_at": r[6] == "t"}


def mailer_env(st, url=None, env=None):
    return program_env({"TZ": "UTC", "DATABASE_URL": st.database_url}, MAIL,
                       {"SMTP_URL": url} if url else {}, env=env)


def mailer(st, url=None, *args, env=None, timeout=120):
    """Runs bin/billing-mailer; CompletedProcess (text) with .summary (tuple or None)."""
    p = subprocess.run([MAILER, *args], env=mailer_env(st, url, env), capture_output=True,
                       text=True, timeout=timeout)
    m = SUMMARY.search(p.stderr)
    p.summary = tuple(int(x) for x in m.groups()) if m else None
    return p


def smtp_url(srv, scheme="smtp", host=None):
    return f"{scheme}://{host or srv.host}:{srv.port}"


class Links(html.parser.HTMLParser):
    """hrefs as a browser reads them (character references decoded)."""

    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href")


def parse(raw):
    return email.message_from_bytes(raw, policy=email.policy.default)


def check_message(t, raw, label, to, subject, text_has=(), hrefs=()):
    """Everything the issue asks of a message; returns the parsed message."""
    msg = parse(raw)
    lines = raw.split(b"\r\n")
    t.ok(raw.endswith(b"\r\n") and b"\n" not in raw.replace(b"\r\n", b""),
         f"{label}: every line ends in CRLF")
    t.ok(max(len(x) for x in lines) <= 78, f"{label}: no line over 78 (SMTP allows 998)",
         max(lines, key=len))
    t.ok(all(b < 128 for b in raw), f"{label}: 7-bit clean on the wire")
    date = email.utils.parsedate_to_datetime(msg["Date"])
    age = abs((datetime.datetime.now(datetime.timezone.utc) - date).total_seconds())
    t.ok(age < 600, f"{label}: Date is now ({msg['Date']})")
    t.eq((msg["From"].addresses[0].addr_spec, msg["From"].addresses[0].display_name,
          msg["To"].addresses[0].addr_spec, msg["Reply-To"].addresses[0].addr_spec),
         ("billing@example.test", "Pain Tracker Billing", to, "support@example.test"),
         f"{label}: From, To, Reply-To")
    t.eq(str(msg["Subject"]), subject, f"{label}: Subject decodes to the template's words")
    if any(ord(c) > 127 for c in subject):
        t.ok(b"Subject: =?UTF-8?B?" in raw, f"{label}: non-ASCII Subject is RFC 2047-encoded")
    t.ok(MSGID.fullmatch(msg["Message-ID"] or "") is not None,
         f"{label}: Message-ID <billing.<id>.<created>@example.test>", msg["Message-ID"])
    t.eq((msg["MIME-Version"], msg["Auto-Submitted"], msg.get_content_type()),
         ("1.0", "auto-generated", "multipart/alternative"), f"{label}: MIME headers")
    parts = list(msg.iter_parts())
    t.eq([(p.get_content_type(), p.get_content_charset(), p["Content-Transfer-Encoding"])
          for p in parts],
         [("text/plain", "utf-8", "quoted-printable"), ("text/html", "utf-8", "quoted-printable")],
         f"{label}: text then HTML part, UTF-8, quoted-printable")
    defects = list(msg.defects) + [d for p in parts for d in p.defects]
    t.eq(defects, [], f"{label}: the parser found no defects")
    # Quoted-printable keeps the CRLF line breaks; compare with LF.
    text, html_part = (p.get_content().replace("\r\n", "\n") for p in parts)
    missing = [s for s in text_has if s not in text]
    t.eq(missing, [], f"{label}: text part has the values")
    t.ok(APP not in html_part and "Ada &amp; &lt;Bob&gt;&#39;s &quot;Pain&quot; Tracker \u2713"
         in html_part and "{{" not in html_part + text,
         f"{label}: HTML part has every interpolated value escaped")
    links = Links()
    links.feed(html_part)
    t.eq([h for h in hrefs if h not in links.hrefs], [],
         f"{label}: links read back exactly (escaped once, not twice)")
    return msg


def make_cert(directory):
    """A throwaway CA-less certificate for localhost, 127.0.0.1 and 127.0.0.2."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", key, "-out", cert, "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:127.0.0.2"],
                   check=True, capture_output=True)
    return cert, key


# ---------------------------------------------------------------------------
# tests

def test_webhook_to_inbox(t, st, tmp):
    """Stripe events -> webhook.cgi -> outbox -> billing-mailer -> SMTP, every kind."""
    reset(st)
    customer(st, "77", "user77@example.test")
    st.psql(f"UPDATE customers SET stripe_customer_id = '{CUS77}' WHERE user_id = '77'")
    for name in ("customer.subscription.created", "customer.subscription.updated",
                 "checkout.session.completed", "invoice.payment_failed", "customer.updated",
                 "customer.subscription.deleted", "customer.subscription.trial_will_end",
                 "invoice.payment_action_required"):
        r = deliver(st, event(name))
        t.eq(r.status, 200, f"webhook: {name} applied")
    with SmtpServer(os.path.join(tmp, "inbox")) as srv:
        p = mailer(st, smtp_url(srv))
        t.eq((p.returncode, p.summary), (0, (5, 0, 0, 0, 0)),
             "five notifications sent over plain SMTP to loopback, exit 0")
        got = {parse(raw)["X-Billing-Notification"]: raw for raw, meta in srv.accepted()}
        inv42 = event("invoice.payment_failed")["data"]["object"]["hosted_invoice_url"]
        inv77 = event("invoice.payment_action_required")["data"]["object"]["hosted_invoice_url"]
        expect = {
            "welcome": ("fortytwo@example.test", f"Welcome to {APP} Pro",
                        ["billed every month", ACCOUNT_URL], [ACCOUNT_URL]),
            "payment_failed": ("fortytwo@example.test", f"Your {APP} payment of 15.00 USD failed",
                               ["15.00 USD", "EXSAAS01-0002", inv42], [inv42, ACCOUNT_URL]),
            "subscription_canceled": ("fortytwo@example.test",
                                      f"Your {APP} subscription has ended",
                                      ["ended on 23 December 2026"], [ACCOUNT_URL]),
            "trial_will_end": ("user77@example.test",
                               f"Your {APP} trial ends on 27 November 2026",
                               ["Enterprise ends on 27 November 2026", "490.00 USD per year"],
                               [ACCOUNT_URL]),
            "payment_action_required": ("user77@example.test",
                                        f"Please confirm your {APP} payment of 490.00 USD",
                                        ["490.00 USD", "EXSAAS02-0002", inv77], [inv77]),
        }
        t.eq(sorted(got), sorted(expect), "one mail of each kind")
        for kind, (to, subject, text_has, hrefs) in expect.items():
            if kind in got:
                check_message(t, got[kind], kind, to, subject, text_has, hrefs)
        t.eq(sorted(tuple(m["rcpt_tos"]) + (m["mail_from"],) for _, m in srv.accepted()),
             sorted([("fortytwo@example.test", "billing@example.test")] * 3 +
                    [("user77@example.test", "billing@example.test")] * 2),
             "envelope: MAIL FROM is MAIL_FROM's address, RCPT TO the customer's current email")
        rows = st.psql("SELECT status, attempts, recipient, message_id FROM notifications ORDER BY id")
        sent_ids = sorted(parse(raw)["Message-ID"] for raw, _ in srv.accepted())
        t.eq(([r[:3] for r in rows if r[0] != "sent"], sorted(r[3] for r in rows)),
             ([], sent_ids), "every row sent, attempts 1, Message-ID recorded as sent")
        p = mailer(st, smtp_url(srv))
        t.eq((p.returncode, p.summary, len(srv.accepted())), (0, (0, 0, 0, 0, 0), 5),
             "a second run finds nothing due and sends nothing")


def test_rows_that_cannot_be_sent(t, st, tmp):
    reset(st)
    customer(st, "u1", "ada@example.test")
    no_user = queue(st, user=None)
    no_mail = queue(st, user="nobody-known")
    p = dict(PAYLOAD)
    del p["hosted_invoice_url"]
    no_url = queue(st, payload=p)
    ok = queue(st)
    with SmtpServer(os.path.join(tmp, "cannot")) as srv:
        r = mailer(st, smtp_url(srv))
        t.eq((r.returncode, r.summary), (1, (1, 0, 1, 2, 0)),
             "no user, no email, no invoice URL: exit 1; the good row is still sent")
        t.eq([(row(st, i)["status"], row(st, i)["attempts"]) for i in (no_user, no_mail)],
             [("no_email", 0), ("no_email", 0)], "rows without an address: no_email, not sent")
        t.ok("no email address" in (row(st, no_mail)["last_error"] or ""),
             "no_email rows say why")
        r2 = row(st, no_url)
        t.eq((r2["status"], "{{invoice_url}}" in (r2["last_error"] or "")), ("failed", True),
             "a payload without a value the template needs fails, naming the placeholder")
        t.eq((row(st, ok)["status"], len(srv.accepted())), ("sent", 1),
             "only the complete row reached the server")
        t.ok("nobody-known" not in r.stderr and "ada@" not in r.stderr,
             "log lines carry no user id or address", r.stderr)


def test_tls_and_auth(t, st, tmp):
    cert, key = make_cert(tmp)
    tls = ["--tls-cert", cert, "--tls-key", key]
    creds = {"SMTP_USERNAME": "mailer", "SMTP_PASSWORD": "s3cret pass", "SMTP_CA_FILE": cert}
    reset(st)
    customer(st, "u1", "ada@example.test")
    # A name that is not loopback to our rules (127.0.0.2): STARTTLS is required.
    with SmtpServer(os.path.join(tmp, "starttls"), *tls, "--starttls", "--require-starttls",
                    "--auth", "mailer:s3cret pass", host="127.0.0.2") as srv:
        a = queue(st)
        r = mailer(st, smtp_url(srv), env={"SMTP_CA_FILE": cert})
        t.eq((r.returncode, row(st, a)["status"], row(st, a)["attempts"]), (1, "pending", 1),
             "STARTTLS server requiring AUTH, no credentials: not sent, retried later")
        t.ok("AUTH" in (row(st, a)["last_error"] or "") or "530" in (row(st, a)["last_error"] or ""),
             "the reason names the refusal", row(st, a)["last_error"])
        st.psql("UPDATE notifications SET next_attempt_at = now()")
        r = mailer(st, smtp_url(srv), env=dict(creds, SMTP_PASSWORD="wr0ng-Pa55"))
        t.eq((r.returncode, row(st, a)["status"], row(st, a)["attempts"]), (1, "pending", 2),
             "wrong password: refused, the row waits (the settings are wrong, not the row)")
        t.ok("wr0ng-Pa55" not in r.stderr + (row(st, a)["last_error"] or ""),
             "the password is neither logged nor stored", r.stderr)
        st.psql("UPDATE notifications SET next_attempt_at = now()")
        r = mailer(st, smtp_url(srv), env={"SMTP_USERNAME": "mailer",
                                           "SMTP_PASSWORD": "s3cret pass"})
        t.eq((r.returncode, row(st, a)["status"], len(srv.accepted())), (1, "pending", 0),
             "certificate not trusted (no SMTP_CA_FILE): nothing sent")
        t.ok(re.search("certificate|SSL|TLS", row(st, a)["last_error"] or "", re.I),
             "the reason is the certificate", row(st, a)["last_error"])
        st.psql("UPDATE notifications SET next_attempt_at = now()")
        r = mailer(st, smtp_url(srv), env=creds)
        acc = srv.accepted()
        t.eq((r.returncode, row(st, a)["status"], len(acc)), (0, "sent", 1),
             "STARTTLS with SMTP_CA_FILE and AUTH: sent")
        t.eq((acc[0][1]["tls"], acc[0][1]["auth"]) if acc else None, (True, "mailer"),
             "the server saw TLS and our login")
        if acc:
            check_message(t, acc[0][0], "over STARTTLS", "ada@example.test",
                          f"Your {APP} payment of 15.00 USD failed", ["15.00 USD"], [INVOICE_URL])
    with SmtpServer(os.path.join(tmp, "plain2"), host="127.0.0.2") as plain:
        # The same address, no STARTTLS on offer, and a name that is not loopback to us.
        b = queue(st)
        r = mailer(st, f"smtp://127.0.0.2:{plain.port}", env=creds)
        t.eq((r.returncode, row(st, b)["status"], len(plain.accepted())), (1, "pending", 0),
             "smtp:// to a non-loopback host without STARTTLS: refused, nothing sent in clear")
        t.ok("STARTTLS" in (row(st, b)["last_error"] or ""), "the reason says STARTTLS",
             row(st, b)["last_error"])
    with SmtpServer(os.path.join(tmp, "smtps"), *tls, "--implicit-tls") as srv:
        st.psql("UPDATE notifications SET next_attempt_at = now()")
        r = mailer(st, smtp_url(srv, "smtps", "localhost"), env={"SMTP_CA_FILE": cert})
        acc = srv.accepted()
        t.eq((r.returncode, row(st, b)["status"], [m["tls"] for _, m in acc]), (0, "sent", [True]),
             "smtps:// (TLS from the first byte) with SMTP_CA_FILE: sent")


def test_server_down(t, st, tmp):
    reset(st)
    customer(st, "u1", "ada@example.test")
    ids = [queue(st) for _ in range(3)]
    r = mailer(st, f"smtp://127.0.0.1:{free_port()}", env={"MAIL_RETRY_SECONDS": "60"})
    first = row(st, ids[0])
    t.eq((r.returncode, r.summary[:4] if r.summary else None), (1, (0, 1, 0, 0)),
         "server down: exit 1, one row retried")
    t.ok(first["status"] == "pending" and first["attempts"] == 1 and 28 <= first["due_in"] <= 60,
         "the row waits 30..60 s (60 s halved plus jitter) before its next attempt", first)
    t.ok("connect" in (first["last_error"] or "").lower(), "the reason says connect",
         first["last_error"])
    t.eq([row(st, i)["attempts"] for i in ids[1:]], [0, 0],
         "the run stopped there: the other rows kept their attempts")
    t.ok("stopping this run" in r.stderr, "and said so", r.stderr)


def test_temporary_then_success(t, st, tmp):
    reset(st)
    customer(st, "u1", "ada@example.test")
    customer(st, "u2", "grey@example.test")
    a = queue(st)
    with SmtpServer(os.path.join(tmp, "tempfail"), "--data-reply-once",
                    "451 4.3.0 Try again later") as srv:
        r = mailer(st, smtp_url(srv))
        first = row(st, a)
        t.eq((r.returncode, first["status"], first["attempts"], len(srv.accepted())),
             (1, "pending", 1, 0), "451 to the message: exit 1, pending, nothing accepted")
        t.ok("451" in (first["last_error"] or "") and "Try again later" in first["last_error"],
             "the reason has the server's reply", first["last_error"])
        r = mailer(st, smtp_url(srv))
        t.eq((r.summary, row(st, a)["attempts"]), ((0, 0, 0, 0, 0), 1),
             "a run before next_attempt_at leaves it alone")
        st.psql(f"UPDATE notifications SET next_attempt_at = now() WHERE id = {a}")
        r = mailer(st, smtp_url(srv))
        later = row(st, a)
        t.eq((r.returncode, later["status"], later["attempts"], len(srv.accepted())),
             (0, "sent", 2, 1), "the next run after the backoff: sent on the second attempt")
        refused, accepted = srv.refused(), srv.accepted()
        if refused and accepted:
            m1, m2 = parse(refused[0][0]), parse(accepted[0][0])
            t.eq((m1["Message-ID"], later["message_id"]), (m2["Message-ID"], m2["Message-ID"]),
                 "the retry carries the same Message-ID (recorded in the row)")
            t.eq([p.get_content() for p in m1.iter_parts()],
                 [p.get_content() for p in m2.iter_parts()], "and the same content")
    # Greylisting: 450 to one recipient does not stop the run.
    b, c = queue(st, user="u2"), queue(st)
    with SmtpServer(os.path.join(tmp, "greylist"), "--rcpt-reply-once",
                    "grey@example.test=450 4.7.1 Greylisted, try later") as srv:
        r = mailer(st, smtp_url(srv))
        t.eq((r.returncode, row(st, b)["status"], row(st, c)["status"]), (1, "pending", "sent"),
             "450 at RCPT TO for one recipient: that row waits, the next is still sent")
        t.ok("450" in (row(st, b)["last_error"] or "") and "Greylisted" in row(st, b)["last_error"],
             "reason with the server's words", row(st, b)["last_error"])


def test_permanent(t, st, tmp):
    reset(st)
    customer(st, "u1", "ada@example.test")
    customer(st, "bad", "nobody@example.test")
    bad, good = queue(st, user="bad"), queue(st)
    with SmtpServer(os.path.join(tmp, "perm"), "--rcpt-reply",
                    "nobody@example.test=550 5.1.1 No such user here") as srv:
        r = mailer(st, smtp_url(srv))
        b = row(st, bad)
        t.eq((r.returncode, b["status"], b["attempts"], row(st, good)["status"]),
             (1, "failed", 1, "sent"), "550 at RCPT TO: that row failed for good, the next sent")
        t.ok("550" in (b["last_error"] or "") and "No such user here" in b["last_error"],
             "the reason has the code and the server's words", b["last_error"])
        st.psql("UPDATE notifications SET next_attempt_at = now()")
        r = mailer(st, smtp_url(srv))
        t.eq((r.summary, len(srv.accepted())), ((0, 0, 0, 0, 0), 1),
             "a failed row is never tried again by itself")
    # The last allowed attempt fails temporarily: failed, with both reasons.
    last = queue(st, attempts=2)
    with SmtpServer(os.path.join(tmp, "giveup"), "--rcpt-reply",
                    "ada@example.test=451 4.3.2 System not accepting messages") as srv:
        r = mailer(st, smtp_url(srv), env={"MAIL_MAX_ATTEMPTS": "3"})
        g = row(st, last)
        t.eq((r.returncode, g["status"], g["attempts"]), (1, "failed", 3),
             "MAIL_MAX_ATTEMPTS reached on a temporary failure: failed")
        t.ok((g["last_error"] or "").startswith("gave up after 3 attempts") and "451" in g["last_error"],
             "reason: gave up, with the last server reply", g["last_error"])


def test_stall(t, st, tmp):
    reset(st)
    customer(st, "u1", "ada@example.test")
    a, b = queue(st), queue(st)
    with SmtpServer(os.path.join(tmp, "stall"), "--stall", "60") as srv:
        t0 = time.monotonic()
        r = mailer(st, smtp_url(srv), env={"SMTP_TIMEOUT": "2"})
        took = time.monotonic() - t0
        t.ok(2 <= took < 8, f"a stalled server: the run ends after the 2 s timeout (took {took:.1f} s)")
        x = row(st, a)
        t.eq((r.returncode, x["status"], x["attempts"], row(st, b)["attempts"]), (1, "pending", 1, 0),
             "the row waits for a retry, the run stops, the next row is untouched")
        t.ok("timeout" in (x["last_error"] or ""), "reason: timeout", x["last_error"])


def test_slow_server_within_timeout(t, st, tmp):
    """A send slower than DB_IDLE_IN_TRANSACTION_TIMEOUT_MS but within SMTP_TIMEOUT."""
    reset(st)
    customer(st, "u1", "ada@example.test")
    a, b = queue(st), queue(st)
    with SmtpServer(os.path.join(tmp, "slow"), "--delay", "2.5") as srv:
        env = {"SMTP_TIMEOUT": "10", "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": "1000"}
        r = mailer(st, smtp_url(srv), env=env)
        t.eq((r.returncode, r.summary, row(st, a)["status"], row(st, b)["status"]),
             (0, (2, 0, 0, 0, 0), "sent", "sent"),
             "each mail took 2.5 s, the database's idle timeout is 1 s: both sent and recorded")
        r = mailer(st, smtp_url(srv), env=env)
        t.eq((r.summary, len(srv.accepted())), ((0, 0, 0, 0, 0), 2),
             "the next run sends neither again")


def test_overlapping_runs(t, st, tmp):
    reset(st)
    for i in range(40):
        customer(st, f"u{i}", f"user{i}@example.test")
        queue(st, user=f"u{i}")
    with SmtpServer(os.path.join(tmp, "overlap"), "--delay", "0.05") as srv:
        env = mailer_env(st, smtp_url(srv))
        procs = [subprocess.Popen([MAILER], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [(p.wait(120), p.stderr.read()) for p in procs]
        for p in procs:
            p.stderr.close()
        sums = [SUMMARY.search(err) for _, err in outs]
        sent = [int(m.group(1)) if m else -1 for m in sums]
        t.eq([rc for rc, _ in outs], [0, 0], "two runs at once: both exit 0")
        t.ok(min(sent) > 0 and sum(sent) == 40, f"both sent some, 40 in all ({sent})")
        ids = [parse(raw)["Message-ID"] for raw, _ in srv.accepted()]
        want = sorted(r[0] for r in st.psql("SELECT message_id FROM notifications"))
        t.eq((len(ids), len(set(ids)), sorted(ids) == want), (40, 40, True),
             "each notification delivered exactly once across the two runs")
        t.eq(st.psql("SELECT status, attempts, count(*) FROM notifications GROUP BY 1, 2"),
             [["sent", "1", "40"]], "every row sent on its first attempt")


def test_bounds(t, st, tmp):
    reset(st)
    customer(st, "u1", "ada@example.test")
    for _ in range(8):
        queue(st)
    with SmtpServer(os.path.join(tmp, "bounds"), "--delay", "0.4") as srv:
        r = mailer(st, smtp_url(srv), env={"MAIL_BATCH": "2"})
        t.eq((r.returncode, r.summary), (0, (2, 0, 0, 0, 6)),
             "MAIL_BATCH=2: two sent, six still due (the summary says so)")
        # Each mail takes at least 0.4 s, so a run that claims nothing after
        # 1 s sends one to three of the six, however slow its start was.
        t0 = time.monotonic()
        r = mailer(st, smtp_url(srv), env={"MAIL_MAX_SECONDS": "1"})
        took = time.monotonic() - t0
        t.ok(r.returncode == 0 and r.summary and 1 <= r.summary[0] <= 3 and
             r.summary[0] + r.summary[4] == 6 and took < 5,
             f"MAIL_MAX_SECONDS=1 with 0.4 s per mail: stops claiming after 1 s"
             f" ({r.summary}, {took:.1f} s)")


def test_dry_run(t, st, tmp):
    reset(st)
    customer(st, "u1", "ada@example.test")
    a = queue(st)
    b = queue(st, kind="welcome")
    c = queue(st, user="nobody-known")
    before = st.psql("SELECT * FROM notifications ORDER BY id")
    r = mailer(st, None, "--dry-run")
    t.eq(r.returncode, 1, "--dry-run without SMTP settings runs; exit 1: one row has no address")
    t.ok("no email address" in r.stderr, "the row without an address is named on stderr", r.stderr)
    path = os.path.join(tmp, "dry.mbox")
    with open(path, "w") as f:
        f.write(r.stdout)
    msgs = [parse(m.as_bytes()) for m in mailbox.mbox(path)]
    t.eq([m["X-Billing-Notification"] for m in msgs], ["payment_failed", "welcome"],
         "stdout is an mbox with the two mails that would go out")
    t.eq(st.psql("SELECT * FROM notifications ORDER BY id"), before, "--dry-run changed no row")
    _ = (a, b, c)
    reset(st)
    customer(st, "u1", "ada@example.test")
    queue(st)
    r = mailer(st, None, "--dry-run")
    t.eq((r.returncode, r.stdout.count("\nFrom billing-mailer ") + r.stdout.startswith("From ")),
         (0, 1), "--dry-run of a row that can be sent: exit 0")


def test_cannot_run(t, st, tmp):
    reset(st)
    customer(st, "u1", "ada@example.test")
    a = queue(st)
    bad_dir = os.path.join(tmp, "templates-bad")
    shutil.copytree(os.path.join(SRCDIR, "mail"), bad_dir)
    with open(os.path.join(bad_dir, "welcome.html"), "a+") as f:
        f.seek(0)
        bad_line = f.read().count("\n") + 1
        f.write("<p>{{plan_name}}</p>\n")
    missing_dir = os.path.join(tmp, "templates-missing")
    shutil.copytree(os.path.join(SRCDIR, "mail"), missing_dir)
    os.unlink(os.path.join(missing_dir, "trial_will_end.txt"))
    nosubject_dir = os.path.join(tmp, "templates-nosubject")
    shutil.copytree(os.path.join(SRCDIR, "mail"), nosubject_dir)
    with open(os.path.join(nosubject_dir, "welcome.txt"), "w") as f:
        f.write("Welcome to {{app_name}}\n")
    port = free_port()
    cases = [
        ("MAIL_FROM unset", {"MAIL_FROM": None}, "MAIL_FROM"),
        ("MAIL_FROM not an address", {"MAIL_FROM": "Billing <billing@>"}, "MAIL_FROM"),
        ("unknown placeholder", {"MAIL_TEMPLATE_DIR": bad_dir},
         f"welcome.html: line {bad_line}: unknown placeholder {{{{plan_name}}}}"),
        ("missing template", {"MAIL_TEMPLATE_DIR": missing_dir}, "trial_will_end.txt"),
        ("no Subject line", {"MAIL_TEMPLATE_DIR": nosubject_dir}, "Subject"),
        ("account_url used, MAIL_ACCOUNT_URL unset", {"MAIL_ACCOUNT_URL": None},
         "MAIL_ACCOUNT_URL"),
        ("SMTP_URL unset", {"SMTP_URL": None}, "SMTP_URL"),
        ("SMTP_URL http://", {"SMTP_URL": f"http://127.0.0.1:{port}"}, "SMTP_URL"),
        ("credentials in SMTP_URL", {"SMTP_URL": f"smtp://u:p@127.0.0.1:{port}"}, "SMTP_URL"),
        ("SMTP_USERNAME without SMTP_PASSWORD", {"SMTP_USERNAME": "u"}, "SMTP_PASSWORD"),
        ("SMTP_CA_FILE unreadable", {"SMTP_CA_FILE": "/nonexistent.pem"}, "SMTP_CA_FILE"),
        ("MAIL_BATCH not a number", {"MAIL_BATCH": "lots"}, "MAIL_BATCH"),
        # "\udcff" is the byte 0xff in the program's environment: not UTF-8.
        ("MAIL_APP_NAME not UTF-8", {"MAIL_APP_NAME": "Pain \udcff Tracker"}, "MAIL_APP_NAME"),
        ("MAIL_APP_NAME with a control character", {"MAIL_APP_NAME": "Pain\x01Tracker"},
         "MAIL_APP_NAME"),
        ("MAIL_FROM's name not UTF-8", {"MAIL_FROM": "B\udcffling <billing@example.test>"},
         "MAIL_FROM"),
        ("MAIL_REPLY_TO's name not UTF-8",
         {"MAIL_REPLY_TO": "S\udcffpport <support@example.test>"}, "MAIL_REPLY_TO"),
        ("database down", {"DATABASE_URL": "postgresql:///billing?host=/nonexistent"},
         "database"),
    ]
    for name, env, says in cases:
        r = mailer(st, f"smtp://127.0.0.1:{port}", env=env)
        t.eq(r.returncode, 2, f"could not run ({name}): exit 2")
        t.ok(says in r.stderr, f"  ... and stderr says {says!r}", r.stderr)
    r = mailer(st, f"smtp://127.0.0.1:{port}", "--bogus")
    t.ok(r.returncode == 2 and "usage" in r.stderr, "unknown option: usage, exit 2")
    x = row(st, a)
    t.eq((x["status"], x["attempts"]), ("pending", 0), "none of them touched the outbox")


def test_template_override(t, st, tmp):
    """MAIL_TEMPLATE_DIR: an operator's wording; long lines and "From " lines survive."""
    reset(st)
    customer(st, "u1", "ada@example.test")
    queue(st, kind="welcome")
    d = os.path.join(tmp, "templates-mine")
    shutil.copytree(os.path.join(SRCDIR, "mail"), d)
    subject = ("Bienvenue chez {{app_name}} \u2014 votre abonnement {{plan}} est actif, "
               "merci beaucoup et \u00e0 bient\u00f4t ") * 3
    long_line = "x" * 3000
    with open(os.path.join(d, "welcome.txt"), "w") as f:
        f.write(f"Subject: {subject}\n\nBonjour {{{{email}}}},\n{long_line}\n"
                f"From here on, {{{{plan}}}} is yours.\n.\n")
    with SmtpServer(os.path.join(tmp, "override")) as srv:
        r = mailer(st, smtp_url(srv), env={"MAIL_TEMPLATE_DIR": d})
        acc = srv.accepted()
        t.eq((r.returncode, len(acc)), (0, 1), "sent with the operator's templates")
        if acc:
            want_subject = subject.replace("{{app_name}}", APP).replace("{{plan}}", "Pro").strip()
            msg = check_message(t, acc[0][0], "reworded", "ada@example.test", want_subject,
                                ["Bonjour ada@example.test,", long_line,
                                 "From here on, Pro is yours.\n.\n"])
            t.ok(b"\r\n=46rom here on" in acc[0][0],
                 "a body line starting with \"From \" is encoded (mbox-safe)")
            _ = msg


def main():
    t = Tap()
    tmp = tempfile.mkdtemp(prefix="billing-mailer-test-")
    try:
        with Stack(settings=STACK_SETTINGS, apache=False, stripe=False) as st:
            for fn in (test_webhook_to_inbox, test_rows_that_cannot_be_sent, test_tls_and_auth,
                       test_server_down, test_temporary_then_success, test_permanent,
                       test_stall, test_slow_server_within_timeout, test_overlapping_runs,
                       test_bounds, test_dry_run, test_cannot_run, test_template_override):
                t.run(fn, t, st, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
