"""Integration-test harness for billing-cgi (Python 3.11 standard library only).

    import sys
    from harness import Tap, Stack, stripe_signature, make_jwt

    t = Tap()
    with t.guard("checkout"), Stack({"STRIPE_TRIAL_DAYS_PRO": "7"}) as st:
        r = st.http("POST", "/api/stripe/create-checkout-session",
                    headers={"Authorization": "Bearer " + make_jwt({"sub": "u1"})},
                    body={"userId": "u1", "tier": "pro", "interval": "monthly",
                          "successUrl": "https://app.example.test/ok",
                          "cancelUrl": "https://app.example.test/no"})
        t.eq(r.status, 200, "checkout answers 200")
    sys.exit(t.done())

Tap: ok(cond, name, diag=None), eq(got, want, name), skip(name, reason),
  diag(msg),
  guard(name) (context manager: an exception becomes one failed test), run(fn, *a),
  done() -> exit code (prints the plan "1..N" at the end).  An uncaught
  exception or a SIGTERM still ends the output with a failed test and a plan.

Stack(settings={}, apache=True, stripe=True, htaccess=False, *, builddir=None,
      srcdir=None, schema=True, simulator=False), a context manager, starts
  - PostgreSQL (Unix socket in the temp dir only; database billing, user
    billing, trust; sql/schema.sql applied): st.database_url, st.psql(sql) ->
    rows (lists of str, NULL -> None), st.psql_one(sql), st.pg_stop(), st.pg_stop_immediate(), st.pg_start()
  - the fake Stripe (tests/fake_stripe.py): st.stripe_base, st.stripe.reset(),
    .requests(), .fail(**rule) (mode, path, method, at, count, retry_after, ...),
    .put_subscription(id, obj), .create_subscriptions(specs or **spec) -> [subs],
    .put_customer(id, **fields), .put_price(id, **fields), .add_events(events),
    .decline(customer, code), .undecline(customer), .objects(), .events(),
    .call(method, path, body); the control API is documented in fake_stripe.py;
    simulator=True runs tests/simulator.py instead (the fake plus hosted pages, a
    clock and webhook delivery; its /_sim/ control API is documented there)
  - Apache httpd with the real apache/billing-cgi.conf (htaccess=True: a web
    root with apache/htaccess + cgi-bin/ with apache/cgi-bin.htaccess, the
    settings in a BILLING_CONFIG file; operators for the console in an htpasswd
    file, OPERATORS plus Stack(operators={user: password}), named by
    BILLING_ADMIN_HTPASSWD or cgi-bin/.htaccess's AuthUserFile): st.url(path), st.http(method, path,
    headers={}, body=b"") -> Resp, st.error_log() (CGI stderr lands there)
  - direct CGI runs: st.cgi(name, method="POST", body=b"", env={}, headers={},
    query="") -> Resp (+ .stderr, .returncode); st.cgi_raw(...) -> (stdout, stderr)
  st.settings: DEFAULT_SETTINGS + DATABASE_URL + STRIPE_API_BASE + the given
  ones (a None value removes a default; "{stripe_authority}" in a value becomes
  the fake's host:port, e.g. to allow redirects to the simulator's pages).  Resp: .status, .headers (lower-case
  keys), .body (bytes), .text, .json() (None if not JSON).
Everything is torn down on leaving the block (also on exceptions, SIGTERM and
SIGINT); after a failed test the log tails are printed as TAP diagnostics.
When run as root the servers run as an unprivileged user (postgres, else
nobody).  A PostgreSQL template cluster is cached per machine in
$TMPDIR/billing-harness-pg-<uid>-<key> (PG_TEMPLATE_CACHE=0: plain initdb).

SmtpServer(directory, *options), a context manager: tests/smtp_server.py (aiosmtpd)
  on loopback with that script's options: .host, .port, .accepted() and
  .refused() -> [(message bytes, envelope dict)], .stop(); smtp_python() is
  the interpreter that runs it.

Module helpers: stripe_signature(secret, payload, t=None), make_jwt(claims,
secret=None, alg="HS256", key_file=None, header=None), gen_keys(dir),
parse_cgi_output(bytes), processes_using(path), free_port(), parallel(n, fn)
(fn(i) for i < n on n threads released together; the results in order, an
exception in place of a result that raised).

Environment: BUILDDIR (build tree holding cgi-bin/*.cgi; default: cwd),
SRCDIR (source tree; default: the directory above this file), KEEP_TMP=1
(keep the temporary directories), APACHE_BIN / APACHE_MODULES / PG_BINDIR
(override where the servers are found), PGBOUNCER_BIN.
BILLING_TEST_APACHE chooses how Apache runs the programs (Stack(apache_mode=)
wins over it): "cgid" (default: event MPM + mod_cgid, Debian's default),
"cgi" (prefork MPM + mod_cgi), "fcgid" (event MPM + mod_fcgid with
apache/billing-fcgid.conf: the programs run as FastCGI processes) or
"proxy_fcgi" (event MPM + mod_proxy_fcgi with apache/billing-proxy-fcgi.conf:
each program's FastCGI processes started by spawn-fcgi and multiwatch, as
apache/billing-fcgi@.service starts them; st.spawners, st.fcgi_sockets).
BILLING_TEST_PGBOUNCER=1 (or Stack(pgbouncer=True)) puts PgBouncer in
transaction-pooling mode between the programs and PostgreSQL: the programs'
DATABASE_URL points at it (st.app_database_url), st.psql still goes direct.
"""

import atexit
import base64
import contextlib
import csv
import grp
import hashlib
import hmac
import http.client
import io
import json
import os
import pwd
import re
import select
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

__all__ = ["Tap", "Stack", "Resp", "PsqlError", "StackError", "stripe_signature", "parallel",
           "make_jwt", "gen_keys", "processes_using", "DEFAULT_SETTINGS", "SmtpServer",
           "smtp_python"]

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULT_SETTINGS = {
    "STRIPE_SECRET_KEY": "sk_test_harness",
    "STRIPE_WEBHOOK_SECRET": "whsec_test_harness",
    "STRIPE_PRICE_BASIC_MONTHLY": "price_basic_monthly",
    "STRIPE_PRICE_BASIC_YEARLY": "price_basic_yearly",
    "STRIPE_PRICE_PRO_MONTHLY": "price_pro_monthly",
    "STRIPE_PRICE_PRO_YEARLY": "price_pro_yearly",
    "AUTH_JWT_SECRET": "jwt-test-secret-0123456789abcdef0123456789",
    "ALLOWED_REDIRECT_HOSTS": "app.example.test",
    "CORS_ALLOWED_ORIGINS": "https://app.example.test",
    "USAGE_API_KEY": "usage-test-key-0123456789abcdef",
    # The suites send hundreds of requests as one user from one address: the
    # limits are checked on every request but never reached.
    # tests/test_ratelimit.py sets its own (and None brings the defaults back).
    "RATE_LIMIT_CHECKOUT": "1000000/1s",
    "RATE_LIMIT_CHECKOUT_IP": "1000000/1s",
    "RATE_LIMIT_USAGE": "1000000/1s",
    "RATE_LIMIT_USAGE_IP": "1000000/1s",
    "RATE_LIMIT_PORTAL": "1000000/1s",
    "RATE_LIMIT_PORTAL_IP": "1000000/1s",
    "RATE_LIMIT_SUBSCRIPTION": "1000000/1s",
    "RATE_LIMIT_SUBSCRIPTION_IP": "1000000/1s",
    "RATE_LIMIT_ADMIN": "1000000/1s",
    "RATE_LIMIT_ADMIN_IP": "1000000/1s",
}

# URL path of each endpoint (SCRIPT_NAME for st.cgi()).
ENDPOINTS = {
    "create-checkout-session": "/api/stripe/create-checkout-session",
    "webhook": "/api/stripe/webhook",
    "usage": "/api/usage",
    "portal-session": "/api/stripe/portal-session",
    "subscription": "/api/subscription",
    "metrics": "/metrics",
    "admin": "/admin",
}

# Operators Apache authenticates for the console (admin.cgi): user -> password,
# written to an htpasswd file (BILLING_ADMIN_HTPASSWD); Stack(operators=) adds more.
OPERATORS = {"operator": "operator-password"}

# How Apache runs the programs: MPM, CGI module, and the snippet to Include.
APACHE_MODES = {
    "cgid": ("mpm_event", "cgid", "billing-cgi.conf"),
    "cgi": ("mpm_prefork", "cgi", "billing-cgi.conf"),
    "fcgid": ("mpm_event", "fcgid", "billing-fcgid.conf"),
    "proxy_fcgi": ("mpm_event", "proxy_fcgi", "billing-proxy-fcgi.conf"),
}

# Passed through to CGIs (sanitizer builds) when set in our environment.
PASSTHROUGH_ENV = ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "MSAN_OPTIONS",
                   "LD_LIBRARY_PATH", "LD_PRELOAD")


def overlay(e, env):
    """Applies env to the environment e in place: a None value unsets."""
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = str(v)
    return e


def program_env(*layers, env=None):
    """The environment of one of our programs run directly: PATH and the
    sanitizer and loader variables passed through, each layer (a dict) in
    turn, then env (a None value unsets)."""
    e = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")}
    e.update({k: os.environ[k] for k in PASSTHROUGH_ENV if os.environ.get(k)})
    for layer in layers:
        e.update(layer)
    return overlay(e, env)


class StackError(RuntimeError):
    pass


class PsqlError(RuntimeError):
    def __init__(self, sql, returncode, stderr):
        super().__init__(f"psql failed ({returncode}): {stderr.strip()}\n  sql: {sql[:500]}")
        self.sql = sql
        self.returncode = returncode
        self.stderr = stderr


# ---------------------------------------------------------------------------
# TAP

_state = {"failures": 0}


def _diag_lines(text):
    for line in str(text).splitlines() or [""]:
        print("# " + line if line else "#", flush=True)


class Tap:
    """TAP producer; the plan is printed at the end by done().

    A test script that dies from an uncaught exception (or SIGTERM/SIGINT while
    a Stack is up) still ends with a failed test and a plan.
    """

    def __init__(self):
        self.n = 0
        self.failed = 0
        self.finished = False
        self._prev_hook = sys.excepthook
        sys.excepthook = self._excepthook
        atexit.register(self._atexit)

    def ok(self, cond, name, diag=None):
        self.n += 1
        name = str(name).replace("\n", " ").replace("#", "\\#")
        if cond:
            print(f"ok {self.n} - {name}", flush=True)
        else:
            self.failed += 1
            _state["failures"] += 1
            print(f"not ok {self.n} - {name}", flush=True)
            if diag is not None:
                _diag_lines(diag)
        return bool(cond)

    def eq(self, got, want, name):
        return self.ok(got == want, name, f"     got: {got!r}\nexpected: {want!r}")

    def skip(self, name, reason=""):
        self.n += 1
        print(f"ok {self.n} - {name} # SKIP {reason}", flush=True)

    def diag(self, msg):
        _diag_lines(msg)

    @contextlib.contextmanager
    def guard(self, name):
        """Run a block; an exception in it becomes one failed test (with the
        traceback as diagnostics) and the script goes on."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - report everything
            self.ok(False, f"{name}: uncaught {type(e).__name__}: {e}",
                    traceback.format_exc())

    def run(self, fn, *args, **kwargs):
        """Call fn(*args, **kwargs) under guard(fn.__name__)."""
        with self.guard(getattr(fn, "__name__", "test")):
            return fn(*args, **kwargs)

    def done(self):
        if not self.finished:
            self.finished = True
            print(f"1..{self.n}", flush=True)
        return 1 if self.failed else 0

    def _excepthook(self, etype, value, tb):
        if not self.finished:
            self.ok(False, f"uncaught {etype.__name__}: {value}",
                    "".join(traceback.format_exception(etype, value, tb)))
            self.done()
        self._prev_hook(etype, value, tb)

    def _atexit(self):
        if not self.finished:
            self.ok(False, "script ended before Tap.done() (interrupted?)")
            self.done()


# ---------------------------------------------------------------------------
# Stripe signatures, JWTs, keys


def stripe_signature(secret, payload, t=None):
    """Stripe-Signature header value: t=<ts>,v1=<hex hmac-sha256(secret, "<t>." + payload)>."""
    if isinstance(payload, str):
        payload = payload.encode()
    if t is None:
        t = int(time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _der_ecdsa_to_raw(der, size=32):
    """DER SEQUENCE{INTEGER r, INTEGER s} -> r||s, each `size` bytes."""

    def read_len(buf, i):
        n = buf[i]
        i += 1
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(buf[i:i + k], "big")
            i += k
        return n, i

    if der[0] != 0x30:
        raise ValueError("not a DER sequence")
    _, i = read_len(der, 1)
    out = b""
    for _ in range(2):
        if der[i] != 0x02:
            raise ValueError("not a DER integer")
        n, i = read_len(der, i + 1)
        v = der[i:i + n].lstrip(b"\x00")
        i += n
        if len(v) > size:
            raise ValueError("integer too long")
        out += v.rjust(size, b"\x00")
    return out


def make_jwt(claims, secret=None, alg="HS256", key_file=None, header=None):
    """A compact JWS. HS256 signs with `secret` (default: the harness's
    AUTH_JWT_SECRET); RS256/ES256 sign with the private PEM `key_file`
    (openssl); alg "none" gives an unsigned token. `header` adds/overrides
    header members (kid, typ, even alg for forgery tests)."""
    hdr = {"alg": alg, "typ": "JWT"}
    hdr.update(header or {})
    signing_input = (_b64url(json.dumps(hdr, separators=(",", ":")).encode()) + "." +
                     _b64url(json.dumps(claims, separators=(",", ":")).encode()))
    data = signing_input.encode()
    if alg == "HS256":
        key = DEFAULT_SETTINGS["AUTH_JWT_SECRET"] if secret is None else secret
        if isinstance(key, str):
            key = key.encode()
        sig = hmac.new(key, data, hashlib.sha256).digest()
    elif alg in ("RS256", "ES256"):
        if key_file is None:
            raise ValueError(f"{alg} needs key_file (a private key PEM)")
        p = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key_file], input=data,
                           capture_output=True, check=False)
        if p.returncode != 0:
            raise RuntimeError("openssl dgst -sign failed: " + p.stderr.decode(errors="replace"))
        sig = p.stdout if alg == "RS256" else _der_ecdsa_to_raw(p.stdout)
    elif alg == "none":
        sig = b""
    else:
        raise ValueError(f"unsupported alg {alg}")
    return signing_input + "." + _b64url(sig)


def gen_keys(directory):
    """Create an RSA 2048 and an EC P-256 key pair (PEM) in `directory`.
    Returns {"rsa_private", "rsa_public", "ec_private", "ec_public"} paths.
    Public keys are world-readable (the CGIs may run as another user)."""
    os.makedirs(directory, exist_ok=True)
    paths = {k: os.path.join(directory, f) for k, f in (
        ("rsa_private", "rsa.key.pem"), ("rsa_public", "rsa.pub.pem"),
        ("ec_private", "ec.key.pem"), ("ec_public", "ec.pub.pem"))}

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
        "-out", paths["rsa_private"])
    run("pkey", "-in", paths["rsa_private"], "-pubout", "-out", paths["rsa_public"])
    run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-pkeyopt", "ec_param_enc:named_curve", "-out", paths["ec_private"])
    run("pkey", "-in", paths["ec_private"], "-pubout", "-out", paths["ec_public"])
    for k in ("rsa_public", "ec_public"):
        os.chmod(paths[k], 0o644)
    return paths


# ---------------------------------------------------------------------------
# Responses


class Resp:
    """An HTTP answer (from Apache or from a directly run CGI)."""

    def __init__(self, status, headers, body, header_list=None, stderr="", returncode=None):
        self.status = status
        self.headers = headers            # dict, lower-case names, repeats joined with ", "
        self.header_list = header_list or list(headers.items())
        self.body = body                  # bytes
        self.stderr = stderr              # CGI stderr (st.cgi only)
        self.returncode = returncode      # CGI exit status (st.cgi only)

    @property
    def text(self):
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    def __repr__(self):
        return f"<Resp {self.status} {self.headers!r} {self.body[:200]!r}>"


def _header_dict(pairs):
    d = {}
    for k, v in pairs:
        k = k.lower()
        d[k] = f"{d[k]}, {v}" if k in d else v
    return d


def parse_cgi_output(out, stderr="", returncode=None):
    """Parse CGI stdout (RFC 3875 section 6): header lines, blank line, body.
    Unparseable output gives status None."""
    m = re.search(rb"\r?\n\r?\n", out)
    if not m and not out.startswith((b"\r\n", b"\n")):
        return Resp(None, {}, out, [], stderr, returncode)
    if m and not out.startswith((b"\r\n", b"\n")):
        head, body = out[:m.start()], out[m.end():]
    else:
        head, body = b"", out[2 if out.startswith(b"\r\n") else 1:]
    pairs = []
    for line in re.split(rb"\r?\n", head) if head else []:
        if b":" not in line:
            return Resp(None, {}, out, [], stderr, returncode)
        k, v = line.split(b":", 1)
        pairs.append((k.decode("latin-1").strip(), v.decode("latin-1").strip()))
    headers = _header_dict(pairs)
    status = 200
    if "status" in headers:
        try:
            status = int(headers["status"].split()[0])
        except (ValueError, IndexError):
            status = None
    elif "location" in headers:
        status = 302
    return Resp(status, headers, body, pairs, stderr, returncode)


def _body_bytes(body):
    """bytes/str as they are; dict/list as JSON."""
    if body is None:
        return b""
    if isinstance(body, (dict, list)):
        return json.dumps(body).encode()
    if isinstance(body, str):
        return body.encode()
    return bytes(body)


# ---------------------------------------------------------------------------
# Processes, users, ports


def parallel(n, fn):
    """fn(i) for i in range(n), each on its own thread, all released at once by
    a barrier (to race for real); the results in order.  An exception (a
    transport error) takes the place of the result it replaced."""
    out = [None] * n
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - the caller judges every outcome
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out


READ = 0  # x86_64 and most 64-bit Linux ABIs number read(2) 0


def syscall_of(pid):
    """The system call pid is blocked in (/proc/<pid>/syscall), or None."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            first = f.read().split()
    except OSError:
        return None
    return int(first[0]) if first and first[0].isdigit() else None


def wait_until(what, cond, seconds=10):
    """Polls cond (a server-side state we cannot be told about) until true."""
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


class LockHolder:
    """A psql session that holds a lock (sql, in a transaction) until
    release(); pid is its backend's."""

    _count = 0

    def __init__(self, st, sql, url=None):
        LockHolder._count += 1
        name = f"lockholder-{os.getpid()}-{LockHolder._count}"
        self.p = subprocess.Popen(st._psql_cmd(url) + ["-f", "-"], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=dict(_client_env(), PGAPPNAME=name))
        self.p.stdin.write(f"BEGIN;\n{sql};\n".encode())
        self.p.stdin.flush()
        # Held once this session is idle in its transaction after sql, not after BEGIN.
        ready = ("SELECT pid FROM pg_stat_activity WHERE application_name = '" + name + "'"
                 " AND state = 'idle in transaction' AND query NOT LIKE 'BEGIN%'")
        wait_until("the lock", lambda: st.psql_one(ready) is not None)
        self.pid = st.psql_one(ready)

    def release(self):
        """Rolls back (ends the lock) and waits for psql; again: nothing."""
        if not self.p.stdin.closed:
            try:
                self.p.stdin.write(b"ROLLBACK;\n")
                self.p.stdin.close()
            except OSError:
                pass
        self.p.wait(10)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_using(path):
    """PIDs of live processes whose command line mentions `path` or whose
    working directory is inside it."""
    path = os.path.realpath(path)
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            try:
                cwd = os.readlink(f"/proc/{d}/cwd")
            except OSError:
                cwd = ""
        except (OSError, IndexError):
            continue
        if path in cmd or cwd == path or cwd.startswith(path + "/"):
            pids.append(int(d))
    return pids


def _pdeathsig_prefix(sig):
    """Use setpriv so servers die with us even if we are SIGKILLed."""
    sp = shutil.which("setpriv")
    if not sp:
        return []
    return [sp, f"--pdeathsig={sig}", "--"]


def _client_env():
    """Our environment minus libpq's PG* variables (they could point psql
    elsewhere), in UTC."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGTZ"] = "UTC"
    return env


def _find_pg_bindir():
    cands = []
    if os.environ.get("PG_BINDIR"):
        cands.append(os.environ["PG_BINDIR"])
    try:
        cands.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                    check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    cands.append("/usr/lib/postgresql/15/bin")
    if os.path.isdir("/usr/lib/postgresql"):
        for v in sorted(os.listdir("/usr/lib/postgresql"), key=lambda s: -int(s) if s.isdigit() else 0):
            cands.append(f"/usr/lib/postgresql/{v}/bin")
    for c in cands:
        if c and os.access(os.path.join(c, "initdb"), os.X_OK):
            return c
    raise StackError("PostgreSQL server binaries (initdb) not found: apt-get install postgresql")


def _find_apache():
    b = os.environ.get("APACHE_BIN")
    cands = [b] if b else ["/usr/sbin/apache2", "/usr/sbin/httpd"]
    binary = next((c for c in cands if c and os.access(c, os.X_OK)), None)
    m = os.environ.get("APACHE_MODULES")
    mcands = [m] if m else ["/usr/lib/apache2/modules", "/usr/lib64/httpd/modules",
                            "/usr/lib/httpd/modules"]
    mods = next((c for c in mcands if c and os.path.exists(os.path.join(c, "mod_cgi.so"))), None)
    if not binary or not mods:
        raise StackError("Apache httpd not found: apt-get install apache2")
    return binary, mods


def fcgi_unit_command(srcdir, key, words):
    """The argv of apache/billing-fcgi@.service's ExecStart or ExecReload,
    each of words' keys ("%i", "${WORKERS}", "$MAINPID", a path) replaced
    by its value: proxy_fcgi mode runs exactly what the unit runs."""
    with open(os.path.join(srcdir, "apache", "billing-fcgi@.service")) as f:
        for line in f:
            if line.startswith(key + "="):
                argv = shlex.split(line[len(key) + 1:])
                break
        else:
            raise StackError(f"apache/billing-fcgi@.service has no {key}= line")
    for k, v in words.items():
        argv = [w.replace(k, v) for w in argv]
    return argv


def _apache_quote(value):
    """A double-quoted Apache config argument. httpd only knows \\" inside
    quotes, and expands ${NAME} everywhere, so some values cannot be said."""
    value = str(value)
    if any(c in value for c in "\r\n\0") or "${" in value or value.endswith("\\"):
        raise ValueError(f"value cannot be written to httpd.conf: {value!r}")
    return '"' + value.replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------
# SMTP server (aiosmtpd)


def smtp_python():
    """An interpreter that can import aiosmtpd: Debian's python3-aiosmtpd is in
    /usr/lib/python3/dist-packages, which a pyenv or venv python does not see.
    Ours if it can, else /usr/bin/python3; StackError (with the fix) if none."""
    for py in (sys.executable, "/usr/bin/python3"):
        if py and os.access(py, os.X_OK) and subprocess.run(
                [py, "-c", "import aiosmtpd"], capture_output=True).returncode == 0:
            return py
    raise StackError("no Python with aiosmtpd: apt-get install python3-aiosmtpd (tools/deps)")


class SmtpServer:
    """tests/smtp_server.py on loopback; options are that script's (see its doc)."""

    def __init__(self, directory, *options, host="127.0.0.1"):
        self.dir = directory
        self.host = host
        script = os.path.join(HERE, "smtp_server.py")
        os.makedirs(directory, exist_ok=True)
        self._log = open(os.path.join(directory, "server.log"), "ab")
        self._p = subprocess.Popen(
            _pdeathsig_prefix("TERM") + [smtp_python(), script, "--dir", directory,
                                          "--host", host, *options],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
            process_group=0)
        line = b""
        deadline = time.monotonic() + 15
        fd = self._p.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            r, _, _ = select.select([fd], [], [], max(left, 0))
            chunk = os.read(fd, 256) if r else b""
            if not chunk:
                self.stop()
                raise StackError("SMTP server did not start:\n" + open(
                    self._log.name, errors="replace").read()[-2000:])
            line += chunk
        m = re.fullmatch(rb"listening on [^ ]+:(\d+)\s*", line)
        if not m:
            self.stop()
            raise StackError(f"SMTP server said {line!r}")
        self.port = int(m.group(1))

    def _messages(self, where):
        d = os.path.join(self.dir, where)
        if not os.path.isdir(d):
            return []
        out = []
        for name in sorted(f for f in os.listdir(d) if f.endswith(".eml")):
            with open(os.path.join(d, name), "rb") as f:
                raw = f.read()
            with open(os.path.join(d, name[:-4] + ".json")) as f:
                out.append((raw, json.load(f)))
        return out

    def accepted(self):
        return self._messages("accepted")

    def refused(self):
        return self._messages("refused")

    def stop(self):
        p, self._p = self._p, None
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if p is not None:
            p.stdout.close()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


# ---------------------------------------------------------------------------
# Stack


class _Stripe:
    """Control API of the fake Stripe."""

    def __init__(self, base):
        self.base = base

    def _call(self, method, path, body=None):
        u = urllib.parse.urlsplit(self.base)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        try:
            data = None if body is None else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=hdrs)
            r = conn.getresponse()
            raw = r.read()
            if r.status >= 400:
                raise StackError(f"fake Stripe {method} {path}: {r.status} {raw[:300]!r}")
            try:
                return json.loads(raw) if raw else None
            except ValueError:
                return raw
        finally:
            conn.close()

    def reset(self):
        return self._call("POST", "/_fake/reset", {})

    def requests(self):
        return self._call("GET", "/_fake/requests")

    def fail(self, **kw):
        return self._call("POST", "/_fake/fail", kw)

    def put_subscription(self, sub_id, obj):
        return self._call("PUT", "/_fake/subscriptions/" + urllib.parse.quote(sub_id, safe=""), obj)

    def create_subscriptions(self, specs=None, **spec):
        """Stripe-shaped subscriptions from specs (a list) or one spec given as
        keywords (customer, price, status, created, count, events, ...)."""
        return self._call("POST", "/_fake/subscriptions", specs if specs is not None else spec)["data"]

    def put_customer(self, cus_id, **fields):
        return self._call("PUT", "/_fake/customers/" + urllib.parse.quote(cus_id, safe=""), fields)

    def put_price(self, price_id, **fields):
        return self._call("PUT", "/_fake/prices/" + urllib.parse.quote(price_id, safe=""), fields)

    def add_events(self, events):
        """Store events (a list, oldest first) for GET /v1/events; returns their ids."""
        return self._call("POST", "/_fake/events", events)["ids"]

    def decline(self, customer, decline_code="generic_decline"):
        """Make every payment of customer fail until undecline()."""
        return self._call("POST", "/_fake/decline", {"customer": customer, "decline_code": decline_code})

    def undecline(self, customer):
        return self._call("DELETE", "/_fake/decline/" + urllib.parse.quote(customer, safe=""))

    def objects(self):
        """Everything the fake holds: customers, subscriptions, billing_portal_sessions,
        invoices, invoice_previews, pending_invoice_items, prices, declines, events."""
        return self._call("GET", "/_fake/objects")

    def events(self, etype=None):
        """Events the fake recorded or was given, oldest first (optionally one type)."""
        return [e for e in self.objects()["events"] if etype is None or e["type"] == etype]

    def call(self, method, path, body=None):
        """Any other request to the fake (JSON in, JSON out)."""
        return self._call(method, path, body)


_live_stacks = set()


@atexit.register
def _close_live_stacks():
    for st in list(_live_stacks):
        st.close()


class Stack:
    """PostgreSQL + fake Stripe + Apache, torn down on exit (see module doc).

    Attributes: tmp (temp dir), builddir, srcdir, settings, database_url,
    stripe_base, stripe (control helper), port (Apache), cgi_bin, runas
    (pwd entry of the server user or None), error_log_path.
    """

    # proxy_fcgi mode: processes per program (multiwatch -f).
    proxy_fcgi_workers = 3

    def __init__(self, settings=None, apache=True, stripe=True, htaccess=False, *,
                 builddir=None, srcdir=None, schema=True, apache_mode=None, pgbouncer=None,
                 extra_apache_conf="", simulator=False, operators=None):
        self.extra_apache_conf = extra_apache_conf
        self.stripe_script = "simulator.py" if simulator else "fake_stripe.py"
        self.operators = dict(OPERATORS, **(operators or {}))
        self.htpasswd = None
        self.want_apache = apache
        self.apache_mode = apache_mode or os.environ.get("BILLING_TEST_APACHE") or "cgid"
        if self.apache_mode not in APACHE_MODES:
            raise StackError(f"unknown Apache mode {self.apache_mode!r} (one of {', '.join(APACHE_MODES)})")
        self.want_pgbouncer = (os.environ.get("BILLING_TEST_PGBOUNCER") == "1"
                               if pgbouncer is None else pgbouncer)
        self._pgb = None
        self.app_database_url = None
        self.want_stripe = stripe
        self.htaccess = htaccess
        self.want_schema = schema
        self.builddir = os.path.abspath(builddir or os.environ.get("BUILDDIR") or os.getcwd())
        self.srcdir = os.path.abspath(srcdir or os.environ.get("SRCDIR") or os.path.dirname(HERE))
        self._given = dict(settings or {})
        self.settings = {}
        self.tmp = None
        self.database_url = None
        self.stripe_base = None
        self.stripe = None
        self.port = None
        self.cgi_bin = os.path.join(self.builddir, "cgi-bin")
        self.schema_loaded = False
        self.error_log_path = None
        self._pg = self._httpd = self._fake = None
        self.spawners = {}
        self.fcgi_sockets = None
        self._logs = []
        self._closed = False
        self._old_handlers = {}
        self._fail_mark = 0
        self.runas = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self.runas = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self.runas is None:
                raise StackError("running as root but neither user postgres nor nobody exists")

    # -- context manager ----------------------------------------------------

    def __enter__(self):
        self._fail_mark = _state["failures"]
        self._install_signals()
        _live_stacks.add(self)
        try:
            self.start()
        except BaseException:
            self._report(True)
            self.close()
            raise
        return self

    def __exit__(self, etype, value, tb):
        self._report(etype is not None)
        self.close()
        return False

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            raise SystemExit(128 + signum)

        for s in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[s] = signal.signal(s, handler)

    def _restore_signals(self):
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers = {}

    # -- helpers --------------------------------------------------------------

    def _run_as_kw(self):
        if self.runas is None:
            return {}
        return {"user": self.runas.pw_uid, "group": self.runas.pw_gid, "extra_groups": []}

    def _chown(self, path):
        if self.runas is not None:
            os.chown(path, self.runas.pw_uid, self.runas.pw_gid)

    def _mkdir(self, *parts, mode=0o700):
        p = os.path.join(self.tmp, *parts)
        os.makedirs(p, mode=mode, exist_ok=True)
        os.chmod(p, mode)
        self._chown(p)
        return p

    def _write(self, path, text, mode=0o600):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        self._chown(path)

    def _server_env(self):
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
               "LANG": "C", "LC_ALL": "C", "TZ": "UTC", "HOME": self.tmp}
        return env

    def _reachable(self, path):
        """Can the server user read/traverse path (checks mode bits up the tree)?"""
        if self.runas is None:
            return os.access(path, os.R_OK)
        uid, gid = self.runas.pw_uid, self.runas.pw_gid
        groups = {g.gr_gid for g in grp.getgrall() if self.runas.pw_name in g.gr_mem}
        groups.add(gid)
        p = os.path.realpath(path)
        chain = [p]
        while p != "/":
            p = os.path.dirname(p)
            chain.append(p)
        for i, c in enumerate(chain):
            try:
                st = os.stat(c)
            except OSError:
                return False
            need = 0o4 if i == 0 and not os.path.isdir(c) else 0o5 if i == 0 else 0o1
            if st.st_uid == uid:
                bits = (st.st_mode >> 6) & 7
            elif st.st_gid in groups:
                bits = (st.st_mode >> 3) & 7
            else:
                bits = st.st_mode & 7
            if bits & need != need:
                return False
        return True

    def _log_open(self, name):
        p = os.path.join(self.tmp, "logs", name)
        f = open(p, "ab")
        self._logs.append(f)
        return f

    def _wait_proc(self, proc, timeout):
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _stop_proc(self, p, *steps):
        """Ask p to stop, one (signal, whole process group?, seconds to wait)
        step after another; SIGKILL its process group if it outlives them."""
        if p is None or p.poll() is not None:
            return
        for sig, group, seconds in steps:
            with contextlib.suppress(ProcessLookupError):
                (os.killpg if group else os.kill)(p.pid, sig)
            if self._wait_proc(p, seconds):
                return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()

    # -- start / stop --------------------------------------------------------

    def start(self):
        t0 = time.monotonic()
        self.tmp = tempfile.mkdtemp(prefix="billing-stack-")
        os.chmod(self.tmp, 0o711)
        self._chown(self.tmp)
        self._mkdir("logs")
        s = {}
        s.update(DEFAULT_SETTINGS)
        self.pg_bindir = _find_pg_bindir()
        # Overlap the slow parts: the fake and httpd start while PostgreSQL does.
        if self.want_stripe:
            self._fake_launch()
        self._pg_init()
        self.database_url = (f"postgresql:///billing?host={urllib.parse.quote(self.pg_run, safe='/')}"
                             f"&port={self.pg_port}&user=billing")
        if self.want_stripe:
            self._fake_wait()
            s["STRIPE_API_BASE"] = self.stripe_base
        else:
            s["STRIPE_API_BASE"] = "http://127.0.0.1:1"  # nothing listens: calls fail fast
        self.app_database_url = self.database_url
        if self.want_pgbouncer:
            self._pgb_prepare()
            self.app_database_url = (f"postgresql:///billing?host={urllib.parse.quote(self.pgb_run, safe='/')}"
                                     f"&port={self.pgb_port}&user=billing")
        s["DATABASE_URL"] = self.app_database_url
        authority = urllib.parse.urlsplit(s["STRIPE_API_BASE"]).netloc
        for k, v in self._given.items():
            if v is None:
                s.pop(k, None)
            else:
                s[k] = str(v).replace("{stripe_authority}", authority)
        self.settings = s
        if self.want_apache:
            self._apache_prepare()
            if self.apache_mode == "proxy_fcgi":
                self._spawners_start()
            self._apache_launch()
        self.pg_start()
        self._pg_create_db()
        if self.want_pgbouncer:
            self._pgb_start()
        if self.want_apache:
            self._spawners_wait()
            self._apache_wait()
        self.startup_seconds = time.monotonic() - t0

    def close(self):
        if self._closed:
            return
        self._closed = True
        _live_stacks.discard(self)
        # A second Ctrl-C must not interrupt the teardown.
        if self._old_handlers:
            for s in self._old_handlers:
                signal.signal(s, signal.SIG_IGN)
        try:
            self._apache_stop()
            self._spawners_stop()
            self._fake_stop()
            self._pgb_stop()
            self.pg_stop()
        finally:
            for f in self._logs:
                with contextlib.suppress(Exception):
                    f.close()
            if self.tmp and os.path.isdir(self.tmp):
                if os.environ.get("KEEP_TMP") == "1":
                    _diag_lines(f"KEEP_TMP=1: stack files kept in {self.tmp}")
                else:
                    shutil.rmtree(self.tmp, ignore_errors=True)
            self._restore_signals()

    def _report(self, exception):
        if not self.tmp or not (exception or _state["failures"] > self._fail_mark):
            return
        for title, path, n in (("Apache error log", self.error_log_path, 40),
                               ("fake Stripe log", os.path.join(self.tmp, "logs", "fake_stripe.log"), 15),
                               ("FastCGI spawners' log", os.path.join(self.tmp, "logs", "spawners.out"), 15),
                               ("PostgreSQL log", os.path.join(self.tmp, "logs", "postgres.log"), 15)):
            if not path or not os.path.exists(path):
                continue
            with open(path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()[-n:]
            if lines:
                _diag_lines(f"--- {title} (last {len(lines)} lines of {path}) ---")
                _diag_lines("\n".join(lines))

    # -- PostgreSQL -----------------------------------------------------------

    INITDB_ARGS = ["-A", "trust", "-U", "billing", "--no-sync", "-E", "UTF8", "--locale=C",
                   "--no-instructions", "--wal-segsize=1"]

    def _initdb(self, datadir, log):
        p = subprocess.run([os.path.join(self.pg_bindir, "initdb"), "-D", datadir, *self.INITDB_ARGS],
                           stdout=log, stderr=subprocess.STDOUT, env=self._server_env(),
                           cwd=self.tmp, **self._run_as_kw())
        if p.returncode != 0:
            log.flush()
            raise StackError("initdb failed:\n" + open(log.name).read()[-2000:])

    def _pg_template(self, log):
        """A cluster made by initdb with database billing already created,
        cached per machine in $TMPDIR/billing-harness-pg-<uid>-<key> (made
        once, copied by every Stack: initdb is most of the start-up time).
        PG_TEMPLATE_CACHE=0 turns it off. None when unavailable."""
        if os.environ.get("PG_TEMPLATE_CACHE") == "0":
            return None
        initdb = os.path.join(self.pg_bindir, "initdb")
        try:
            ver = subprocess.run([initdb, "--version"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
        uid = self.runas.pw_uid if self.runas else os.getuid()
        key = hashlib.sha256(f"v1|{initdb}|{ver}|{self.INITDB_ARGS}".encode()).hexdigest()[:16]
        path = os.path.join(tempfile.gettempdir(), f"billing-harness-pg-{uid}-{key}")

        def usable(p):
            try:
                st = os.lstat(p)
            except OSError:
                return False
            return (stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077
                    and os.path.exists(os.path.join(p, "complete")))

        if usable(path):
            return path
        work = tempfile.mkdtemp(prefix=os.path.basename(path) + ".new-", dir=os.path.dirname(path))
        try:
            self._chown(work)
            data = os.path.join(work, "pgdata")
            os.mkdir(data, 0o700)
            self._chown(data)
            self._initdb(data, log)
            pg_ctl = os.path.join(self.pg_bindir, "pg_ctl")
            port = free_port()
            opts = f"-c listen_addresses='' -k {work} -p {port} -c fsync=off"
            kw = dict(stdout=log, stderr=subprocess.STDOUT, env=self._server_env(), cwd=work,
                      **self._run_as_kw())
            if subprocess.run([pg_ctl, "-D", data, "-o", opts, "-w", "-t", "60", "start"], **kw).returncode:
                raise StackError("template postgres did not start")
            try:
                self.psql("CREATE DATABASE billing",
                          url=f"postgresql:///postgres?host={work}&port={port}&user=billing")
                # Less to copy per Stack; nothing here uses it.
                self.psql("DROP DATABASE postgres",
                          url=f"postgresql:///billing?host={work}&port={port}&user=billing")
            finally:
                subprocess.run([pg_ctl, "-D", data, "-m", "fast", "-w", "stop"], **kw)
            for junk in ("postmaster.opts", "postmaster.pid"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(data, junk))
            with open(os.path.join(work, "complete"), "w"):
                pass
            os.chmod(work, 0o700)
            try:
                os.rename(work, path)
            except OSError:
                pass  # another Stack made it first
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return path if usable(path) else None

    def _pg_init(self):
        self.pg_run = self._mkdir("run", mode=0o711)
        self.pg_port = free_port()
        self.pg_data = os.path.join(self.tmp, "pgdata")
        log = self._log_open("initdb.log")
        template = None
        with contextlib.suppress(StackError, OSError, PsqlError):
            template = self._pg_template(log)
        self._db_created = template is not None
        if template:
            # cp -a keeps the owner (root copying for the server user).
            subprocess.run(["cp", "-a", os.path.join(template, "pgdata"), self.pg_data],
                           check=True)
        else:
            self._mkdir("pgdata")
            self._initdb(self.pg_data, log)
        with open(os.path.join(self.pg_data, "postgresql.conf"), "a") as f:
            f.write(f"""
# billing-cgi test harness
listen_addresses = ''
unix_socket_directories = '{self.pg_run}'
port = {self.pg_port}
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
shared_buffers = 32MB
dynamic_shared_memory_type = mmap
timezone = 'UTC'
log_timezone = 'UTC'
# As the README recommends: a CGI starts a backend per request, and every
# request calls PL/pgSQL; loaded once in the postmaster, not per backend.
shared_preload_libraries = 'plpgsql'
logging_collector = off
log_checkpoints = off
""")

    def pg_start(self):
        """Start (or restart after pg_stop) the PostgreSQL server."""
        if self._pg is not None and self._pg.poll() is None:
            return
        log = self._log_open("postgres.log")
        pidfile = os.path.join(self.pg_data, "postmaster.pid")
        self._pg = subprocess.Popen(
            _pdeathsig_prefix("QUIT") + [os.path.join(self.pg_bindir, "postgres"), "-D", self.pg_data],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.pg_data,
            env=self._server_env(), process_group=0, **self._run_as_kw())
        deadline = time.monotonic() + 30
        while True:
            if self._pg.poll() is not None:
                raise StackError(f"postgres exited ({self._pg.returncode}):\n" +
                                 open(log.name, errors="replace").read()[-2000:])
            try:
                with open(pidfile) as f:
                    lines = f.read().split("\n")
                if len(lines) > 7 and lines[7].strip() == "ready":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StackError("postgres did not become ready in 30 s")
            time.sleep(0.02)

    def pg_stop(self):
        """Stop the PostgreSQL server (fast shutdown); data stays."""
        p, self._pg = self._pg, None
        self._stop_proc(p, (signal.SIGINT, False, 20), (signal.SIGQUIT, False, 5))

    def retry_while_pooler_recovers(self, call, seconds=5.0):
        """Through PgBouncer, right after PostgreSQL comes back: repeat call()
        while it answers 503, for at most `seconds` (PgBouncer refuses
        logins until its next retry, server_login_retry); the last answer."""
        deadline = time.monotonic() + seconds
        r = call()
        while r.status == 503 and time.monotonic() < deadline:
            time.sleep(0.1)
            r = call()
        return r

    def pg_stop_immediate(self):
        """Kill the PostgreSQL server as a crash would (immediate shutdown:
        no goodbye to clients, recovery at the next start); data stays."""
        p, self._pg = self._pg, None
        self._stop_proc(p, (signal.SIGQUIT, False, 10))

    def _pg_create_db(self):
        if not self._db_created:
            url = self.database_url.replace("/billing?", "/postgres?", 1)
            self.psql("CREATE DATABASE billing STRATEGY FILE_COPY", url=url)
        schema = os.path.join(self.srcdir, "sql", "schema.sql")
        if self.want_schema and os.path.exists(schema):
            self.psql_file(schema)
            self.schema_loaded = True

    def _psql_cmd(self, url):
        return [os.path.join(self.pg_bindir, "psql"), "-X", "-q", "--csv", "-t",
                "-v", "ON_ERROR_STOP=1", "-P", "null=\x1d", "-d", url or self.database_url]

    def psql(self, sql, url=None):
        """Run SQL (several statements allowed); the rows of all result sets
        as lists of strings (SQL NULL -> None). Raises PsqlError."""
        p = subprocess.run(self._psql_cmd(url) + ["-f", "-"], input=sql.encode(),
                           capture_output=True, env=_client_env())
        if p.returncode != 0:
            raise PsqlError(sql, p.returncode, p.stderr.decode(errors="replace"))
        # psql --csv quotes fields with separators, quotes or newlines; a
        # one-column row holding '' is an empty line (csv gives []).
        rows = csv.reader(io.StringIO(p.stdout.decode(), newline=""))
        return [[None if f == "\x1d" else f for f in row] or [""] for row in rows]

    def psql_one(self, sql):
        """First column of the first row, or None."""
        rows = self.psql(sql)
        return rows[0][0] if rows and rows[0] else None

    def psql_file(self, path):
        p = subprocess.run(self._psql_cmd(None) + ["-f", path], capture_output=True,
                           env=_client_env())
        if p.returncode != 0:
            raise PsqlError(f"\\i {path}", p.returncode, p.stderr.decode(errors="replace"))

    # -- PgBouncer ---------------------------------------------------------------

    def _pgb_prepare(self):
        self.pgb_bin = os.environ.get("PGBOUNCER_BIN") or shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not os.access(self.pgb_bin, os.X_OK):
            raise StackError("pgbouncer not found: apt-get install pgbouncer")
        self.pgb_run = self._mkdir("pgbouncer", mode=0o711)
        self.pgb_port = free_port()
        conf = os.path.join(self.pgb_run, "pgbouncer.ini")
        # Transaction pooling, as on a busy CGI host: a server connection
        # serves any client between transactions, so nothing may rely on
        # session state, named prepared statements or session locks.
        self._write(conf, f"""[databases]
* = host={self.pg_run} port={self.pg_port} user=billing

[pgbouncer]
listen_addr =
unix_socket_dir = {self.pgb_run}
listen_port = {self.pgb_port}
auth_type = trust
auth_file = {self.pgb_run}/users.txt
pool_mode = transaction
max_client_conn = 200
default_pool_size = 10
server_reset_query =
# After PostgreSQL comes back, try it again at once (default: 15 s later).
server_login_retry = 0
# With PostgreSQL down a query waits for a server connection this long,
# then fails (default 120 s, longer than any request may take).
query_wait_timeout = 5
ignore_startup_parameters = extra_float_digits
logfile = {self.tmp}/logs/pgbouncer.log
pidfile = {self.pgb_run}/pgbouncer.pid
""", 0o600)
        self._write(os.path.join(self.pgb_run, "users.txt"), '"billing" ""\n', 0o600)
        with open(os.path.join(self.tmp, "logs", "pgbouncer.log"), "a"):
            pass
        self._chown(os.path.join(self.tmp, "logs", "pgbouncer.log"))
        self._pgb_conf = conf

    def _pgb_start(self):
        log = self._log_open("pgbouncer.out")
        self._pgb = subprocess.Popen(
            _pdeathsig_prefix("TERM") + [self.pgb_bin, self._pgb_conf],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.pgb_run,
            env=self._server_env(), process_group=0, **self._run_as_kw())
        sock = os.path.join(self.pgb_run, f".s.PGSQL.{self.pgb_port}")
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            if self._pgb.poll() is not None or time.monotonic() > deadline:
                raise StackError("pgbouncer did not start:\n" +
                                 open(log.name, errors="replace").read()[-2000:])
            time.sleep(0.02)

    def _pgb_stop(self):
        p, self._pgb = self._pgb, None
        self._stop_proc(p, (signal.SIGINT, False, 10))

    # -- fake Stripe -----------------------------------------------------------

    def _fake_launch(self):
        script = os.path.join(self.srcdir, "tests", self.stripe_script)
        if not os.path.exists(script):
            raise StackError(f"{script} not found")
        self._fake_log = log = self._log_open("fake_stripe.log")
        self._fake = subprocess.Popen(
            _pdeathsig_prefix("TERM") + [sys.executable, script, "--port", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, cwd=self.tmp,
            process_group=0)

    def _fake_wait(self):
        log = self._fake_log
        fd = self._fake.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + 15
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StackError("fake Stripe printed no 'listening on' line in 15 s")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    log.flush()
                    raise StackError("fake Stripe exited:\n" +
                                     open(log.name, errors="replace").read()[-2000:])
                buf += chunk
        line, rest = buf.split(b"\n", 1)
        m = re.fullmatch(rb"listening on 127\.0\.0\.1:(\d+)\s*", line)
        if not m:
            raise StackError(f"fake Stripe first line unexpected: {line!r}")
        self.stripe_base = f"http://127.0.0.1:{int(m.group(1))}"
        self.stripe = _Stripe(self.stripe_base)

        def drain(pipe, first):
            with open(log.name, "ab") as out:
                out.write(first)
                for chunk in iter(lambda: pipe.read1(65536), b""):
                    out.write(chunk)
                    out.flush()

        threading.Thread(target=drain, args=(self._fake.stdout, rest), daemon=True).start()

    def _fake_stop(self):
        p, self._fake = self._fake, None
        self._stop_proc(p, (signal.SIGTERM, True, 10))

    # -- Apache ------------------------------------------------------------------

    def _write_htpasswd(self):
        """The operators' htpasswd file ({SHA} entries: Apache reads them on any
        platform, and the test needs no htpasswd binary)."""
        self.htpasswd = os.path.join(self.tmp, "admin.htpasswd")
        lines = []
        for user, password in self.operators.items():
            digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
            lines.append(f"{user}:{{SHA}}{digest}\n")
        self._write(self.htpasswd, "".join(lines), 0o640)
        return self.htpasswd

    def _apache_layout(self):
        """Returns the config text after the common part."""
        conf_snippet = os.path.join(self.srcdir, "apache", APACHE_MODES[self.apache_mode][2])
        if not self.htaccess:
            cgi_bin = self.cgi_bin
            if not self._reachable(cgi_bin):
                # e.g. a build tree under /root: give the server user a copy.
                cgi_bin = self._copy_cgis(self._mkdir("cgi-bin", mode=0o755))
            if not self._reachable(conf_snippet):
                c = os.path.join(self.apache_dir, "billing-cgi.conf")
                shutil.copy(conf_snippet, c)
                self._chown(c)
                conf_snippet = c
            self.cgi_bin_served = cgi_bin
            htdocs = self._mkdir("apache", "htdocs", mode=0o755)
            lines = [f"DocumentRoot {_apache_quote(htdocs)}",
                     f"<Directory {_apache_quote(htdocs)}>\n    Require all granted\n</Directory>",
                     f"Define BILLING_CGI_BIN {_apache_quote(cgi_bin)}",
                     f"Define BILLING_ADMIN_HTPASSWD {_apache_quote(self._write_htpasswd())}"]
            if self.apache_mode == "proxy_fcgi":
                self.fcgi_sockets = self._mkdir("fcgi", mode=0o700)
                self._chown(self.fcgi_sockets)
                lines.append(f"Define BILLING_FCGI_SOCKETS {_apache_quote(self.fcgi_sockets)}")
            for k, v in self.settings.items():
                lines.append(f"SetEnv {k} {_apache_quote(v)}")
            lines.append(f"Include {_apache_quote(conf_snippet)}")
            return "\n".join(lines) + "\n"
        # Shared-hosting variant: web root .htaccess + cgi-bin/.htaccess, the
        # settings in a KEY=VALUE file named by BILLING_CONFIG.
        www = self._mkdir("www", mode=0o755)
        cgi = self._mkdir("www", "cgi-bin", mode=0o755)
        self.cgi_bin_served = self._copy_cgis(cgi)
        with open(os.path.join(self.srcdir, "apache", "htaccess")) as f:
            self._write(os.path.join(www, ".htaccess"), f.read(), 0o644)
        with open(os.path.join(self.srcdir, "apache", "cgi-bin.htaccess")) as f:
            text = f.read()
        self.billing_config = os.path.join(self.tmp, "billing.conf")
        text, n = re.subn(r"(?m)^SetEnv BILLING_CONFIG .*$",
                          lambda m: f"SetEnv BILLING_CONFIG {_apache_quote(self.billing_config)}", text)
        if n != 1:
            raise StackError("apache/cgi-bin.htaccess has no 'SetEnv BILLING_CONFIG' line")
        text, n = re.subn(r"(?m)^(\s*)AuthUserFile .*$",
                          lambda m: f"{m.group(1)}AuthUserFile {_apache_quote(self._write_htpasswd())}",
                          text)
        if n != 1:
            raise StackError("apache/cgi-bin.htaccess has no 'AuthUserFile' line")
        self._write(os.path.join(cgi, ".htaccess"), text, 0o644)
        self._write(self.billing_config,
                    "".join(f'{k}="{v}"\n' for k, v in self.settings.items()), 0o600)
        return f"""DocumentRoot {_apache_quote(www)}
<Directory {_apache_quote(www)}>
    Options SymLinksIfOwnerMatch
    AllowOverride All
    Require all granted
</Directory>
"""

    def _copy_cgis(self, dest):
        if os.path.isdir(self.cgi_bin):
            for n in os.listdir(self.cgi_bin):
                src = os.path.join(self.cgi_bin, n)
                if n.endswith(".cgi") and os.path.isfile(src):
                    d = os.path.join(dest, n)
                    shutil.copy2(src, d)
                    os.chmod(d, 0o755)
                    self._chown(d)
        return dest

    def _apache_prepare(self):
        self._apache_binary, mods = _find_apache()
        builtin = subprocess.run([self._apache_binary, "-l"], capture_output=True, text=True).stdout
        builtin = set(re.findall(r"mod_\w+\.c", builtin))
        self.apache_dir = self._mkdir("apache")
        run = self._mkdir("apache", "run")
        self.error_log_path = os.path.join(self.apache_dir, "error.log")
        tail = self._apache_layout()
        self._apache_passenv = [k for k in PASSTHROUGH_ENV if os.environ.get(k)]
        mpm, cgi_module, _ = APACHE_MODES[self.apache_mode]
        modules = [mpm, "unixd", "authz_core", "authz_host", "authz_user", "authn_core",
                   "authn_file", "auth_basic", "alias"]
        modules += ["proxy", cgi_module] if cgi_module == "proxy_fcgi" else [cgi_module]
        modules += ["mime",
                   "env", "setenvif", "headers", "rewrite", "dir", "log_config"]
        if mpm == "mpm_prefork":
            mpm_lines = ["StartServers 4", "MinSpareServers 2", "MaxSpareServers 8",
                         "ServerLimit 32", "MaxRequestWorkers 32", "MaxConnectionsPerChild 0"]
        else:
            mpm_lines = ["StartServers 2", "ServerLimit 4", "ThreadsPerChild 25",
                         "MaxRequestWorkers 100", "MinSpareThreads 25", "MaxSpareThreads 75",
                         "MaxConnectionsPerChild 0"]
        if cgi_module == "cgid":
            mpm_lines.append(f"ScriptSock {_apache_quote(run + '/cgid.sock')}")
        if cgi_module == "fcgid":
            mpm_lines += [f"FcgidIPCDir {_apache_quote(run + '/fcgid')}",
                          f"FcgidProcessTableFile {_apache_quote(run + '/fcgid_shm')}"]
        self._apache_conf_lines = (
            [f"ServerRoot {_apache_quote(self.apache_dir)}",
             f"DefaultRuntimeDir {_apache_quote(run)}",
             f"PidFile {_apache_quote(run + '/httpd.pid')}",
             f"ErrorLog {_apache_quote(self.error_log_path)}",
             "LogLevel warn",
             "Listen 127.0.0.1:@PORT@",
             "ServerName 127.0.0.1",
             "ServerTokens Prod",
             "Timeout 60",
             "KeepAlive On",
             "MaxKeepAliveRequests 1000"]
            + [f"LoadModule {m}_module {_apache_quote(os.path.join(mods, f'mod_{m}.so'))}"
               for m in modules if f"mod_{m}.c" not in builtin]
            + mpm_lines
            + ["TypesConfig /etc/mime.types" if os.path.exists("/etc/mime.types") else "",
               'LogFormat "%h %l %u %t \\"%r\\" %>s %b %D" common',
               f"CustomLog {_apache_quote(self.apache_dir + '/access.log')} common",
               "<Directory />\n    AllowOverride None\n    Require all denied\n</Directory>",
               '<Files ".ht*">\n    Require all denied\n</Files>']
            + [f"PassEnv {k}" for k in self._apache_passenv]
            + [tail, self.extra_apache_conf])

    def _spawners_start(self):
        """proxy_fcgi mode: each program's processes on its socket, started as
        apache/billing-fcgi@.service starts them (spawn-fcgi, multiwatch), as
        the server user, with the server's environment (the settings come
        from Apache with each request)."""
        if self.fcgi_sockets is None:
            raise StackError("proxy_fcgi mode has no .htaccess layout")
        spawn, watch = shutil.which("spawn-fcgi"), shutil.which("multiwatch")
        if not spawn or not watch:
            raise StackError("proxy_fcgi mode needs spawn-fcgi and multiwatch (tools/deps installs them)")
        env = self._server_env()
        env.update({k: os.environ[k] for k in self._apache_passenv})
        log = self._log_open("spawners.out")
        for n in sorted(os.listdir(self.cgi_bin_served)):
            if not n.endswith(".cgi"):
                continue
            name = n[:-4]
            words = {"%i": name, "${WORKERS}": str(self.proxy_fcgi_workers),
                     "${BILLING_CGI_BIN}": self.cgi_bin_served, "/run/billing-cgi": self.fcgi_sockets,
                     "/usr/bin/spawn-fcgi": spawn, "/usr/bin/multiwatch": watch}
            argv = fcgi_unit_command(self.srcdir, "ExecStart", words)
            self.spawners[name] = subprocess.Popen(
                _pdeathsig_prefix("TERM") + argv,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.tmp, env=env, process_group=0, **self._run_as_kw())

    def _spawners_wait(self):
        deadline = time.monotonic() + 30
        for name, p in self.spawners.items():
            sock = os.path.join(self.fcgi_sockets, name + ".sock")
            while not os.path.exists(sock):
                if p.poll() is not None or time.monotonic() > deadline:
                    out = open(os.path.join(self.tmp, "logs", "spawners.out"), errors="replace").read()
                    raise StackError(f"spawn-fcgi for {name} did not make its socket:\n" + out[-2000:])
                time.sleep(0.01)

    def _spawners_stop(self):
        spawners, self.spawners = self.spawners, {}
        for p in spawners.values():
            # multiwatch passes SIGUSR1 to its processes, which finish and leave.
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
        for p in spawners.values():
            self._stop_proc(p, (signal.SIGTERM, False, 10), (signal.SIGTERM, True, 5))
            # Processes left by a multiwatch that died (killed by a test) share
            # its process group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)

    def _apache_launch(self):
        """Start httpd on a fresh free port (does not wait)."""
        self.port = free_port()
        conf = os.path.join(self.apache_dir, "httpd.conf")
        self._write(conf, "\n".join(self._apache_conf_lines).replace("@PORT@", str(self.port)), 0o644)
        log = self._log_open("apache.out")
        env = self._server_env()
        env.update({k: os.environ[k] for k in self._apache_passenv})
        self._httpd = subprocess.Popen(
            _pdeathsig_prefix("TERM") + [self._apache_binary, "-d", self.apache_dir, "-f", conf,
                                         "-DFOREGROUND"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.apache_dir,
            env=env, process_group=0, **self._run_as_kw())

    def _apache_wait(self):
        """Wait until httpd answers; relaunch on a port collision."""
        for attempt in range(5):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self._httpd.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        pass
                except OSError:
                    time.sleep(0.02)
                    continue
                # Connected; if httpd is still alive the port is its own.
                time.sleep(0.05)
                if self._httpd.poll() is None:
                    return
            out = open(os.path.join(self.tmp, "logs", "apache.out"), errors="replace").read() + (
                open(self.error_log_path, errors="replace").read()
                if os.path.exists(self.error_log_path) else "")
            self._apache_stop()
            if "Address already in use" in out and attempt < 4:
                self._apache_launch()
                continue
            raise StackError("Apache did not start:\n" + out[-3000:])

    def _apache_stop(self):
        p, self._httpd = self._httpd, None
        if p is None:
            return
        self._stop_proc(p, (signal.SIGTERM, False, 15))
        # prefork children (and CGIs they run) share the process group.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(p.pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)

    def error_log(self):
        """Text of the log the programs' stderr lines land in: Apache's error
        log, followed in proxy_fcgi mode by the spawners' output (which
        apache/billing-fcgi@.service sends to the journal)."""
        text = ""
        paths = [self.error_log_path]
        if self.apache_mode == "proxy_fcgi" and self.tmp:
            paths.append(os.path.join(self.tmp, "logs", "spawners.out"))
        for path in paths:
            if path and os.path.exists(path):
                with open(path, errors="replace") as f:
                    text += f.read()
        return text

    # -- HTTP through Apache ------------------------------------------------------

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def http(self, method, path, headers=None, body=b"", timeout=60):
        """One request through Apache. headers: dict (None value = leave the
        header out). Content-Length is added for bodies and for POST/PUT/
        PATCH; Content-Type defaults to application/json when there is a
        body. body: bytes, str, or dict/list (sent as JSON)."""
        if self.port is None:
            raise StackError("Stack(apache=False): no Apache")
        data = _body_bytes(body)
        hdrs = {}
        lower = {k.lower() for k in (headers or {})}
        if data and "content-type" not in lower:
            hdrs["Content-Type"] = "application/json"
        if (data or method.upper() in ("POST", "PUT", "PATCH")) and \
                "content-length" not in lower and "transfer-encoding" not in lower:
            hdrs["Content-Length"] = str(len(data))
        for k, v in (headers or {}).items():
            if v is not None:
                hdrs[k] = str(v)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.putrequest(method, path, skip_host="host" in lower, skip_accept_encoding=True)
            for k, v in hdrs.items():
                conn.putheader(k, v)
            try:
                conn.endheaders(data if data else None)
            except (BrokenPipeError, ConnectionResetError):
                pass  # server answered early (413) and closed; read that answer
            r = conn.getresponse()
            raw = r.read()
            pairs = r.getheaders()
            return Resp(r.status, _header_dict(pairs), raw, pairs)
        finally:
            conn.close()

    # -- CGIs run directly ---------------------------------------------------------

    def cgi_env(self, name, method="POST", body=b"", env=None, headers=None, query=""):
        e = program_env()
        script = ENDPOINTS.get(name, "/cgi-bin/" + name + ".cgi")
        e.update({
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": "billing-harness",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "REQUEST_METHOD": method,
            "QUERY_STRING": query,
            "REQUEST_URI": script + ("?" + query if query else ""),
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "40000",
            "SCRIPT_NAME": script,
            "SCRIPT_FILENAME": os.path.join(self.cgi_bin, name + ".cgi"),
        })
        if body or method.upper() in ("POST", "PUT", "PATCH"):
            e["CONTENT_LENGTH"] = str(len(body))
        if body:
            e["CONTENT_TYPE"] = "application/json"
        for k, v in (headers or {}).items():
            kk = k.upper().replace("-", "_")
            if kk in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = kk
            else:
                key = "HTTP_" + kk
            if v is None:
                e.pop(key, None)
            else:
                e[key] = str(v)
        e.update(self.settings)
        return overlay(e, env)

    def cgi_raw(self, name, method="POST", body=b"", env=None, headers=None, query="",
                timeout=60):
        """Run $BUILDDIR/cgi-bin/<name>.cgi with a clean CGI environment.
        Returns (stdout bytes, stderr str); see cgi() for the arguments."""
        r = self._cgi_run(name, method, body, env, headers, query, timeout)
        return r.stdout, r.stderr.decode(errors="replace")

    def cgi(self, name, method="POST", body=b"", env=None, headers=None, query="", timeout=60):
        """Run a CGI directly (no Apache) and parse its answer. env: extra or
        overriding variables (None value = unset, e.g. CONTENT_LENGTH=None);
        headers: request headers, given as HTTP_* (Content-Type/-Length as
        CONTENT_*). Resp also has .stderr and .returncode."""
        r = self._cgi_run(name, method, body, env, headers, query, timeout)
        return parse_cgi_output(r.stdout, r.stderr.decode(errors="replace"), r.returncode)

    def _cgi_run(self, name, method, body, env, headers, query, timeout):
        data = _body_bytes(body)
        e = self.cgi_env(name, method, data, env, headers, query)
        prog = os.path.join(self.cgi_bin, name + ".cgi")
        return subprocess.run([prog], input=data, capture_output=True, env=e,
                              cwd=os.path.dirname(prog), timeout=timeout)


