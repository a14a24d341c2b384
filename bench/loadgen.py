"""A small closed-loop HTTP load generator (Python 3 standard library only).

Library use (bench/webhook.sh, other endpoint benchmarks):

    import loadgen
    def make(i):                      # the i-th request, 0 <= i < total
        return "POST", "/api/stripe/webhook", {"Stripe-Signature": ...}, body_bytes
    stats = loadgen.run("127.0.0.1", port, make, total=400, concurrency=4)
    print(loadgen.format_stats("c=4", stats))

`concurrency` worker threads each keep one HTTP/1.1 keep-alive connection
(reopened when the server closes it) and take the next request index until
`total` requests were sent.  Requests are built before the clock starts, so
the figures measure the server, not the request factory.

Command line (one fixed request, e.g. a GET):

    python3 bench/loadgen.py --port 8080 --path /api/usage -c 4 -n 200 \
        -H 'Authorization: Bearer ...'

Loopback only: the host must be 127.0.0.1, ::1 or localhost (this is a
benchmark tool, not a load-testing service).
"""
import argparse
import http.client
import statistics
import sys
import threading
import time

LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_TOTAL = 100000


def percentile(sorted_values, p):
    """Nearest-rank percentile (p in 0..100) of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def run(host, port, make_request, total, concurrency, timeout=30.0):
    """Sends `total` requests with `concurrency` workers.  Returns a dict:
    total, concurrency, seconds, rps, p50_ms, p90_ms, p99_ms, max_ms,
    statuses {status: count}, errors (transport failures)."""
    if host not in LOOPBACK:
        raise ValueError("loadgen is for loopback benchmarks only")
    if not 1 <= total <= MAX_TOTAL or not 1 <= concurrency <= 256:
        raise ValueError("total must be 1..%d and concurrency 1..256" % MAX_TOTAL)
    requests = [make_request(i) for i in range(total)]
    lock = threading.Lock()
    state = {"next": 0}
    latencies = []
    statuses = {}
    errors = []
    start_gate = threading.Barrier(concurrency + 1)

    def take():
        with lock:
            i = state["next"]
            if i >= total:
                return None
            state["next"] = i + 1
            return i

    def worker():
        conn = None
        start_gate.wait()
        while True:
            i = take()
            if i is None:
                break
            method, path, headers, body = requests[i]
            hdrs = dict(headers or {})
            if body is not None:
                hdrs.setdefault("Content-Length", str(len(body)))
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                conn = None
                with lock:
                    errors.append(repr(e))
                continue
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                statuses[status] = statuses.get(status, 0) + 1
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for th in threads:
        th.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    seconds = time.perf_counter() - t0
    lat = sorted(latencies)
    ms = (lambda v: round(v * 1000.0, 2))
    return {
        "total": total,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "rps": round(len(lat) / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": ms(percentile(lat, 50)),
        "p90_ms": ms(percentile(lat, 90)),
        "p99_ms": ms(percentile(lat, 99)),
        "max_ms": ms(lat[-1]) if lat else float("nan"),
        "mean_ms": ms(statistics.fmean(lat)) if lat else float("nan"),
        "statuses": dict(sorted(statuses.items())),
        "errors": len(errors),
    }


def format_stats(label, s):
    return (f"{label:<14} {s['rps']:>8.1f} req/s   p50 {s['p50_ms']:>7.2f} ms   "
            f"p99 {s['p99_ms']:>7.2f} ms   max {s['max_ms']:>7.2f} ms   "
            f"n={s['total']} statuses={s['statuses']} errors={s['errors']}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="closed-loop HTTP load generator (loopback only)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--method", default="GET")
    ap.add_argument("--path", default="/")
    ap.add_argument("--body-file")
    ap.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    ap.add_argument("-c", "--concurrency", type=int, action="append")
    ap.add_argument("-n", "--requests", type=int, default=200)
    a = ap.parse_args(argv)
    body = open(a.body_file, "rb").read() if a.body_file else None
    headers = dict(h.split(":", 1) for h in a.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    for c in a.concurrency or [1]:
        s = run(a.host, a.port, lambda i: (a.method, a.path, headers, body), a.requests, c)
        print(format_stats(f"c={c}", s), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
