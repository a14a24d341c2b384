"""A small driver for headless Chromium over the DevTools protocol (Python 3
standard library only), for tests/test_admin_browser.py.

    with Browser(tmpdir) as b:
        b.headers({"Authorization": "Basic ..."})
        b.scripts(False)                     # the pages must work without JavaScript
        b.go("http://127.0.0.1:8080/admin/")
        html = b.html()
        b.type_into('input[name="q"]', "ada"); b.key_enter()   # submits the form
        b.click('a[href^="customer?"]')
        b.screenshot("/tmp/page.png")

Why a driver and not `chromium --dump-dom/--screenshot`: those cannot send a
Basic-auth header, fill in a form or press its button, and a form post made
by the browser itself (with the Origin header it chooses) is the point of the
end-to-end action.  The protocol runs over --remote-debugging-pipe (fd 3:
commands to Chromium, fd 4: answers and events, each message JSON ending in
a NUL byte), so no WebSocket client or extra package is needed.  Input goes
through the DOM and Input domains (focus, insertText, key and mouse events),
not through page JavaScript, which is disabled.

Chromium (Debian's `chromium`) runs headless with a fresh profile and, as
root, --no-sandbox; every flag that would make it reach the network on its
own is off.  Console and security messages (CSP violations) are collected in
Browser.log.
"""

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
         "--remote-debugging-pipe", "--window-size=1280,900"]


def chromium_binary():
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise RuntimeError("no chromium (Debian: apt-get install chromium)")


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, tmpdir=None, timeout=30):
        self.timeout = timeout
        self.log = []            # (source/level, text) of console and security messages
        self._events = []
        self._id = 0
        self._buf = b""
        self._own_tmp = tmpdir is None
        self.profile = tempfile.mkdtemp(prefix="chromium-", dir=tmpdir)
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()

        def fds():  # in the child: fd 3 reads our commands, fd 4 writes answers
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        self.proc = subprocess.Popen(
            [chromium_binary()] + FLAGS + ["--user-data-dir=" + self.profile, "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.profile, "stderr.log"), "wb"),
            preexec_fn=fds, close_fds=False, start_new_session=True)
        os.close(cmd_r)
        os.close(out_w)
        self._w, self._r = cmd_w, out_r
        self.session = None

    # -- the pipe ---------------------------------------------------------

    def _read_message(self, deadline):
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no answer from chromium in time")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise BrowserError("chromium closed the pipe (see " + self.profile +
                                       "/stderr.log)")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def _note(self, msg):
        m, p = msg.get("method"), msg.get("params", {})
        if m == "Log.entryAdded":
            e = p.get("entry", {})
            self.log.append((e.get("source", "") + "/" + e.get("level", ""), e.get("text", "")))
        elif m == "Runtime.consoleAPICalled":
            self.log.append(("console/" + p.get("type", ""),
                             " ".join(str(a.get("value", "")) for a in p.get("args", []))))
        self._events.append(msg)

    def send(self, method, params=None, session=True):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            got = self._read_message(deadline)
            if got.get("id") == self._id:
                if "error" in got:
                    raise BrowserError(f"{method}: {got['error']}")
                return got.get("result", {})
            self._note(got)

    def wait_event(self, method, deadline=None):
        deadline = deadline or time.monotonic() + self.timeout
        for i, ev in enumerate(self._events):
            if ev.get("method") == method:
                del self._events[: i + 1]
                return ev
        while True:
            ev = self._read_message(deadline)
            self._note(ev)
            if ev.get("method") == method:
                self._events.clear()
                return ev

    # -- setup --------------------------------------------------------------

    def __enter__(self):
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": page["targetId"], "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "DOM", "Log", "Runtime", "Network", "CSS"):
            self.send(domain + ".enable")
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.send("Browser.close", session=False)
                self.proc.wait(10)
            except (BrowserError, OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def headers(self, headers):
        """Sent with every request the page makes (Basic credentials)."""
        self.send("Network.setExtraHTTPHeaders", {"headers": headers})

    def scripts(self, enabled):
        self.send("Emulation.setScriptExecutionDisabled", {"value": not enabled})

    # -- pages ----------------------------------------------------------------

    def _after_navigation(self, start):
        self.wait_event("Page.loadEventFired")
        return self.url()

    def go(self, url):
        self._events.clear()
        r = self.send("Page.navigate", {"url": url})
        if r.get("errorText"):
            raise BrowserError(f"navigate {url}: {r['errorText']}")
        return self._after_navigation(time.monotonic())

    def url(self):
        hist = self.send("Page.getNavigationHistory")
        return hist["entries"][hist["currentIndex"]]["url"]

    def _root(self):
        return self.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]

    def node(self, selector):
        n = self.send("DOM.querySelector", {"nodeId": self._root(), "selector": selector})["nodeId"]
        if not n:
            raise BrowserError(f"no element matches {selector}")
        return n

    def html(self):
        return self.send("DOM.getOuterHTML", {"nodeId": self._root()})["outerHTML"]

    def computed(self, selector, prop):
        styles = self.send("CSS.getComputedStyleForNode", {"nodeId": self.node(selector)})
        return next((s["value"] for s in styles["computedStyle"] if s["name"] == prop), None)

    def type_into(self, selector, text):
        self.send("DOM.focus", {"nodeId": self.node(selector)})
        self.send("Input.insertText", {"text": text})

    def key_enter(self):
        """Enter in the focused field: the browser submits its form (no script involved)."""
        self._events.clear()
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                 "windowsVirtualKeyCode": 13,
                                                 "text": "\r" if kind == "keyDown" else ""})
        return self._after_navigation(time.monotonic())

    def click(self, selector):
        """A real mouse click in the middle of the element; waits for the next page."""
        n = self.node(selector)
        self.send("DOM.scrollIntoViewIfNeeded", {"nodeId": n})
        quad = self.send("DOM.getContentQuads", {"nodeId": n})["quads"][0]
        x = sum(quad[0::2]) / 4
        y = sum(quad[1::2]) / 4
        self._events.clear()
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                   "button": "left", "clickCount": 1})
        return self._after_navigation(time.monotonic())

    def screenshot(self, path, width=1280, max_height=4000):
        """The whole page (up to max_height pixels) as PNG."""
        h = self.send("Page.getLayoutMetrics")["cssContentSize"]["height"]
        h = int(min(max(h, 200), max_height))
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": h, "deviceScaleFactor": 1, "mobile": False})
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        self.send("Emulation.clearDeviceMetricsOverride")
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path
