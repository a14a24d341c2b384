"""A headless Chromium driven through chromedriver's W3C WebDriver HTTP API,
with the Python standard library only (tests/test_journey.py).

Why this and not playwright-core from npm: Debian's chromium-driver is built
from the same source as Debian's chromium, so the two always match (a
Playwright release expects the Chromium revision it was made with and may
break against another); WebDriver is a W3C standard of a dozen HTTP calls;
and the suite stays Python stdlib with no node_modules to install.

    from webdriver import Browser
    with Browser(shots_dir) as b:
        b.get(url); b.type("#card_number", "4242 4242 4242 4242"); b.click("#submit")
        b.screenshot("01-checkout"); b.current_url(); b.text("#error")

JavaScript is off (Chromium's content setting), so the pages are used as a
person without JavaScript would use them; WebDriver's own commands still work.
Environment: CHROMIUM_BIN (/usr/bin/chromium), CHROMEDRIVER_BIN
(/usr/bin/chromedriver).
"""
import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
# What chromedriver says of an element of a page that has been navigated
# away from: the W3C "stale element reference", or, while the new document
# replaces the old one, the inspector's word that the node left the document.
OLD_PAGE_GONE = ("stale element", "no such element",
                 "does not belong to the document", "No node with given id")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-extensions",
                 "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1"]


class WebDriverError(RuntimeError):
    pass


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binaries():
    """(chromium, chromedriver) paths, or raise WebDriverError naming what is missing."""
    chromium = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or "/usr/bin/chromium"
    driver = os.environ.get("CHROMEDRIVER_BIN") or shutil.which("chromedriver") or \
        "/usr/bin/chromedriver"
    for path, pkg in ((chromium, "chromium"), (driver, "chromium-driver")):
        if not os.access(path, os.X_OK):
            raise WebDriverError(f"{path} not found (apt-get install {pkg}; tools/deps does)")
    return chromium, driver


class Browser:
    def __init__(self, shots_dir, width=1100, height=860, javascript=False):
        self.shots_dir = shots_dir
        os.makedirs(shots_dir, exist_ok=True)
        chromium, driver = binaries()
        self.profile = tempfile.mkdtemp(prefix="journey-chromium-")
        self.port = _free_port()
        self.log = open(os.path.join(shots_dir, "chromedriver.log"), "ab")
        self.proc = subprocess.Popen([driver, f"--port={self.port}"], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     process_group=0)
        self.session = None
        try:
            self._wait_ready()
            prefs = {} if javascript else {"profile.managed_default_content_settings.javascript": 2}
            caps = {"browserName": "chrome", "goog:chromeOptions": {
                "binary": chromium, "prefs": prefs,
                "args": CHROMIUM_ARGS + [f"--user-data-dir={self.profile}",
                                         f"--window-size={width},{height}"]}}
            value = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
            self.session = value["sessionId"]
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _wait_ready(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise WebDriverError("chromedriver exited (see chromedriver.log)")
            try:
                if self._call("GET", "/status", timeout=2).get("ready"):
                    return
            except (OSError, WebDriverError):
                pass
            time.sleep(0.05)
        raise WebDriverError("chromedriver not ready after 30 s")

    def _call(self, method, path, body=None, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, data, {"Content-Type": "application/json"})
            r = conn.getresponse()
            raw = r.read()
        finally:
            conn.close()
        try:
            doc = json.loads(raw)
        except ValueError:
            raise WebDriverError(f"{method} {path}: {r.status} {raw[:200]!r}") from None
        value = doc.get("value")
        if r.status != 200:
            err = value.get("error") if isinstance(value, dict) else value
            msg = value.get("message", "") if isinstance(value, dict) else ""
            raise WebDriverError(f"{method} {path}: {err}: {msg.splitlines()[0] if msg else ''}")
        return value

    def _s(self, path, body=None, method=None):
        return self._call(method or ("GET" if body is None else "POST"),
                          f"/session/{self.session}{path}", body)

    # -- what a test does -------------------------------------------------------

    def get(self, url):
        self._s("/url", {"url": url})

    def current_url(self):
        return self._s("/url")

    def title(self):
        return self._s("/title")

    def source(self):
        return self._s("/source")

    def finds(self, css):
        return [e[ELEMENT] for e in self._s("/elements", {"using": "css selector", "value": css})]

    def find(self, css):
        found = self.finds(css)
        if not found:
            raise WebDriverError(f"no element matches {css!r} on {self.current_url()}")
        return found[0]

    def text(self, css):
        return self._s(f"/element/{self.find(css)}/text")

    def value(self, css):
        return self._s(f"/element/{self.find(css)}/property/value")

    def type(self, css, text):
        el = self.find(css)
        self._s(f"/element/{el}/clear", {})
        self._s(f"/element/{el}/value", {"text": text})

    def click(self, css, navigates=True):
        """Click; when it submits a form or follows a link (navigates), return
        only once the old page is gone: chromedriver may answer the click
        before the navigation it causes has begun."""
        el = self.find(css)
        old = self.find("html") if navigates else None
        self._s(f"/element/{el}/click", {})
        if old is None:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self._s(f"/element/{old}/name")
            except WebDriverError as e:
                if any(gone in str(e) for gone in OLD_PAGE_GONE):
                    return
                raise
            time.sleep(0.02)
        raise WebDriverError(f"clicking {css!r} did not leave {self.current_url()} in 30 s")

    def select(self, css, value):
        """Choose the option with this value in the <select> matching css."""
        self.click(f'{css} option[value="{value}"]', navigates=False)

    def screenshot(self, name):
        """Saves <shots_dir>/<name>.png (the viewport) and returns its path."""
        path = os.path.join(self.shots_dir, name + ".png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(self._s("/screenshot")))
        return path

    def close(self):
        if self.session:
            with contextlib.suppress(Exception):
                self._s("", method="DELETE")
            self.session = None
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
