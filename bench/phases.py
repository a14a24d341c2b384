#!/usr/bin/env python3
"""Where a plain-CGI invocation's wall time goes, beside the floor: a script that prints figures.

    python3 bench/phases.py [BUILDDIR]     (RUNS=150 by default; needs cc)

Issue 8's per-invocation target compares webhook.cgi and usage.cgi with the
minimal C webhook of ../shared/bench/floor.  bench/deployments.py says how
far apart they are; this says in which phase.  Each program runs with a
small preloaded library (compiled here from PRELOAD) that notes the
monotonic time at its constructor (the libraries are loaded and
relocated), at the first read of stdin, at connect() to PostgreSQL's
socket, at each send() and recv() on it, at the first write of the answer,
and at its destructor (exit); the script notes the spawn and the reap.
Runs are interleaved and take turns at going first, against one
PostgreSQL, and the table gives the median length of each phase:

  start      spawn to the constructor: exec, the dynamic loader;
  request    to connect(): settings, the body, signature or key, JSON;
  connect    connect() to the server's first answer: a new backend;
  statements that answer to the last one: the request's statements;
  answer     to the end of the destructor: the answer, closing;
  exit       the destructor to the reap: the process's end.

The preloaded library's own cost (a few microseconds per call) is in
every program alike.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deployments as d  # noqa: E402  (BUILDDIR, SRCDIR, helpers)
from harness import DEFAULT_SETTINGS, Stack, stripe_signature  # noqa: E402

RUNS = max(10, min(int(os.environ.get("RUNS", "150")), 2000))

PRELOAD = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct { char what; double ms; } marks[256];
static int nmarks;

static void
mark(char what)
{
	struct timespec ts;

	if (nmarks == 256)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	marks[nmarks].what = what;
	marks[nmarks++].ms = ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

__attribute__((constructor)) static void on_start(void) { mark('L'); }

__attribute__((destructor)) static void
on_exit_marks(void)
{
	const char *path = getenv("PHASES_OUT");
	FILE *f;
	int i;

	mark('E');
	if (path == NULL || (f = fopen(path, "w")) == NULL)
		return;
	for (i = 0; i < nmarks; i++)
		fprintf(f, "%c %.4f\n", marks[i].what, marks[i].ms);
	fclose(f);
}

#define NEXT(name) static __typeof__(name) *next; if (next == NULL) next = dlsym(RTLD_NEXT, #name)

ssize_t read(int fd, void *p, size_t n) { NEXT(read); if (fd == 0) mark('R'); return next(fd, p, n); }
ssize_t write(int fd, const void *p, size_t n) { NEXT(write); if (fd == 1) mark('W'); return next(fd, p, n); }
int connect(int fd, const struct sockaddr *a, socklen_t l) { NEXT(connect); if (a->sa_family == AF_UNIX) mark('C'); return next(fd, a, l); }
ssize_t send(int fd, const void *p, size_t n, int fl) { NEXT(send); mark('S'); return next(fd, p, n, fl); }
ssize_t recv(int fd, void *p, size_t n, int fl) { NEXT(recv); ssize_t r = next(fd, p, n, fl); if (r > 0) mark('V'); return r; }
"""

PHASES = ("start", "request", "connect", "statements", "answer", "exit")


def phases(marks, t0, t1):
    """The six phases (ms) of one run from its marks [(what, ms)]."""
    at = {}
    for what, ms in marks:
        at.setdefault(what, ms)		# the first of each
    last_recv = max(ms for what, ms in marks if what == "V")
    end = marks[-1][1]
    return (at["L"] - t0, at["C"] - at["L"], at["V"] - at["C"], last_recv - at["V"],
            end - last_recv, t1 - end)


def main():
    tmp = tempfile.mkdtemp(prefix="billing-bench-")
    try:
        floor = d.floor_cgi(tmp, "phases.py")
        with open(os.path.join(tmp, "phases.c"), "w") as f:
            f.write(PRELOAD)
        preload = os.path.join(tmp, "phases.so")
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", preload,
                        os.path.join(tmp, "phases.c"), "-ldl"], check=True)
        out_file = os.path.join(tmp, "marks")
        with Stack({"STRIPE_SYNC_MODE": "event"}, builddir=d.BUILDDIR, srcdir=d.SRCDIR,
                   apache=False) as st:
            d.create_floor_db(st)
            progs = [("webhook.cgi", "webhook"), ("usage.cgi POST", "usage"),
                     ("floor limit.cgi", None)]
            times = {name: [] for name, _ in progs}
            for i in range(RUNS + 10):
                # Programs take turns at going first: no one gains from its place.
                for name, kind in progs if i % 2 == 0 else progs[::-1]:
                    if kind == "usage":
                        b = d.usage_body("ph", i)
                        env = st.cgi_env("usage", body=b, headers={
                            "Authorization": "Bearer " + DEFAULT_SETTINGS["USAGE_API_KEY"]})
                        prog = os.path.join(st.cgi_bin, "usage.cgi")
                    else:
                        b = d.event_body("ph" if kind else "phf", i)
                        env = st.cgi_env("webhook", body=b, headers={
                            "Stripe-Signature": stripe_signature(d.SECRET, b)})
                        prog = os.path.join(st.cgi_bin, "webhook.cgi")
                    if kind is None:
                        prog = floor
                        env = d.floor_env(env, st.pg_run, st.pg_port)
                    env.update({"LD_PRELOAD": preload, "PHASES_OUT": out_file})
                    t0 = time.monotonic() * 1000
                    out, _ = d.spawn(prog, env, b)
                    t1 = time.monotonic() * 1000
                    if not out.startswith(b"Status: 200"):
                        sys.exit(f"phases.py: {name} answered {out[:60]!r}")
                    with open(out_file) as f:
                        marks = [(w, float(ms)) for w, ms in (line.split() for line in f)]
                    os.unlink(out_file)
                    if i >= 10:
                        times[name].append(phases(marks, t0, t1))
            print(f"# plain CGI per invocation by phase, {time.strftime('%Y-%m-%d %H:%M')},"
                  f" {RUNS} runs each, interleaved; medians in ms")
            print("| program | " + " | ".join(PHASES) + " | total |")
            print("|---" * (len(PHASES) + 2) + "|")
            for name, _ in progs:
                cols = [statistics.median(run[k] for run in times[name]) for k in range(len(PHASES))]
                total = statistics.median(sum(run) for run in times[name])
                print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cols) + f" | {total:.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
