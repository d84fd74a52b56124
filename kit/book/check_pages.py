"""Open every page of the built book in headless Chromium and report what a reader would meet.

    python -m kit.book.check_pages [--html book/_build/html] [--width 1280] [--shots DIR] [PAGE ...]

Per page, one line: OK, or the faults found. A page fails on

* a console error or an uncaught exception;
* a request outside the book (any URL that is not a file under the book's folder);
* content wider than its column (an element of the article that scrolls horizontally, or
  sticks out past the article's right edge; not MathJax's assistive MathML, a copy of each
  formula for screen readers that is clipped to nothing on screen, whose unclipped box can
  reach past the edge when the formula ends a line);
* an explorer without its static frames (a ``.kit-explorer`` without two or more precomputed
  frames in it, keyed by one position per control, or a live widget panel, which cannot
  respond without a kernel);
* an image shown at less than 90 % of its natural width.

Chromium is driven over the DevTools protocol (``websocket-client``, already a dependency of
Jupyter); it must be installed (``apt-get install chromium``) or named by ``--chromium``.
The exit status is 1 when any page fails, 2 when Chromium or the book is missing.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from kit import paths

# What the page reports about itself once loaded (evaluated in the page; returns a JSON string).
PAGE_PROBE = r"""
(() => {
  const article = document.querySelector('article') || document.querySelector('main') || document.body;
  const right = article.getBoundingClientRect().right;
  const wide = [], flagged = [];
  for (const el of article.querySelectorAll('*')) {
    if (flagged.some(f => f.contains(el))) continue;  // one report per overflowing block
    if (el.closest('mjx-assistive-mml')) continue;  // MathJax's MathML copy for screen readers: clipped, never seen
    const style = getComputedStyle(el);
    if (style.display === 'none' || style.visibility === 'hidden') continue;
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    const scrolls = el.scrollWidth > el.clientWidth + 2 && ['auto', 'scroll'].includes(style.overflowX);
    const sticksOut = box.right > right + 2;
    if (scrolls || sticksOut) {
      const inner = [...el.children].some(c => c.getBoundingClientRect().right > right + 2);
      if (!inner || scrolls) flagged.push(el);
      if (!inner || scrolls) wide.push(`${el.tagName.toLowerCase()}.${[...el.classList].slice(0, 2).join('.')}`
                                      + ` (${Math.round(scrolls ? el.scrollWidth : box.right - box.left)} px)`);
    }
  }
  const shrunk = [];
  for (const img of article.querySelectorAll('img')) {
    if (!img.naturalWidth || !img.complete) { shrunk.push(`${img.src.split('/').pop()} (not loaded)`); continue; }
    // the size it was laid out for: its style or width attribute (a 2x PNG says half its pixels), else
    // its pixels over data-density, else its pixels
    const density = (img.dataset && img.dataset.density) ? parseFloat(img.dataset.density) : 1;
    // (myst-nb writes a 2x PNG's layout size as style="width: Npx")
    const styled = img.style.width.endsWith('px') ? parseFloat(img.style.width) : null;
    const intended = styled || (img.getAttribute('width') ? parseFloat(img.getAttribute('width')) : img.naturalWidth / density);
    const ratio = img.getBoundingClientRect().width / intended;
    if (ratio < 0.9) shrunk.push(`${img.src.split('/').pop().slice(0, 24)} (${Math.round(100 * ratio)} %)`);
  }
  // explorers: the book's (.kit-explorer), plus any live widget panel left in the page, which
  // cannot respond without a kernel; a set of frames counts when it holds two or more.
  const explorers = article.querySelectorAll('.kit-explorer, .widget-interact').length
    + [...article.querySelectorAll('i')].filter(i => i.textContent.startsWith('Explorer: move')).length;
  // ... and whose keys have one position per control (what kit-book.js looks up as they move)
  const frames = [...article.querySelectorAll('.kit-explorer')].filter(box => {
    const script = box.querySelector('script.kit-explorer-frames');
    const slots = box.querySelectorAll('.kit-explorer-controls > label, .kit-explorer-controls > .kit-explorer-fixed').length;
    try {
      const keys = Object.keys(JSON.parse(script.textContent));
      return keys.length >= 2 && keys.every(k => k.split(',').length === slots);
    } catch (e) { return false; }
  }).length;
  return JSON.stringify({wide: [...new Set(wide)].slice(0, 6), shrunk, explorers, frames,
                         height: document.documentElement.scrollHeight});
})()
"""


class Browser:
    """A headless Chromium and one DevTools websocket to a page target."""

    def __init__(self, chromium: str, width: int, height: int = 1000):
        import websocket

        self.profile = tempfile.mkdtemp(prefix="kit-check-pages-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.process = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--remote-debugging-port={port}", "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "--allow-file-access-from-files", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as reply:
                    target = next(t for t in json.load(reply) if t["type"] == "page")
                break
            except Exception:
                time.sleep(0.1)
        if target is None:
            self.close()
            raise RuntimeError(f"Chromium ({chromium}) did not open its DevTools port")
        self.socket = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=30)
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            self.call(method)
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        ident = next(self.ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def load(self, url: str, settle: float = 1.5) -> list[dict]:
        """Navigate, wait for the load event and a little more; return the events seen."""
        self.events = []
        self.call("Page.navigate", url=url)
        deadline = time.time() + 30
        loaded = False
        while time.time() < deadline and not loaded:
            message = json.loads(self.socket.recv())
            self.events.append(message)
            loaded = message.get("method") == "Page.loadEventFired"
        end = time.time() + settle
        self.socket.settimeout(0.2)
        while time.time() < end:
            try:
                self.events.append(json.loads(self.socket.recv()))
            except Exception:
                pass
        self.socket.settimeout(30)
        return self.events

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        """The whole page (up to 16000 px): the window is made as tall as the page, then restored.

        Not ``captureBeyondViewport``: with it, Chromium drew the pages taller than the window
        shifted ~330 px to the left (the navigation gone, the column cut), which no reader sees.
        """
        import base64

        width, view = self.evaluate("JSON.stringify([innerWidth, innerHeight])").strip("[]").split(",")
        height = min(int(self.evaluate("document.documentElement.scrollHeight") or 1000), 16000)
        self.call("Emulation.setDeviceMetricsOverride", width=int(width), height=height, deviceScaleFactor=1, mobile=False)
        try:
            time.sleep(0.3)  # let the taller window lay out
            shot = self.call("Page.captureScreenshot", format="png",
                             clip={"x": 0, "y": 0, "width": int(width), "height": height, "scale": 1})
        finally:
            self.call("Emulation.setDeviceMetricsOverride", width=int(width), height=int(view), deviceScaleFactor=1,
                      mobile=False)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.process.terminate()
            self.process.wait(timeout=10)
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def faults_of(events: list[dict], probe: dict, book: Path) -> list[str]:
    """The faults of one page, from the DevTools events and the page's own probe."""
    faults, urls = [], {}
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "")
            faults.append(f"uncaught exception: {text.splitlines()[0][:120]}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            faults.append(f"console error: {text[:120]}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            if params["entry"].get("source") == "network":
                continue  # the failed request itself is reported, with its file name
            faults.append(f"console error: {params['entry'].get('text', '')[:120]}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            urls[params.get("requestId")] = url
            if url.startswith("data:") or url.startswith("blob:"):
                continue
            if not url.startswith("file://") or not Path(urllib.request.url2pathname(url[7:].split("#")[0].split("?")[0])
                                                         ).resolve().is_relative_to(book.resolve()):
                faults.append(f"request outside the book: {url[:120]}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            where = urls.get(params.get("requestId"), "?").split("/")[-1][:60]
            faults.append(f"failed request: {where} ({params.get('errorText', '')}, {params.get('type', '')})")
    faults += [f"content wider than the column: {w}" for w in probe["wide"]]
    faults += [f"image shrunk below 90 %: {s}" for s in probe["shrunk"]]
    if probe["explorers"] and probe["frames"] < probe["explorers"]:
        faults.append(f"explorer without static frames ({probe['explorers']} explorer(s), {probe['frames']} frame set(s))")
    return list(dict.fromkeys(faults))  # in order, without repeats


def pages_of(html: Path) -> list[Path]:
    skip = {"search.html", "genindex.html"}
    return sorted(p for p in html.rglob("*.html") if p.name not in skip and "_static" not in p.parts
                  and "_sources" not in p.parts and "_vendor" not in p.parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", type=Path, help="pages to check (default: every page of the book)")
    parser.add_argument("--html", type=Path, default=paths.root() / "book" / "_build" / "html")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--shots", type=Path, default=None, help="save a full-page screenshot of each page here")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                        or shutil.which("google-chrome"))
    args = parser.parse_args(argv)
    if not args.chromium:
        print("check_pages: no Chromium found; install it (apt-get install chromium) or pass --chromium PATH")
        return 2
    if not (args.html / "index.html").is_file():
        print(f"check_pages: no built book at {args.html}; run `make book` first")
        return 2
    pages = [p.resolve() for p in args.pages] or pages_of(args.html)
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
    browser = Browser(args.chromium, args.width)
    failed = 0
    try:
        for page in pages:
            events = browser.load(page.as_uri())
            probe = json.loads(browser.evaluate(PAGE_PROBE))
            faults = faults_of(events, probe, args.html)
            name = page.relative_to(args.html.resolve()) if page.is_relative_to(args.html.resolve()) else page
            if args.shots:
                browser.screenshot(args.shots / (str(name).replace("/", "__").removesuffix(".html") + ".png"))
            if faults:
                failed += 1
                print(f"FAIL {name} ({probe['height']} px): " + "; ".join(faults[:8])
                      + (f"; … {len(faults) - 8} more" if len(faults) > 8 else ""))
            else:
                print(f"OK   {name} ({probe['height']} px)")
    finally:
        browser.close()
    print(f"{len(pages) - failed} of {len(pages)} pages clean")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
