"""A headless Chromium driven over the Chrome DevTools protocol, for the page's tests.

No driver library and no downloaded browser: Debian's ``chromium``
(``/usr/bin/chromium``, installed by ``.ci/run``) started with
``--remote-debugging-pipe`` speaks the protocol on its file descriptors 3
(commands in) and 4 (replies and events out), one JSON message per
NUL-terminated chunk. `Browser` is that pipe; `Page` a tab with the few
things a test does: go to a URL, evaluate, wait for a condition, click with
the mouse, type, take a screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Browser", "BrowserError", "Page", "find_chromium"]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-pipe"]
CALL_TIMEOUT = 30.0


class BrowserError(RuntimeError):
    """The browser answered a command with an error, died, or did not answer in time."""


def find_chromium() -> str | None:
    """The Chromium to drive: $ROGER_CHROMIUM, else ``chromium`` on PATH, else None."""
    return os.environ.get("ROGER_CHROMIUM") or shutil.which("chromium")


def _above(fd: int, lowest: int) -> int:
    """`fd` moved to a number >= `lowest`."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, lowest)
    os.close(fd)
    return moved


class Browser:
    """One headless Chromium process, with a fresh profile, spoken to over its pipe."""

    def __init__(self, executable: str, width: int = 1280, height: int = 900) -> None:
        self.profile = tempfile.mkdtemp(prefix="roger-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Above 4, so that moving them onto 3 and 4 cannot close one of them.
        to_browser_r, from_browser_w = (_above(fd, 10) for fd in (to_browser_r, from_browser_w))
        # The protocol wants the pipe on fds 3 and 4 exactly: a shell puts it there.
        shell = (f'exec 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- '
                 f'{from_browser_w}>&-; exec "$@"')
        args = [executable, *FLAGS, f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}", "about:blank"]
        self.log = Path(self.profile) / "chromium.log"  # quoted when it fails
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["bash", "-c", shell, "bash", *args],
                                         pass_fds=(to_browser_r, from_browser_w),
                                         stdout=log, stderr=subprocess.STDOUT)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._replies: dict[int, dict] = {}
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                buf += chunk
                *messages, buf = buf.split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        with self._arrived:
                            self._replies[message["id"]] = message
                            self._arrived.notify_all()
        with self._arrived:  # the browser is gone: wake every waiter
            self._replies[-1] = {}
            self._arrived.notify_all()

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = CALL_TIMEOUT) -> dict:
        """Send one command; return its result, or raise `BrowserError`."""
        with self._lock:
            self._next_id += 1
            msg_id = self._next_id
            message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
            if session is not None:
                message["sessionId"] = session
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._arrived:
            while msg_id not in self._replies:
                left = deadline - time.monotonic()
                if -1 in self._replies or left <= 0:
                    why = "the browser is gone" if -1 in self._replies else "no answer in time"
                    raise BrowserError(f"{method}: {why}; its log ends with:\n{self._log_tail()}")
                self._arrived.wait(left)
            reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def new_page(self) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        return Page(self, session["sessionId"])

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5.0)
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._to_browser)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """A tab: navigate, evaluate JavaScript, click and type like a user, take screenshots."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, params: dict | None = None) -> dict:
        return self.browser.call(method, params, self.session)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'", what=f"{url} to load")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if a promise).

        Values come back as JSON: a DOM node is ``{}``, which is false in
        Python, so ask ``!!document.querySelector(...)`` to test for one.
        """
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, what: str = "") -> Any:
        """Evaluate `expression` until it is truthy; return its value (fail after `timeout` s)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what or expression}")
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """Press and release the left mouse button on the middle of `selector`'s element."""
        box = self.wait_for(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " if (!el) return null; el.scrollIntoView({block: 'center'});"
            " const r = el.getBoundingClientRect();"
            " return r.width ? {x: r.x + r.width / 2, y: r.y + r.height / 2} : null; })()",
            what=f"{selector} to be on the page")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"],
                                                   "button": "left", "clickCount": 1})

    def type(self, selector: str, text: str) -> None:
        """Click into `selector`'s field and type `text`."""
        self.click(selector)
        self.call("Input.insertText", {"text": text})

    def screenshot(self, path: str | os.PathLike[str], width: int = 1280) -> Path:
        """A PNG of the whole page at `width` CSS pixels."""
        height = self.evaluate("document.documentElement.scrollHeight")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": int(height), "deviceScaleFactor": 1,
                   "mobile": False})
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path
