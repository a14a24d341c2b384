#!/usr/bin/env python3
"""Two builds of the FastCGI programs, alternated: a script that prints figures.

    python3 bench/ab.py OLD_SRCDIR NEW_SRCDIR      (each with its build/ built)
    KIND=usage ROUNDS=6 python3 bench/ab.py /tmp/old /work/main

For a change whose effect is smaller than the drift of a shared VM's speed
from one minute to the next: each round runs both builds, in alternating
order, each on a fresh stack (PostgreSQL, Apache with mod_fcgid) from its
own source tree (schema included): 2 s of warm-up at c=16 (mod_fcgid starts
its processes), then DURATION s at c=8 of fresh signed events (KIND=webhook)
or fresh usage records (KIND=usage), as in bench/deployments.py.  Prints
each figure and the medians.  A worktree of the old commit makes OLD_SRCDIR:
    git worktree add /tmp/old HEAD~1 && (cd /tmp/old && autoreconf -fi &&
      mkdir build && cd build && ../configure && make -j2)
"""
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
if len(sys.argv) != 3:
    sys.exit(__doc__)
trees = {"old": os.path.abspath(sys.argv[1]), "new": os.path.abspath(sys.argv[2])}
sys.argv = sys.argv[:1]
import deployments as d  # noqa: E402
from harness import Stack  # noqa: E402

KIND = os.environ.get("KIND", "webhook")
PATH = {"webhook": "/api/stripe/webhook", "usage": "/api/usage"}[KIND]
ROUNDS = max(1, int(os.environ.get("ROUNDS", "4")))
DURATION = max(1, int(os.environ.get("DURATION", "4")))


def main():
    tmp = tempfile.mkdtemp(prefix="billing-ab-")
    with open(os.path.join(tmp, "bench.lua"), "w") as f:
        f.write(d.WRK_LUA)
    got = {name: [] for name in trees}
    print(f"# {KIND} through Apache + mod_fcgid at c=8, {ROUNDS} rounds of {DURATION} s, "
          f"alternating; events/s or requests/s")
    for rnd in range(ROUNDS):
        for name in ("old", "new") if rnd % 2 == 0 else ("new", "old"):
            src = trees[name]
            with Stack({"STRIPE_SYNC_MODE": "event"}, builddir=os.path.join(src, "build"),
                       srcdir=src, apache_mode="fcgid") as st:
                d.wrk(st.url(PATH), KIND, f"warm{rnd}{name}", 16, tmp, duration=2)
                r = d.wrk(st.url(PATH), KIND, f"run{rnd}{name}", 8, tmp, duration=DURATION,
                          expect=4000)
            got[name].append(r["rps"])
            print(f"round {rnd + 1} {name}: {r['rps']:.0f} (p50 {r['p50']:.1f} ms, "
                  f"p99 {r['p99']:.1f} ms)", flush=True)
    for name, v in got.items():
        print(f"{name} median {statistics.median(v):.0f}: " + ", ".join(f"{x:.0f}" for x in v))


if __name__ == "__main__":
    main()
