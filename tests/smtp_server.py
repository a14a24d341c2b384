"""A real SMTP server for the tests: aiosmtpd (Debian's python3-aiosmtpd),
which none of us wrote, with a few switches to misbehave on demand.

Runs under any Python that can import aiosmtpd (tests/harness.py's
smtp_python() finds one: ours, else /usr/bin/python3):

    smtp_server.py --dir DIR [--host 127.0.0.1] [--port 0]
        [--tls-cert PEM --tls-key PEM (--starttls [--require-starttls] | --implicit-tls)]
        [--auth USER:PASSWORD]          AUTH PLAIN/LOGIN required (aiosmtpd: only over TLS)
        [--rcpt-reply ADDR=REPLY]...    answer RCPT TO:<ADDR> with REPLY ("550 5.1.1 No such user")
        [--rcpt-reply-once ADDR=REPLY]  the same, for the first RCPT TO:<ADDR> only (greylisting)
        [--data-reply-once REPLY]       answer the first DATA of each Message-ID with REPLY
        [--delay SECONDS]               wait before accepting each message
        [--stall SECONDS]               wait that long before answering DATA at all

Prints "listening on HOST:PORT" once it accepts connections.  Every
message accepted is written to DIR/accepted/NNNNN.eml (the bytes after
dot-unstuffing) with NNNNN.json beside it: mail_from, rcpt_tos, tls
(whether the session was encrypted), auth (the login that authenticated
or null), peer port.  A message refused at DATA goes to DIR/refused/ the
same way.  Files appear atomically (written, then renamed).
"""
import argparse
import asyncio
import json
import os
import re
import signal
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Handler:
    def __init__(self, args):
        self.args = args
        self.n = 0
        self.rcpt = dict(kv.split("=", 1) for kv in args.rcpt_reply)
        self.rcpt_once = dict(kv.split("=", 1) for kv in args.rcpt_reply_once)
        self.seen_rcpt = set()
        self.seen_ids = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.rcpt:
            return self.rcpt[address]
        if address in self.rcpt_once and address not in self.seen_rcpt:
            self.seen_rcpt.add(address)
            return self.rcpt_once[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def _save(self, where, server, session, envelope):
        self.n += 1
        d = os.path.join(self.args.dir, where)
        os.makedirs(d, exist_ok=True)
        base = os.path.join(d, f"{self.n:05d}")
        tls = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
        meta = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos, "tls": tls,
                "auth": session.login_data.decode() if isinstance(session.login_data, bytes)
                else session.login_data, "peer_port": session.peer[1] if session.peer else None}
        for ext, data in ((".eml", envelope.original_content or envelope.content),
                          (".json", json.dumps(meta).encode())):
            with open(base + ext + ".tmp", "wb") as f:
                f.write(data)
            os.rename(base + ext + ".tmp", base + ext)

    async def handle_DATA(self, server, session, envelope):
        if self.args.stall:
            await asyncio.sleep(self.args.stall)
            return "451 4.3.0 Stalled on purpose"
        if self.args.delay:
            await asyncio.sleep(self.args.delay)
        if self.args.data_reply_once:
            m = re.search(rb"^Message-ID:\s*(\S+)", envelope.content, re.M | re.I)
            key = m.group(1) if m else None
            if key not in self.seen_ids:
                self.seen_ids.add(key)
                self._save("refused", server, session, envelope)
                return self.args.data_reply_once
        self._save("accepted", server, session, envelope)
        return "250 2.0.0 Accepted"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--require-starttls", action="store_true")
    p.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--auth")
    p.add_argument("--rcpt-reply", action="append", default=[])
    p.add_argument("--rcpt-reply-once", action="append", default=[])
    p.add_argument("--data-reply-once")
    p.add_argument("--delay", type=float, default=0)
    p.add_argument("--stall", type=float, default=0)
    args = p.parse_args()

    ctx = None
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
    kw = {"hostname": "billing-test-smtp", "data_size_limit": 10 * 1024 * 1024}
    if ctx and args.starttls:
        kw.update(tls_context=ctx, require_starttls=args.require_starttls)
    if args.auth:
        user, password = args.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (isinstance(auth_data, LoginPassword) and auth_data.login == user.encode()
                  and auth_data.password == password.encode())
            return AuthResult(success=ok, handled=False, auth_data=auth_data)

        kw.update(authenticator=authenticator, auth_required=True)
    handler = Handler(args)
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, loop=loop, **kw), host=args.host, port=args.port,
        ssl=ctx if args.implicit_tls else None))
    port = server.sockets[0].getsockname()[1]
    print(f"listening on {args.host}:{port}", flush=True)
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, loop.stop)
    try:
        loop.run_forever()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
