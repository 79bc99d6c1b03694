#!/usr/bin/env python
"""Render every page of the built book in headless Chromium; report what a reader sees.

    python scripts/render_pages.py [--width 1280] [--html _build/html]
                                   [--out _build/screenshots] [PAGE_SUBSTRING ...]

Run it after building the book (`bash scripts/build.sh`). For every page it saves a
full-page screenshot (<out>/<page>.png) and counts MathJax errors, browser console
errors and uncaught page errors; display equations wider than the column; widgets
rendered against widgets stored; code and
output blocks wider than the column (clipped behind a scroll bar); figures shrunk to
fit the column. It measures the text column (CSS px) and how many characters of code
fit in it, and compares them with dlib.plot.COLUMN_PX and ruff's line length. Exit
status 1 when a page has a MathJax, console or page error, or a display equation wider
than the column (MathJax typesets it without error, and the page clips it).

The pages load MathJax, require.js and the Jupyter widget manager from CDNs. This
script answers those requests with pinned copies of the npm packages (fetched once with
`npm pack` into .cache/pages/), so it works offline; any other external request is
blocked and listed.

Needs (not part of CI):
    sudo apt-get install -y chromium     # Debian's Chromium at /usr/bin/chromium
    .venv/bin/pip install -e ".[pages]" -c requirements/constraints.txt   # playwright
    npm (Node.js), once, to fetch the pinned npm packages below
(no `playwright install`: Debian's Chromium is used; set CHROMIUM=... for another one)
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import mimetypes
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "pages"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

# npm packages served in place of the CDN copies the pages ask for (pinned)
NPM = {
    "mathjax": "3.2.2",
    "@jupyter-widgets/html-manager": "1.0.6",
    "requirejs": "2.3.4",
}
# CDN address -> (npm package, file in it: the address's `path` group, or a fixed file)
CDN = [
    (re.compile(r"https://cdn\.jsdelivr\.net/npm/mathjax@3[^/]*/(?P<path>[^?#]*)"),
     "mathjax", ""),
    (re.compile(r"https://cdn\.jsdelivr\.net/npm/@jupyter-widgets/html-manager@[^/]+/"
                r"(?P<path>[^?#]*)"), "@jupyter-widgets/html-manager", ""),
    (re.compile(r"https://cdnjs\.cloudflare\.com/ajax/libs/require\.js/[^/]+/"
                r"require(\.min)?\.js(?P<path>)"), "requirejs", "require.js"),
]
REDIRECT = re.compile(r'<meta http-equiv="Refresh"', re.I)  # index.html only forwards

# Evaluated in each page once it settled.
MEASURE = r"""() => {
  const art = document.querySelector('article.bd-article') || document.body;
  const cs = getComputedStyle(art);
  const column = art.clientWidth - parseFloat(cs.paddingLeft)
                 - parseFloat(cs.paddingRight);
  const chars = sel => {  // characters of the pre's font that fit in its width
    const pre = document.querySelector(sel);
    if (!pre) return null;
    const probe = document.createElement('span');
    probe.textContent = 'x'.repeat(200);
    pre.appendChild(probe);
    const ch = probe.getBoundingClientRect().width / 200;
    probe.remove();
    const ps = getComputedStyle(pre);
    const inner = pre.clientWidth - parseFloat(ps.paddingLeft)
                  - parseFloat(ps.paddingRight);
    return {chars: Math.floor(inner / ch + 1e-6),
            font: ps.fontSize + ' ' + ps.fontFamily.split(',')[0]};
  };
  const over = sel => [...document.querySelectorAll(sel)]
      .filter(p => p.scrollWidth > p.clientWidth + 1).length;
  const views = [...document.querySelectorAll(
      'script[type="application/vnd.jupyter.widget-view+json"]')];
  const imgs = [...art.querySelectorAll('img')].filter(i => i.naturalWidth > 0);
  return {
    column,
    merrors: [...document.querySelectorAll('mjx-merror, merror, .MathJax_Error')]
        .map(e => e.getAttribute('data-mjx-error') || e.textContent).slice(0, 20),
    math: document.querySelectorAll('.math').length,
    typeset: document.querySelectorAll('mjx-container').length,
    views: views.length,
    widgets: views.filter(s => s.parentElement.querySelector(
        '.jupyter-widgets, .widget-container')).length,
    widgetErrors: [...document.querySelectorAll('.jupyter-widgets')]
        .filter(e => /Error (displaying|rendering) widget/.test(e.textContent)).length,
    // display math wider than its box: MathJax's output runs past the column (hidden
    // or behind a scroll bar); measured on the typeset content, not the container
    mathOver: [...document.querySelectorAll('mjx-container[display="true"]')]
        .filter(m => {
          const inner = m.querySelector('mjx-math') || m;
          return inner.getBoundingClientRect().width > m.clientWidth + 1
                 || m.scrollWidth > m.clientWidth + 1;
        }).length,
    codeOver: over('div.cell_input pre'),
    outOver: over('div.cell_output pre'),
    code: chars('div.cell_input pre'),
    output: chars('div.cell_output pre'),
    shrunk: imgs.filter(i => i.naturalWidth > i.clientWidth + 1)
        .map(i => i.naturalWidth + ' px shown at ' + i.clientWidth),
  };
}"""


def die(msg: str) -> None:
    print(f"render_pages: {msg}", file=sys.stderr)
    sys.exit(2)


def npm_package(name: str, version: str) -> pathlib.Path:
    """The unpacked npm package name@version, fetched once with `npm pack`."""
    dest = CACHE / "npm" / f"{name.replace('/', '+')}@{version}"
    if (dest / "package.json").exists():
        return dest
    npm = shutil.which("npm")
    if npm is None:
        die(f"npm is needed once to fetch {name}@{version}: install Node.js "
            f"(sudo apt-get install -y npm), or unpack the package into {dest}")
    print(f"fetching {name}@{version} with npm pack ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([npm, "pack", f"{name}@{version}", "--pack-destination",
                              tmp, "--json", "--silent"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            die(f"`npm pack {name}@{version}` failed (offline?):\n{out.stderr.strip()}")
        tgz = pathlib.Path(tmp) / json.loads(out.stdout)[0]["filename"]
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        with tarfile.open(tgz) as tar:
            tar.extractall(part, filter="data")
        shutil.rmtree(dest, ignore_errors=True)
        (part / "package").rename(dest)
        shutil.rmtree(part)
    return dest


def serve(directory: pathlib.Path):
    """A local HTTP server for the built book (require.js does not work from file://)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def pages(html: pathlib.Path, only: list[str]) -> list[pathlib.Path]:
    skip = {"_static", "_sources", "_images"}
    found = sorted(p for p in html.rglob("*.html")
                   if not skip & set(p.relative_to(html).parts)
                   and not REDIRECT.search(p.read_text(errors="replace")[:2000]))
    if only:
        found = [p for p in found if any(s in p.relative_to(html).as_posix()
                                         for s in only)]
    return found


class Router:
    """Answers CDN requests from the local npm copies; blocks other external ones."""

    def __init__(self, origin: str):
        self.origin = origin
        self.packages = {name: npm_package(name, v) for name, v in NPM.items()}
        self.blocked: list[str] = []

    def local(self, url: str) -> pathlib.Path | None:
        for pattern, name, fixed in CDN:
            m = pattern.match(url)
            if m:
                path = self.packages[name] / (fixed or m.group("path"))
                return path if path.is_file() else None
        return None

    def __call__(self, route):
        req = route.request
        if req.url.startswith(self.origin):
            if req.resource_type == "document":
                return self.document(route)
            return route.continue_()
        if req.url.startswith(("data:", "blob:")):
            return route.continue_()
        path = self.local(req.url)
        if path is None:
            self.blocked.append(req.url)
            return route.abort()
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return route.fulfill(path=str(path), content_type=ctype,
                             headers={"Access-Control-Allow-Origin": "*"})

    def document(self, route):
        """Serve the page as built, except that a script served from a local copy loses
        its `integrity` hash (the npm file is not byte-identical to the CDN's)."""
        resp = route.fetch()

        def strip(m):
            tag = m.group(0)
            src = re.search(r'src="([^"]+)"', tag)
            if src and self.local(src.group(1)) is not None:
                tag = re.sub(r'\s+integrity="[^"]*"', "", tag)
            return tag

        route.fulfill(response=resp,
                      body=re.sub(r"<script\b[^>]*>", strip, resp.text()))


def render(page, url: str) -> dict:
    console, errors, failed = [], [], []

    def on_console(msg):
        console.append(f"{msg.type}: {msg.text}")

    def on_error(exc):
        errors.append(str(exc))

    def on_response(resp):
        if resp.status >= 400:
            failed.append(f"HTTP {resp.status} {resp.url}")

    page.on("console", on_console)
    page.on("pageerror", on_error)
    page.on("response", on_response)
    try:
        page.goto(url, wait_until="load", timeout=60_000)
        page.evaluate("""async () => {
            if (window.MathJax && MathJax.startup && MathJax.startup.promise)
                await MathJax.startup.promise;
        }""")
        # widgets render asynchronously, once require.js loaded their modules
        page.wait_for_function("""() => [...document.querySelectorAll(
              'script[type="application/vnd.jupyter.widget-view+json"]')]
            .every(s => s.parentElement.querySelector(
              '.jupyter-widgets, .widget-container'))""", timeout=20_000)
    except Exception as exc:  # a page that never settles is itself a finding
        errors.append(f"render: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    page.wait_for_timeout(500)
    info = page.evaluate(MEASURE)
    page.remove_listener("console", on_console)
    page.remove_listener("pageerror", on_error)
    page.remove_listener("response", on_response)
    info["console"] = [c for c in console if c.startswith("error")]
    info["failed"] = failed
    info["page_errors"] = errors
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("only", nargs="*",
                    help="only pages whose path contains one of these")
    ap.add_argument("--html", default=str(ROOT / "_build" / "html"), help="built book")
    ap.add_argument("--out", default=str(ROOT / "_build" / "screenshots"),
                    help="folder for the PNG screenshots")
    ap.add_argument("--width", type=int, default=1280, help="window width, CSS px")
    ap.add_argument("--height", type=int, default=900, help="window height, CSS px")
    ap.add_argument("--no-screenshots", action="store_true", help="measure only")
    args = ap.parse_args()

    if not pathlib.Path(CHROMIUM).exists():
        die(f"Chromium not found at {CHROMIUM}. Install Debian's package: "
            "sudo apt-get install -y chromium (or set CHROMIUM=/path/to/chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        die('playwright is missing: .venv/bin/pip install -e ".[pages]" '
            "-c requirements/constraints.txt (no `playwright install` needed)")
    html = pathlib.Path(args.html).resolve()
    todo = pages(html, args.only)
    if not todo:
        die(f"no HTML pages under {html}: build the book first (bash scripts/build.sh)")
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not args.only and not args.no_screenshots:
        for old in out.glob("*.png"):
            old.unlink()

    server, origin = serve(html)
    router = Router(origin)
    rows = []
    try:
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport={"width": args.width, "height": args.height},
                device_scale_factor=1)
            ctx.route("**/*", router)
            page = ctx.new_page()
            for p in todo:
                rel = p.relative_to(html).as_posix()
                info = render(page, f"{origin}/{rel}")
                if not args.no_screenshots:
                    name = rel.removesuffix(".html").replace("/", "__") + ".png"
                    page.screenshot(path=str(out / name), full_page=True)
                rows.append((rel, info))
            ctx.close()
    finally:
        server.shutdown()
    return report(rows, router, args, out)


def _columns(rows, width):
    """The measured columns against dlib.plot.COLUMN_PX and ruff's line length."""
    cols = sorted({round(i["column"]) for r, i in rows if i["code"]})
    code = sorted({(i["code"]["chars"], i["code"]["font"])
                   for _, i in rows if i["code"]})
    outs = sorted({i["output"]["chars"] for _, i in rows if i["output"]})
    lines = [f"at a window {width} px wide: text column {cols} px; code column "
             + ", ".join(f"{c} characters ({f})" for c, f in code)
             + (f"; output column {outs} characters" if outs else "")]
    m = re.search(r"^line-length\s*=\s*(\d+)", (ROOT / "pyproject.toml").read_text(),
                  re.M)
    if m and code and min(c for c, _ in code) < int(m.group(1)):
        lines.append(f"  ruff's line length {m.group(1)} does not fit: code lines "
                     f"longer than {min(c for c, _ in code)} characters are clipped "
                     "here")
    try:
        sys.path.insert(0, str(ROOT))
        from dlib.plot import COLUMN_PX
        lines.append(f"  dlib.plot.COLUMN_PX = {COLUMN_PX} (measured at 1280 px)")
    except Exception:  # dlib is not importable: skip the comparison
        pass
    return lines


def report(rows, router, args, out) -> int:
    head = ["page", "MathJax err", "console err", "page err", "math typeset", "widgets",
            "math clipped", "code clipped", "output clipped", "figures shrunk"]
    table = [[rel, len(i["merrors"]), len(i["console"]), len(i["page_errors"]),
              f"{i['typeset']}/{i['math']}", f"{i['widgets']}/{i['views']}",
              i["mathOver"], i["codeOver"], i["outOver"], len(i["shrunk"])]
             for rel, i in rows]
    widths = [max(len(str(r[k])) for r in table + [head]) for k in range(len(head))]
    for r in [head, ["-" * w for w in widths]] + table:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    totals = [sum(r[k] for r in table) for k in (1, 2, 3, 6)]
    print(f"\ntotal over {len(rows)} pages: MathJax errors {totals[0]}, console errors "
          f"{totals[1]}, page errors {totals[2]}, display equations clipped "
          f"{totals[3]}")
    print("\n".join(_columns(rows, args.width)))
    for rel, i in rows:
        for label, items in (("MathJax", i["merrors"]), ("console", i["console"]),
                             ("page", i["page_errors"]), ("request", i["failed"]),
                             ("figure", i["shrunk"])):
            for item in items[:10]:
                print(f"  {rel}: {label}: {item[:300]}")
        if i["widgetErrors"]:
            print(f"  {rel}: {i['widgetErrors']} widget(s) show an error")
    if router.blocked:
        print(f"blocked external requests ({len(router.blocked)}):")
        for u in sorted(set(router.blocked)):
            print(f"  {u}")
    print("served locally: " + ", ".join(f"{k}@{v}" for k, v in NPM.items()))
    if not args.no_screenshots:
        print(f"screenshots: {out}")
    return 1 if any(totals) else 0


if __name__ == "__main__":
    sys.exit(main())
