"""A FastCGI responder's other half, for tests (Python 3 standard library).

    proc = FcgiProcess("/path/webhook.cgi", env={...})   # spawned with a
    r = proc.request({"REQUEST_METHOD": "POST", ...}, b"body")  # listening
    r.status, r.headers, r.body, r.stdout                         # socket on fd 0
    proc.stop()   # SIGTERM, wait; proc.stderr() is what it logged

The program is started the way mod_fcgid starts it: a Unix socket that
listens on fd 0 (FCGI_LISTENSOCK_FILENO), so libfcgi's FCGX_IsCGI() says
FastCGI.  request(): one connection per request, FCGI_RESPONDER role, no
keep-conn (as mod_fcgid does).  connect(), send() and answer() drive a
connection step by step, several requests on it with keep_conn (as
mod_proxy_fcgi does with enablereuse=on).  Records: FastCGI specification
1.0, section 3.3.
"""
import os
import socket
import struct
import subprocess
import tempfile

VERSION = 1
BEGIN_REQUEST, ABORT_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR = 1, 2, 3, 4, 5, 6, 7
RESPONDER = 1
KEEP_CONN = 1  # FCGI_BEGIN_REQUEST flags


def _record(rtype, content, request_id=1):
    out = b""
    for i in range(0, max(len(content), 1), 65535):
        chunk = content[i:i + 65535]
        pad = (8 - len(chunk) % 8) % 8
        out += struct.pack("!BBHHBx", VERSION, rtype, request_id, len(chunk), pad) + chunk + b"\0" * pad
        if not content:
            break
    return out


def _nv(name, value):
    def length(n):
        return struct.pack("!B", n) if n < 128 else struct.pack("!I", n | 0x80000000)
    name, value = name.encode(), value.encode()
    return length(len(name)) + length(len(value)) + name + value


class Answer:
    def __init__(self, stdout, stderr, app_status):
        self.stdout, self.stderr, self.app_status = stdout, stderr, app_status
        head, _, self.body = stdout.partition(b"\r\n\r\n") if b"\r\n\r\n" in stdout \
            else stdout.partition(b"\n\n")
        self.headers = {}
        self.header_list = []
        for line in head.decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
            self.header_list.append((k.strip().lower(), v.strip()))
        self.status = int(self.headers.get("status", "200").split()[0])


class FcgiProcess:
    def __init__(self, program, env=None, stderr_path=None):
        self.dir = tempfile.mkdtemp(prefix="fcgi-")
        self.path = os.path.join(self.dir, "sock")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(self.path)
        lsock.listen(16)
        self.stderr_path = stderr_path or os.path.join(self.dir, "stderr")
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([program], stdin=lsock.fileno(), stdout=subprocess.DEVNULL,
                                     stderr=self._err, env=env or {}, cwd=self.dir)
        lsock.close()

    @property
    def pid(self):
        return self.proc.pid

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    def request(self, params, body=b"", timeout=30):
        s = self.connect(timeout)
        try:
            self.send(s, params, body)
            return self.answer(s)
        finally:
            s.close()

    def connect(self, timeout=30):
        """A connection to the process, nothing sent yet (the caller closes it)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        return s

    @staticmethod
    def send(s, params, body=b"", keep_conn=False):
        """One request's records; keep_conn: FCGI_KEEP_CONN, the process
        leaves the connection open for the next request."""
        pbytes = b"".join(_nv(k, str(v)) for k, v in params.items())
        msg = _record(BEGIN_REQUEST, struct.pack("!HB5x", RESPONDER, KEEP_CONN if keep_conn else 0))
        msg += _record(PARAMS, pbytes) + _record(PARAMS, b"")
        msg += (_record(STDIN, body) if body else b"") + _record(STDIN, b"")
        s.sendall(msg)

    @staticmethod
    def answer(s):
        out, err, app_status, buf = b"", b"", None, b""
        while app_status is None:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before FCGI_END_REQUEST")
            buf += chunk
            while len(buf) >= 8:
                _, rtype, _, clen, pad = struct.unpack("!BBHHB", buf[:7])
                if len(buf) < 8 + clen + pad:
                    break
                content, buf = buf[8:8 + clen], buf[8 + clen + pad:]
                if rtype == STDOUT:
                    out += content
                elif rtype == STDERR:
                    err += content
                elif rtype == END_REQUEST:
                    app_status = struct.unpack("!I", content[:4])[0]
        return Answer(out, err, app_status)

    def alive(self):
        return self.proc.poll() is None

    def exit_status(self, timeout):
        """The exit status once the process ended within timeout s, else None."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
        return self.proc.returncode

    def stderr(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def cleanup(self):
        self.stop()
        for n in ("sock", "stderr"):
            try:
                os.unlink(os.path.join(self.dir, n))
            except OSError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass
