#!/usr/bin/env bash
# What the rate limits and the metrics cost per request (prints figures; not a test).
#
#   bench/ratelimit-metrics.sh           BUILDDIR=build tree (default: ./build, or cwd
#                                        if it holds cgi-bin/usage.cgi)
#   N=5000 bench/ratelimit-metrics.sh    checks per measurement (the default)
#
# Builds bench/hotpath (see bench/hotpath.c), starts its own PostgreSQL and
# PgBouncer (tests/harness.py, no Apache) and measures, in microseconds:
#   1. one rate-limit check (lib/ratelimit: the GCRA statement and the
#      RateLimit headers): allowed, refused, and a new subject (INSERT), on a
#      direct Unix-socket connection and through PgBouncer (transaction
#      mode); SELECT 1 on the same connection for scale;
#   2. one counter update in the metrics file (lib/metrics): in a process
#      that has it mapped, and the first one of a fresh process (open, mmap,
#      slot lookup, add: what a plain CGI pays once per request);
#   3. usage.cgi as two FastCGI processes, one with both limits on and one
#      with both off (RATE_LIMIT_USAGE=0, RATE_LIMIT_USAGE_IP=0), counter
#      file on in both, N GETs each, alternating: the difference of the
#      medians is the limits' cost in place.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${BUILDDIR:-}" ]; then
	if [ -x cgi-bin/usage.cgi ]; then BUILDDIR=$PWD; else BUILDDIR=$top/build; fi
fi
[ -x "$BUILDDIR/cgi-bin/usage.cgi" ] || { echo "bench/ratelimit-metrics.sh: no $BUILDDIR/cgi-bin/usage.cgi (build first, or set BUILDDIR)" >&2; exit 1; }
make -C "$BUILDDIR" -s bench/hotpath
export BUILDDIR SRCDIR=$top N=${N:-5000}

exec python3 - <<'PY'
import os, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.join(os.environ["SRCDIR"], "tests"))
from harness import DEFAULT_SETTINGS, PASSTHROUGH_ENV, Stack
from fcgi_client import FcgiProcess

N = int(os.environ["N"])
hotpath = os.path.join(os.environ["BUILDDIR"], "bench", "hotpath")


def run(mode, n, **env):
    e = {"PATH": os.environ["PATH"]}
    e.update({k: os.environ[k] for k in PASSTHROUGH_ENV if os.environ.get(k)})
    e.update(env)
    p = subprocess.run([hotpath, mode, str(n)], env=e, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"hotpath {mode}: {p.stderr.strip()}")
    return p.stdout.strip()


with Stack(apache=False, stripe=False, pgbouncer=True) as st, \
        tempfile.TemporaryDirectory() as mdir:
    print(f"rate limit and metrics hot paths  ({os.cpu_count()} CPUs, PostgreSQL "
          f"{st.psql_one('SHOW server_version')}, load average {os.getloadavg()[0]:.1f})")
    for label, url in (("direct (Unix socket)", st.database_url),
                       ("PgBouncer, transaction mode", st.app_database_url)):
        print(f"1. rate-limit check, {label}:")
        for mode in ("limit", "refused", "new", "select1"):
            print("   " + run(mode, N, DATABASE_URL=url))
    print("2. counter update (metrics file):")
    print("   " + run("counter", 1000 * N, METRICS_DIR=mdir) + "   (mapped; per update)")
    print("   " + run("first", min(N, 500), METRICS_DIR=mdir) + "   (first in a fresh process)")

    print(f"3. usage.cgi as FastCGI, {N} GETs each way, alternating (direct connection):")
    prog = os.path.join(st.cgi_bin, "usage.cgi")
    base = {"PATH": os.environ["PATH"]}
    base.update({k: os.environ[k] for k in PASSTHROUGH_ENV if os.environ.get(k)})
    base.update(st.settings)
    base.update({"DATABASE_URL": st.database_url, "METRICS_DIR": mdir,
                 "RATE_LIMIT_USAGE": "1000000/1s", "RATE_LIMIT_USAGE_IP": "1000000/1s"})
    auth = {"Authorization": "Bearer " + DEFAULT_SETTINGS["USAGE_API_KEY"]}
    params = st.cgi_env("usage", "GET", b"", None, auth, "userId=bench-user")
    for k in list(st.settings) + ["PATH", "METRICS_DIR"] + list(PASSTHROUGH_ENV):
        params.pop(k, None)
    # Both processes at once, requests alternating between them, so that the
    # load of the machine weighs on both alike.
    procs = {"limits on ": FcgiProcess(prog, base),
             "limits off": FcgiProcess(prog, dict(base, RATE_LIMIT_USAGE="0",
                                                  RATE_LIMIT_USAGE_IP="0"))}
    times = {label: [] for label in procs}
    try:
        for _ in range(200):
            for proc in procs.values():
                proc.request(params)
        for _ in range(N):
            for label, proc in procs.items():
                t0 = time.perf_counter()
                r = proc.request(params)
                times[label].append((time.perf_counter() - t0) * 1e3)
                if r.status != 200:
                    sys.exit(f"usage GET answered {r.status}")
    finally:
        for proc in procs.values():
            proc.cleanup()
    med = {}
    for label, ts in times.items():
        ts.sort()
        med[label] = ts[len(ts) // 2]
        print(f"   {label}: median {med[label]:.3f} ms   p99 {ts[int(len(ts) * 0.99)]:.3f} ms   "
              f"mean {statistics.mean(ts):.3f} ms")
    print(f"   difference of the medians: {(med['limits on '] - med['limits off']) * 1000:.0f} us "
          "per request for its two checks")
PY
