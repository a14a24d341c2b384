#!/usr/bin/env python3
"""Early answers survive every way Apache runs the programs (issue 16).

An answer given before the request body is read (401 before the body, 405
with a body, 415, 413 over BILLING_MAX_BODY, a webhook without signature)
used to be lost under event MPM + mod_cgid, Debian's default: mod_cgid was
still writing the body into the program when it exited.  serve now reads
or drains every body before the handler answers.  Each refusal, for every
endpoint, with bodies of 0 and 100 bytes and just under and just over the
cap, must arrive complete (status, JSON error, Content-Type) through
event + mod_cgid, through prefork + mod_cgi and through mod_proxy_fcgi
(which streams the body to a FastCGI process); a large body sent whole by
a client that then reads gets its answer, not a reset.
"""
import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, Tap  # noqa: E402

CAP = 65536  # BILLING_MAX_BODY here, so cap+1 reaches the program (Apache's limit is 1 MiB)
SIZES = (0, 100, CAP - 1, CAP + 1)
ORIGIN = "https://app.example.test"


def body_of(n):
    # Valid-looking JSON of exactly n bytes where n allows, else filler.
    if n < 2:
        return b"x" * n
    pad = n - len(b'{"p":""}')
    return b'{"p":"' + b"a" * pad + b'"}' if pad >= 0 else b"{" + b" " * (n - 2) + b"}"


# (name, method, path, headers, the status the refusal must have, its error code)
def refusals(size):
    over = size > CAP
    too_large = (413, "payload_too_large")
    json_ct = {"Content-Type": "application/json"}
    cases = [
        # usage: 401 before the body is looked at (over the cap too: auth comes first)
        ("usage POST without credentials", "POST", "/api/usage", json_ct, 401, "unauthorized"),
        ("usage PUT (405)", "PUT", "/api/usage", json_ct, 405, "method_not_allowed"),
        ("usage POST text/plain", "POST", "/api/usage",
         {"Content-Type": "text/plain", "Authorization": "Bearer usage-test-key-0123456789abcdef"},
         415, "unsupported_media_type"),
        ("checkout POST without credentials", "POST", "/api/stripe/create-checkout-session",
         json_ct, 401, "unauthorized"),
        ("checkout DELETE (405)", "DELETE", "/api/stripe/create-checkout-session", json_ct,
         405, "method_not_allowed"),
        ("webhook PUT (405)", "PUT", "/api/stripe/webhook", json_ct, 405, "method_not_allowed"),
        # webhook: the signature is checked after the body; over the cap that is a 413
        ("webhook POST without signature", "POST", "/api/stripe/webhook", json_ct,
         *(too_large if over else (400, "signature_missing"))),
        # with credentials, a body over the cap is the refusal
        ("usage POST over/under the cap with the API key", "POST", "/api/usage",
         {**json_ct, "Authorization": "Bearer usage-test-key-0123456789abcdef"},
         *(too_large if over else (400, None))),
    ]
    return cases


def raw_exchange(port, method, path, headers, body, timeout=20):
    """Send the whole request, then read the whole answer (no early give-up).
    Returns (status, headers dict, body bytes) or raises on reset/timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
                f"Content-Length: {len(body)}", f"Origin: {ORIGIN}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    if b"\r\n\r\n" not in data:
        raise ConnectionError(f"incomplete answer ({len(data)} bytes)")
    top, rest = data.split(b"\r\n\r\n", 1)
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if hdrs.get("transfer-encoding", "").lower() == "chunked":
        out, buf = b"", rest
        while True:
            size_line, _, buf = buf.partition(b"\r\n")
            n = int(size_line.split(b";")[0], 16)
            if n == 0:
                break
            out += buf[:n]
            buf = buf[n + 2:]
        rest = out
    elif "content-length" in hdrs:
        n = int(hdrs["content-length"])
        if len(rest) < n:
            raise ConnectionError(f"body cut short: {len(rest)} of {n} bytes")
        rest = rest[:n]
    return status, hdrs, rest


def check_mode(t, mode):
    with Stack({"BILLING_MAX_BODY": str(CAP)}, apache_mode=mode, stripe=False) as st:
        for size in SIZES:
            body = body_of(size)
            for name, method, path, headers, want_status, want_code in refusals(size):
                label = f"{mode}: {name}, {size}-byte body"
                try:
                    status, hdrs, raw = raw_exchange(st.port, method, path, headers, body)
                except (OSError, ValueError) as e:
                    t.ok(False, label + " -> complete answer", f"{type(e).__name__}: {e}")
                    continue
                try:
                    doc = json.loads(raw)
                except ValueError:
                    doc = None
                code = doc.get("error", {}).get("code") if isinstance(doc, dict) else None
                t.ok(status == want_status and doc is not None and
                     (want_code is None or code == want_code) and
                     hdrs.get("content-type", "").startswith("application/json"),
                     f"{label} -> {want_status} {want_code or ''} as JSON",
                     f"got {status} {hdrs.get('content-type')} {raw[:200]!r}")
        # A client that sends a large body whole and then reads: five tries,
        # every one answered (the issue saw hangs and empty replies).
        big = body_of(200 * 1024)
        for i in range(5):
            label = f"{mode}: 200 KB body without credentials, try {i + 1}"
            try:
                status, hdrs, raw = raw_exchange(st.port, "POST", "/api/usage",
                                                 {"Content-Type": "application/json"}, big)
                t.ok(status == 401 and json.loads(raw)["error"]["code"] == "unauthorized",
                     label + " -> 401 JSON", f"got {status} {raw[:200]!r}")
            except (OSError, ValueError) as e:
                t.ok(False, label + " -> 401 JSON", f"{type(e).__name__}: {e}")
        log = st.error_log()
        t.ok("AH02651" not in log and "AH00574" not in log,
             f"{mode}: Apache logged no 'Error writing request body to script'",
             "\n".join(ln for ln in log.splitlines() if "AH02651" in ln or "AH00574" in ln)[:2000])


def main():
    t = Tap()
    for mode in ("cgid", "cgi", "proxy_fcgi"):
        with t.guard(f"early answers under {mode}"):
            check_mode(t, mode)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
