#!/usr/bin/env python3
"""The deployment benchmark (issue 8): a script that prints figures, not a test.

    python3 bench/deployments.py [BUILDDIR]        (default: $BUILDDIR, else build/)
    DURATION=4 CONCURRENCY=1,4,8,16 RUNS=200 python3 bench/deployments.py build
    BENCH_PARTS=1 python3 bench/deployments.py build     (parts 1 and 1b only)
    BENCH_DEPLOYMENTS=fastcgi BENCH_RATE_LIMITS=off ...  (some deployments; no rate limits)

In one run, on this machine, against the same PostgreSQL (and in part 1a a
copy of it) and the same Apache:
  1. Per-invocation cost of plain CGI, piped (no Apache), interleaved, with
     PostgreSQL set up as the README recommends (PL/pgSQL preloaded):
     webhook.cgi (event mode, a fresh signed event each run), usage.cgi POST
     (a fresh record each run) and the minimal C webhook limit.cgi from
     ../shared/bench/floor (read, HMAC, json-c, connect, one INSERT, answer),
     each timed from spawn to exit; medians and the ratio to limit.cgi.
     1a. Interleaved with 1: the same against a copy of the cluster run
     without shared_preload_libraries.
     1b. The same with every program connecting through PgBouncer, where no
     backend starts: what is left of the wall-time ratio without that.
  2. Through Apache (event MPM) with wrk, at each concurrency: events/s and
     p50/p99 for webhook.cgi and usage.cgi POST, deployed as
       cgi        mod_cgid, a new process and PostgreSQL connection a request
       cgi+pgb    mod_cgid, DATABASE_URL through PgBouncer (transaction mode)
       fastcgi    mod_fcgid (apache/billing-fcgid.conf)
       proxy-fcgi mod_proxy_fcgi (apache/billing-proxy-fcgi.conf), each
                  program's processes started by spawn-fcgi + multiwatch
                  (8 per program, as many as mod_fcgid may start)
     beside the references when ../shared/bench is there: limit.cgi (cgi and
     cgi+pgb), limit.fcgi (fastcgi), and the seed-style Node.js stack
     (node-peer, `npm ci` in a copy) on its own port.
Every request is a fresh event (new id, signed just before its run) or a
fresh usage record, so nothing is a duplicate.  Loopback only; each point
runs DURATION seconds.  The stacks are torn down at the end.
"""
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

SRCDIR = os.environ.get("SRCDIR") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(SRCDIR, "tests"))
from harness import DEFAULT_SETTINGS, Stack, _pdeathsig_prefix, stripe_signature  # noqa: E402

BUILDDIR = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                           os.environ.get("BUILDDIR") or os.path.join(SRCDIR, "build"))
SHARED = os.environ.get("BENCH_SHARED") or os.path.join(os.path.dirname(SRCDIR), "shared", "bench")
DURATION = max(1, min(int(os.environ.get("DURATION", "4")), 60))
CONCURRENCY = [int(c) for c in os.environ.get("CONCURRENCY", "1,4,8,16").split(",")]
RUNS = max(10, min(int(os.environ.get("RUNS", "200")), 2000))
ONLY_PER_INVOCATION = os.environ.get("BENCH_PARTS") == "1"
SECRET = DEFAULT_SETTINGS["STRIPE_WEBHOOK_SECRET"]
API_KEY = DEFAULT_SETTINGS["USAGE_API_KEY"]
with open(os.path.join(SRCDIR, "tests", "data", "events", "customer.subscription.created.json")) as f:
    TEMPLATE = json.load(f)

FLOOR_SQL = """CREATE TABLE IF NOT EXISTS billing_events (id bigserial PRIMARY KEY,
  stripe_event_id text UNIQUE NOT NULL, event_type text NOT NULL,
  payload jsonb NOT NULL, received_at timestamptz DEFAULT now());"""

WRK_LUA = r"""
-- Each wrk thread takes every n-th line of the request file: "<sig>\t<body>".
local counter, threads = 0, {}
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  reqs, n = {}, 0
  local nthreads, path, kind = tonumber(args[1]), args[2], args[3]
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == tid then
      local sig, body = line:match("^([^\t]*)\t(.*)$")
      local h = {["Content-Type"] = "application/json"}
      if kind == "webhook" then h["Stripe-Signature"] = sig
      else h["Authorization"] = "Bearer " .. sig end
      n = n + 1
      reqs[n] = wrk.format("POST", nil, h, body)
    end
    i = i + 1
  end
  idx = 0
end
function request()
  idx = idx + 1
  if idx > n then idx = 1 end
  return reqs[idx]
end
"""


def create_floor_db(st):
    """The floor's database beside billing, on st's PostgreSQL."""
    st.psql("CREATE DATABASE floor")
    st.psql(FLOOR_SQL, url=st.database_url.replace("/billing?", "/floor?", 1))


def floor_env(env, host, port):
    """env, a request's CGI environment for our programs, made the floor's:
    its PG* variables (the server at host:port) instead of our settings."""
    env = {k: v for k, v in env.items() if not k.startswith(("STRIPE_", "DATABASE"))}
    env.update({"PGHOST": host, "PGPORT": str(port), "PGUSER": "billing",
                "PGDATABASE": "floor", "STRIPE_WEBHOOK_SECRET": SECRET})
    return env


def event_body(tag, i):
    ev = json.loads(json.dumps(TEMPLATE))
    ev["id"] = f"evt_b_{tag}_{i}"
    ev["data"]["object"]["id"] = f"sub_b_{tag}_{i}"
    ev["data"]["object"]["customer"] = f"cus_b_{tag}_{i}"
    # A new user's first subscription: the event links the customer to the user.
    ev["data"]["object"]["metadata"]["userId"] = f"bench_{tag}_{i}"
    return json.dumps(ev, separators=(",", ":")).encode()


def usage_body(tag, i):
    return json.dumps({"userId": f"bench_{tag}_{i % 5000}", "usageType": "pain_entry"},
                      separators=(",", ":")).encode()


def ms(v):
    return f"{v * 1000:.1f}"


# -- 1. per invocation ----------------------------------------------------------------

def spawn(prog, env, body):
    """Runs prog with body on stdin; (stdout, the child's CPU seconds)."""
    rin, win = os.pipe()
    rout, wout = os.pipe()
    pid = os.posix_spawn(prog, [prog], env, file_actions=[
        (os.POSIX_SPAWN_DUP2, rin, 0), (os.POSIX_SPAWN_DUP2, wout, 1),
        (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_CLOSE, win), (os.POSIX_SPAWN_CLOSE, rout)])
    os.close(rin)
    os.close(wout)
    os.write(win, body)  # bodies here are a few KB: fit the pipe
    os.close(win)
    out = b""
    while chunk := os.read(rout, 65536):
        out += chunk
    os.close(rout)
    _, _, ru = os.wait4(pid, 0)
    return out, ru.ru_utime + ru.ru_stime


def per_invocation(st, floor_cgi, title="1. Plain CGI per invocation, piped, interleaved",
                   servers=None):
    """Times each program, spawn to exit, and prints a table.  servers:
    [(title, socket dir)] of PostgreSQL servers on st's port, timed
    interleaved in one loop, a table each; default [(title, the stack's own
    server or PgBouncer)]."""
    progs = [("webhook.cgi", os.path.join(st.cgi_bin, "webhook.cgi")),
             ("usage.cgi POST", os.path.join(st.cgi_bin, "usage.cgi"))]
    if floor_cgi:
        progs.append(("floor limit.cgi", floor_cgi))
    if servers is None:
        servers = [(title, st.pgb_run if st.want_pgbouncer else st.pg_run)]
    # The floor connects where the programs do: PostgreSQL, or PgBouncer.
    port = st.pgb_port if st.want_pgbouncer else st.pg_port
    keys = [(label, name) for label, _ in servers for name, _ in progs]
    times = {k: [] for k in keys}
    cpu = {k: [] for k in keys}
    bad = {k: 0 for k in keys}
    numbered = list(enumerate(servers))
    for i in range(RUNS + 10):
        # Servers take turns at going first: no one gains from its place.
        for s_no, (label, host) in numbered if i % 2 == 0 else numbered[::-1]:
            for name, prog in progs:
                tag = f"piped{s_no}"
                if name.startswith("usage"):
                    b = usage_body(tag, i)
                    env = st.cgi_env("usage", body=b, headers={"Authorization": "Bearer " + API_KEY})
                else:
                    b = event_body(tag + name[:2], i)
                    env = st.cgi_env("webhook", body=b,
                                     headers={"Stripe-Signature": stripe_signature(SECRET, b)})
                if name.startswith("floor"):
                    env = floor_env(env, host, port)
                elif host != st.pg_run and not st.want_pgbouncer:
                    url = env["DATABASE_URL"].replace(st.pg_run, host)
                    if url == env["DATABASE_URL"]:
                        sys.exit("deployments.py: cannot point DATABASE_URL at " + host)
                    env["DATABASE_URL"] = url
                t0 = time.perf_counter()
                out, used = spawn(prog, env, b)
                dt = time.perf_counter() - t0
                if i >= 10:  # the first runs warm the page cache
                    times[(label, name)].append(dt)
                    cpu[(label, name)].append(used)
                    bad[(label, name)] += not out.startswith(b"Status: 200")
    for label, _ in servers:
        print(f"\n## {label} ({RUNS} runs each)")
        if st.want_pgbouncer:
            print("Every program connects through PgBouncer: no backend starts, its catalog caches are warm.")
        else:
            print("wall: spawn to exit (includes PostgreSQL forking a backend); CPU: the program's own")
            print("user + system time (getrusage of the child), which other load on the machine does not inflate.")
        print("| program | wall median ms | wall p90 ms | x floor | CPU median ms | x floor |")
        print("|---|---|---|---|---|---|")
        floor = (label, "floor limit.cgi")
        for name, _ in progs:
            v, c = sorted(times[(label, name)]), cpu[(label, name)]
            med, cmed = statistics.median(v), statistics.median(c)
            wr = f"{med / statistics.median(times[floor]):.3f}" if floor_cgi else "-"
            cr = f"{cmed / statistics.median(cpu[floor]):.3f}" if floor_cgi else "-"
            print(f"| {name} | {ms(med)} | {ms(v[int(len(v) * 0.9)])} | {wr} | {ms(cmed)} | {cr} |"
                  + (f" ({bad[(label, name)]} non-200)" if bad[(label, name)] else ""))
    sys.stdout.flush()


def with_unpreloaded_server(st, run):
    """run(socket_dir) beside a second PostgreSQL: a copy of the stack's
    cluster, on the same port in its own socket directory, without
    shared_preload_libraries (the harness preloads PL/pgSQL, as the README
    recommends).  Both start from the same data, so the two can be timed
    interleaved.  run(None) when the copy does not start (its log says
    why).  The copy is stopped and removed after."""
    data, sock_dir = st.pg_data + "-unpreloaded", st.pg_run + "-unpreloaded"
    sock = sock_dir
    st.pg_stop()
    proc = None
    try:
        subprocess.run(["cp", "-a", st.pg_data, data], check=True)
        os.mkdir(sock_dir, 0o711)
        if st.runas is not None:
            os.chown(sock_dir, st.runas.pw_uid, st.runas.pw_gid)
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write(f"\nshared_preload_libraries = ''\nunix_socket_directories = '{sock_dir}'\n")
        st.pg_start()
        # Started as the harness starts its own: dies with us, even on SIGKILL.
        proc = subprocess.Popen(
            _pdeathsig_prefix("QUIT") + [os.path.join(st.pg_bindir, "postgres"), "-D", data],
            stdin=subprocess.DEVNULL, stdout=st._log_open("postgres-unpreloaded.log"),
            stderr=subprocess.STDOUT, cwd=data, env=st._server_env(), process_group=0,
            **st._run_as_kw())
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(sock_dir, f".s.PGSQL.{st.pg_port}")):
            if proc.poll() is not None or time.monotonic() > deadline:
                print(f"\n(part 1a left out: the copy without preloading did not start; "
                      f"see {os.path.join(st.tmp, 'logs', 'postgres-unpreloaded.log')})")
                sock = None
                break
            time.sleep(0.05)
        run(sock)
    finally:
        if proc is not None:
            st._stop_proc(proc, (signal.SIGINT, False, 20), (signal.SIGQUIT, False, 5))
        st.pg_start()
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)


# -- 2. through Apache ------------------------------------------------------------------

def write_requests(path, kind, tag, n):
    tag = re.sub(r"[^A-Za-z0-9]", "", tag)
    with open(path, "w") as f:
        for i in range(n):
            if kind == "usage":
                f.write(f"{API_KEY}\t{usage_body(tag, i).decode()}\n")
            else:
                b = event_body(tag, i)
                f.write(f"{stripe_signature(SECRET, b)}\t{b.decode()}\n")


def wrk(url, kind, tag, c, tmp, duration=DURATION, expect=3000):
    threads = min(c, 2)
    n = max(200, int(expect * duration * 1.5))
    reqs = os.path.join(tmp, f"req-{tag}.txt")
    write_requests(reqs, kind, tag, n)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(c), "-d", f"{duration}s", "--latency",
                          "--timeout", "30s", "-s", os.path.join(tmp, "bench.lua"), url,
                          "--", str(threads), reqs, kind], capture_output=True, text=True).stdout
    os.unlink(reqs)

    def lat(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    rps = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", out)
    total = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    errs = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": lat("50"), "p99": lat("99"), "total": total, "non2xx": non2xx,
            "reused": total > n, "errors": errs.group(1) if errs else ""}


def statuses_since(st, offset):
    """Counts of the programs' non-200 answers logged since offset, and the new offset."""
    text = st.error_log()
    counts = {}
    for m in re.finditer(r"billing-cgi (\S+) rid=\S+ status=(\d+)", text[offset:]):
        if m.group(2) != "200":
            key = f"{m.group(1)} {m.group(2)}"
            counts[key] = counts.get(key, 0) + 1
    return counts, len(text)


def row(name, c, r, why=None):
    notes = []
    if r["non2xx"]:
        notes.append(f"{r['non2xx']} non-2xx" + (f" ({', '.join(f'{k}: {v}' for k, v in why.items())})"
                                               if why else ""))
    if r["errors"]:
        notes.append("socket errors " + r["errors"])
    if r["reused"]:
        notes.append("request list wrapped (duplicates)")
    print(f"| {name} | {c} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {'; '.join(notes)} |",
          flush=True)


def floor_conf(floor_dir, mode, st):
    if not floor_dir or mode == "proxy_fcgi":
        return ""
    pgh, pgp = (st.pgb_run, st.pgb_port) if st.want_pgbouncer else (st.pg_run, st.pg_port)
    env = (f'PGHOST "{pgh}"', f'PGPORT "{pgp}"', 'PGUSER "billing"', 'PGDATABASE "floor"',
           f'STRIPE_WEBHOOK_SECRET "{SECRET}"')
    if mode == "fcgid":
        return "\n".join([f"FcgidInitialEnv {e}" for e in env] + [
            f'Alias /floor/webhook "{floor_dir}/limit.fcgi"',
            f'<Directory "{floor_dir}">\n  Options +ExecCGI\n  SetHandler fcgid-script\n'
            f'  Require all granted\n</Directory>'])
    return "\n".join([f'ScriptAlias /floor/webhook "{floor_dir}/limit.cgi"',
                      f'<Directory "{floor_dir}">\n  Require all granted\n'
                      + "".join(f"  SetEnv {e}\n" for e in env) + "</Directory>"])


def build_floor(tmp):
    src = os.path.join(SHARED, "floor")
    if not os.path.isdir(src):
        return None
    d = os.path.join(tmp, "floor")
    shutil.copytree(src, d)
    subprocess.run(["make", "-s", "-C", d], check=True, stdout=subprocess.DEVNULL)
    os.chmod(tmp, 0o755)
    os.chmod(d, 0o755)
    return d


def floor_cgi(tmp, script):
    """limit.cgi of the floor built in tmp, for scripts that cannot run without it."""
    floor_dir = build_floor(tmp)
    if not floor_dir:
        sys.exit(f"{script}: ../shared/bench/floor is needed (BENCH_SHARED)")
    return os.path.join(floor_dir, "limit.cgi")


def node_peer(tmp, st):
    src = os.path.join(SHARED, "node-peer")
    if not os.path.isdir(src) or not shutil.which("node"):
        return None, None
    d = os.path.join(tmp, "node-peer")
    shutil.copytree(src, d)
    if subprocess.run(["npm", "ci", "--silent", "--no-audit", "--no-fund"], cwd=d,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
        print("# node-peer: npm ci failed; left out")
        return None, None
    from harness import free_port
    port = free_port()
    env = dict(os.environ, NODE_PEER_PORT=str(port), STRIPE_WEBHOOK_SECRET=SECRET, PGHOST=st.pg_run,
               PGPORT=str(st.pg_port), PGUSER="billing", PGDATABASE="floor")
    p = subprocess.Popen(["node", "server.js"], cwd=d, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    import socket
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    return None, None


def main():
    tmp = tempfile.mkdtemp(prefix="billing-bench-")
    with open(os.path.join(tmp, "bench.lua"), "w") as f:
        f.write(WRK_LUA)
    floor_dir = build_floor(tmp)
    if not shutil.which("wrk"):
        sys.exit("deployments.py: wrk not found (apt-get install wrk)")
    print(f"# billing-cgi deployment benchmark: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"event MPM, wrk {DURATION}s per point, build {BUILDDIR}")
    settings = {"STRIPE_SYNC_MODE": "event"}
    # BENCH_RATE_LIMITS=off: no rate-limit checks at all (0), to see their cost.
    # By default they are checked, as deployed, with limits out of reach.
    if os.environ.get("BENCH_RATE_LIMITS") == "off":
        for name in ("CHECKOUT", "USAGE", "PORTAL", "SUBSCRIPTION"):
            settings[f"RATE_LIMIT_{name}"] = settings[f"RATE_LIMIT_{name}_IP"] = "0"
    deployments = [("cgi", "cgid", False), ("cgi+pgb", "cgid", True), ("fastcgi", "fcgid", False),
                   ("proxy-fcgi", "proxy_fcgi", False)]
    # BENCH_DEPLOYMENTS=fastcgi (comma list) runs only those.
    only = os.environ.get("BENCH_DEPLOYMENTS")
    if only:
        deployments = [d for d in deployments if d[0] in only.split(",")]
    if ONLY_PER_INVOCATION:
        deployments = [d for d in deployments if d[1] in ("cgid", "cgi")]
    node = None
    try:
        results = {}
        for name, mode, pgb in deployments:
            conf_holder = {}

            class S(Stack):
                proxy_fcgi_workers = 8

                def _apache_prepare(self):
                    self.extra_apache_conf = floor_conf(floor_dir, mode, self)
                    super()._apache_prepare()
            with S(settings, builddir=BUILDDIR, srcdir=SRCDIR, apache_mode=mode, pgbouncer=pgb) as st:
                create_floor_db(st)
                if name == "cgi":
                    # Beside it, what the README's PostgreSQL setting is worth.
                    with_unpreloaded_server(st, lambda sock: per_invocation(
                        st, floor_dir and os.path.join(floor_dir, "limit.cgi"),
                        servers=[("1. Plain CGI per invocation, piped, interleaved;"
                                  " PostgreSQL preloads PL/pgSQL, as recommended", st.pg_run)]
                        + ([("1a. The same, timed interleaved with 1, against a copy of the"
                             " cluster without shared_preload_libraries", sock)] if sock else [])))
                if name == "cgi+pgb":
                    # Where the wall time of part 1 goes: the same, with warm backends.
                    per_invocation(st, floor_dir and os.path.join(floor_dir, "limit.cgi"),
                                   "1b. The same through PgBouncer")
                if ONLY_PER_INVOCATION:
                    continue
                # Part 2's table goes on after part 1b's, under its header again.
                if not results or name == "cgi+pgb":
                    print(f"\n## 2. Through Apache (wrk; events/s or requests/s, latency in ms)"
                          + (", continued" if results else ""))
                    print("| deployment | c | per s | p50 ms | p99 ms | notes |")
                    print("|---|---|---|---|---|---|")
                fastcgi = mode in ("fcgid", "proxy_fcgi")
                expect = 4000 if fastcgi else 400
                targets = [(f"{name} webhook.cgi", "webhook", "/api/stripe/webhook"),
                           (f"{name} usage.cgi POST", "usage", "/api/usage")]
                if floor_dir and mode != "proxy_fcgi":
                    targets.append((f"{name} floor limit.{'fcgi' if mode == 'fcgid' else 'cgi'}",
                                    "webhook", "/floor/webhook"))
                for label, kind, path in targets:
                    if fastcgi:  # let the processes start and connect first
                        wrk(st.url(path), kind, f"warm{name}{kind}{path[1]}", 16, tmp, duration=2)
                    for c in CONCURRENCY:
                        _, offset = statuses_since(st, 0)
                        r = wrk(st.url(path), kind, f"{name}{kind}{path[1]}{c}", c, tmp, expect=expect)
                        results[(label, c)] = r
                        row(label, c, r, statuses_since(st, offset)[0])
                if name == "fastcgi":
                    node, port = node_peer(tmp, st)
                    if node:
                        url = f"http://127.0.0.1:{port}/webhook"
                        wrk(url, "webhook", "warmnode", 8, tmp, duration=2)
                        for c in CONCURRENCY:
                            r = wrk(url, "webhook", f"node{c}", c, tmp, expect=3000)
                            row("node-peer (no Apache)", c, r)
                        node.terminate()
                        node.wait()
                        node = None
        print("\n## Targets")
        for c in (8,):
            fw = results.get(("fastcgi webhook.cgi", c))
            fu = results.get(("fastcgi usage.cgi POST", c))
            if fw and fu:
                print(f"- FastCGI c={c}: webhook {fw['rps']:.0f} events/s, usage POST {fu['rps']:.0f} "
                      f"requests/s (target 2,000 each)")
            for kind in ("webhook.cgi", "usage.cgi POST"):
                a, b = results.get((f"cgi {kind}", c)), results.get((f"cgi+pgb {kind}", c))
                if a and b and a["rps"]:
                    print(f"- CGI + PgBouncer / plain CGI, {kind}, c={c}: {b['rps'] / a['rps']:.2f}x "
                          f"(target 1.6x)")
    finally:
        if node:
            node.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
