"""The built book as a reader meets it: every page opened in headless Chromium.

:func:`check_book` serves the built HTML folder on a local port, opens every page
in headless Chromium (driven by Playwright, using the system's Chromium: no
browser download), waits for MathJax to typeset, and reports:

* ``raw-tex``: TeX delimiters (``\\(``, ``\\)``, ``\\[``, ``\\]``, ``$$``) left in the
  rendered text outside code, or a MathJax error box;
* ``broken-image``: an image that did not load;
* ``missing-file``: any request inside the build folder answered 404;
* ``broken-link``: an internal link to a file that does not exist or to an anchor
  that the target page does not define;
* ``error-output``: a Python traceback or an error output cell;
* ``machine-path``: an absolute path of the build machine (repository, home,
  cache, Python prefix, temporary folder) anywhere in the page;
* ``outside-request``: a request for anything outside the build folder (a CDN, a
  web font, a file of the build machine); such requests are blocked, as they
  would fail for an offline reader;
* ``script-error``: a page that did not load; an uncaught JavaScript exception is
  reported too but does not fail the check (the theme's own scripts raise some);
* ``wide-table``: a table wider than the page's content column at the desktop width
  (the reader has to scroll it sideways: cut it, and offer the full one as a CSV);
* ``phone-overflow``: a page wider than a 390-pixel phone screen, with the element that
  sticks out (content inside a box that scrolls on its own, such as code, is exempt).

What the prose says (placeholders, empty glued values, package paths, one value per glue
key) is checked without a browser by :mod:`funcprune.book.contentcheck`.

A redirect page (``<meta http-equiv="refresh">``, Jupyter Book's ``index.html``) is
not opened: its target is checked as an internal link.

Screenshots of every page at a desktop and a phone width are written for a person
to look at, except Sphinx's highlighted source listings (``_modules/``: checked like every
page, not photographed; they are most of the pages and half the check's time). Command line (``make check-book``)::

    python -m funcprune.book.bookcheck book/_build/html [--screenshots book/_build/screenshots]

Used by ``make book``; see the README for its cost.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

__all__ = ["BrowserUnavailable", "Problem", "check_book", "find_chromium", "machine_paths"]

#: Chromium flags that work on a closed network, as root, with no screen.
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")
#: Viewport of each screenshot: name -> (width, height) in CSS pixels.
VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
#: Pages checked but not photographed: the highlighted source listings of ``sphinx.ext.viewcode``.
UNPHOTOGRAPHED = ("_modules/",)
#: Folders of a Sphinx build that hold assets, not pages.
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads"}
#: TeX that MathJax should have typeset; only looked for outside code.
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{")
#: Absolute paths that look like a home, temporary or mount folder on any machine.
#: What Python prints above a traceback.
TRACEBACK = "Traceback (most recent call last)"
#: ``<meta http-equiv="refresh" content="0; url=...">`` of a redirect page.
REDIRECT = re.compile(r"""<meta\s+http-equiv=["']refresh["']\s+content=["'][^"']*url=([^"']+)["']""", re.I)
GENERIC_PATH = re.compile(r"(?<![\w.:/~-])(?:/(?:home|Users|root|tmp|mnt|private/var|var/folders)/[\w.@+-]+"
                          r"|[A-Za-z]:\\\\?Users\\\\?[\w.-]+)")

# Runs in the page: the text a reader sees outside code and math, and what the checks need.
_PAGE_SCRIPT = """
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    try { await MathJax.startup.promise; } catch (e) {}
  }
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, noscript, mjx-container, .highlight, textarea')
       .forEach(e => e.remove());
  const images = Array.from(document.images)
       .filter(i => !i.complete || i.naturalWidth === 0)
       .map(i => i.getAttribute('src'));
  const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id)
       .concat(Array.from(document.querySelectorAll('a[name]')).map(e => e.getAttribute('name')));
  const links = Array.from(document.querySelectorAll('a[href]')).map(a => [a.getAttribute('href'), a.href]);
  const outputs = Array.from(document.querySelectorAll('.cell_output, .output')).map(e => e.textContent).join(' ');
  return {
    text: clone.textContent,
    outputText: outputs,
    html: document.documentElement.outerHTML,
    brokenImages: images,
    ids: ids,
    links: links,
    mathErrors: document.querySelectorAll('mjx-merror, .MathJax_Error').length,
    errorOutputs: document.querySelectorAll('.output.traceback, .output.error').length,
  };
}
"""


# Runs in the page: tables wider than the content column (desktop), content wider than the screen (phone).
_LAYOUT_SCRIPT = """
() => {
  const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
       + (typeof e.className === 'string' && e.className.trim() ? '.' + e.className.trim().split(/\\s+/)[0] : '');
  const main = document.querySelector('article.bd-article, main, [role=main]') || document.body;
  const column = main.clientWidth;
  const wide = Array.from(main.querySelectorAll('table'))
       .filter(t => t.scrollWidth > column + 2)
       .map(t => [t.scrollWidth, (t.rows[0] ? t.rows[0].cells.length : 0)]);
  const screen = window.innerWidth;
  const scrolls = e => { for (let a = e.parentElement; a; a = a.parentElement) {
       const o = getComputedStyle(a).overflowX; if (o === 'auto' || o === 'scroll' || o === 'hidden') return true; }
       return false; };
  const out = [];
  if (document.documentElement.scrollWidth > screen + 1) {
    for (const e of document.body.querySelectorAll('*')) {
      const r = e.getBoundingClientRect();
      if (r.width > 0 && r.right > screen + 1 && !scrolls(e)) {
        if (!out.some(o => o.el.contains(e))) out.push({el: e, right: Math.round(r.right)});
        if (out.length >= 3) break;
      }
    }
  }
  return {column: column, wide: wide, pageWidth: document.documentElement.scrollWidth, screen: screen,
          sticking: out.map(o => [name(o.el), o.right, (o.el.textContent || '').trim().slice(0, 60)])};
}
"""


def _layout_problems(page: str, view: str, layout: dict[str, Any]) -> Iterator[Problem]:
    """wide-table (desktop) and phone-overflow (phone) problems of one page's measured layout."""
    if view == "desktop" and layout["wide"]:
        width, columns = max(layout["wide"])
        yield Problem(page, "wide-table", f"{len(layout['wide'])} table(s) wider than the {layout['column']} px "
                                          f"content column, the widest {width} px ({columns} columns): cut it "
                                          f"and offer the full table as a CSV")
    if view == "phone" and layout["pageWidth"] > layout["screen"] + 1:
        what = "; ".join(f"{el} to {right} px ({text!r})" for el, right, text in layout["sticking"])
        yield Problem(page, "phone-overflow", f"the page is {layout['pageWidth']} px wide on a {layout['screen']} px "
                                              f"screen: {what or 'no single element found'}")


class BrowserUnavailable(RuntimeError):
    """No Chromium or no Playwright on this machine: the check cannot run."""


@dataclass(frozen=True)
class Problem:
    """One thing a reader would meet on one page.

    Attributes
    ----------
    page : str
        Page path relative to the build folder.
    kind : str
        One of ``raw-tex``, ``broken-image``, ``missing-file``, ``broken-link``,
        ``error-output``, ``machine-path``, ``outside-request``, ``script-error``.
    detail : str
        What was found, with enough context to find it.
    """

    page: str
    kind: str
    detail: str

    @property
    def fatal(self) -> bool:
        """Whether the check fails on it (all but a JavaScript exception of a page that loaded)."""
        return not (self.kind == "script-error" and not self.detail.startswith("page did not load"))

    def __str__(self) -> str:
        return f"{self.page}: {self.kind}: {self.detail}{'' if self.fatal else ' (not fatal)'}"


def find_chromium() -> str | None:
    """Path of a Chromium executable: ``$FUNCPRUNE_CHROMIUM``, else ``chromium`` on the PATH."""
    explicit = os.environ.get("FUNCPRUNE_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def machine_paths(extra: Iterable[str | os.PathLike[str]] = ()) -> list[str]:
    """Absolute folders of this machine that must never appear in a published page.

    The repository, the current folder, the home folder, the funcprune cache, the
    Python prefixes and the temporary folder (each also resolved through links),
    plus ``extra``; the file-system root and one-level folders such as ``/usr`` are
    left out, as they appear in ordinary prose.

    Returns
    -------
    list of str
        Longest first, so that a match names the most specific folder.
    """
    from ..provenance import REPO_ROOT

    candidates = [REPO_ROOT, Path.cwd(), Path.home(), sys.prefix, sys.base_prefix,
                  tempfile.gettempdir(), *extra]
    if os.environ.get("FUNCPRUNE_CACHE"):
        candidates.append(os.environ["FUNCPRUNE_CACHE"])
    paths: set[str] = set()
    for candidate in candidates:
        for form in (Path(candidate).absolute(), Path(candidate).resolve()):
            if len(form.parts) > 2:  # "/a/b" or deeper
                paths.add(str(form))
    return sorted(paths, key=len, reverse=True)


def _context(text: str, start: int, end: int, width: int = 40) -> str:
    snippet = text[max(0, start - width):end + width].replace("\n", " ")
    return " ".join(snippet.split())


def _pages(html_dir: Path) -> list[Path]:
    return sorted(p for p in html_dir.rglob("*.html")
                  if not SKIP_DIRS & set(p.relative_to(html_dir).parts[:-1]))


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base)
        pass


@functools.lru_cache(maxsize=None)
def _playwright_available() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


class _Server:
    """The build folder on ``http://127.0.0.1:<free port>/``, in a background thread."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "_Server":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _text_problems(page: str, info: dict[str, Any], paths: Sequence[str]) -> Iterator[Problem]:
    """raw-tex, error-output and machine-path problems of one page's content."""
    text = info["text"]
    matches = list(RAW_TEX.finditer(text))
    if matches:
        yield Problem(page, "raw-tex", f"{len(matches)} TeX delimiter(s) not typeset, first "
                                       f"{_context(text, *matches[0].span())!r}")
    if info["mathErrors"]:
        yield Problem(page, "raw-tex", f"{info['mathErrors']} formula(s) MathJax could not typeset")
    tracebacks = sum(TRACEBACK in t for t in (text, info["outputText"]))  # prose or cell output, not quoted code
    if info["errorOutputs"] or tracebacks:
        yield Problem(page, "error-output", f"{info['errorOutputs']} error output cell(s); "
                                            f"a Python traceback {'shown' if tracebacks else 'not shown'}")
    html = info["html"]
    found = set()
    for path in paths:
        start = html.find(path)
        if start >= 0 and not any(path in f for f in found):
            found.add(path)
            yield Problem(page, "machine-path", f"{path!r} in {_context(html, start, start + len(path))!r}")
    generic = [m for m in GENERIC_PATH.finditer(html)
               if not any(m.group().startswith(p) or p.startswith(m.group()) for p in found)]
    if generic:
        yield Problem(page, "machine-path", f"{len(generic)} home or temporary path(s), first "
                                            f"{generic[0].group()!r} in {_context(html, *generic[0].span())!r}")


def _link_problems(html_dir: Path, base: str, links: dict[str, list[tuple[str, str]]],
                   ids: dict[str, set[str]]) -> Iterator[Problem]:
    """broken-link problems: internal targets that do not exist, anchors not defined."""
    for page, page_links in links.items():
        seen = set()
        for raw, absolute in page_links:
            if not absolute.startswith(base) or absolute in seen:
                continue  # external links are for the reader to follow, not requests
            seen.add(absolute)
            url, fragment = urldefrag(absolute)
            rel = unquote(urlsplit(url).path).lstrip("/")
            target = html_dir / rel
            if target.is_dir():
                target, rel = target / "index.html", (rel.rstrip("/") + "/index.html").lstrip("/")
            if not target.is_file():
                yield Problem(page, "broken-link", f"{raw!r}: {rel} does not exist")
            elif fragment and rel in ids and unquote(fragment) not in ids[rel]:
                yield Problem(page, "broken-link", f"{raw!r}: {rel} has no anchor #{fragment}")


def check_book(html_dir: str | os.PathLike[str], *, screenshots: str | os.PathLike[str] | None = None,
               chromium: str | None = None, forbidden_paths: Sequence[str] | None = None,
               timeout_s: float = 60.0, progress: bool = False) -> list[Problem]:
    """Open every page of a built book in headless Chromium and report what a reader would meet.

    Parameters
    ----------
    html_dir : str or path-like
        The built HTML folder (``book/_build/html``).
    screenshots : str or path-like, optional
        Folder for full-page PNG screenshots of every page at each width of
        :data:`VIEWPORTS` (``<page path with / as __>.<viewport>.png``), except the pages
        under :data:`UNPHOTOGRAPHED`; none if omitted.
    chromium : str, optional
        Chromium executable; default :func:`find_chromium`.
    forbidden_paths : sequence of str, optional
        Absolute paths that must not appear; default :func:`machine_paths` plus the
        build folder itself. Home- and temp-like paths (``/home/...``, ``/tmp/...``)
        are always reported.
    timeout_s : float, default=60
        Limit for loading one page and typesetting its math.
    progress : bool, default=False
        Print one line per page to stderr.

    Returns
    -------
    list of Problem
        Empty when every page is clean; the check fails on those whose ``fatal`` is true.

    Raises
    ------
    BrowserUnavailable
        If Chromium or the ``playwright`` package is missing (the message says how to install them).
    FileNotFoundError
        If ``html_dir`` holds no HTML page.
    """
    html_dir = Path(html_dir).resolve()
    pages = _pages(html_dir) if html_dir.is_dir() else []
    if not pages:
        raise FileNotFoundError(f"no HTML pages under {html_dir}; build the book first (make book)")
    executable = chromium or find_chromium()
    if executable is None:
        raise BrowserUnavailable("no Chromium found (looked for $FUNCPRUNE_CHROMIUM and chromium on the "
                                 "PATH); install it with `make browser` (Debian: apt-get install chromium)")
    if not _playwright_available():
        raise BrowserUnavailable("the Python package playwright is missing; install the book extra: "
                                 "pip install -c requirements.lock -e '.[book]'")
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    paths = list(forbidden_paths) if forbidden_paths is not None else machine_paths([html_dir])
    shots = Path(screenshots) if screenshots is not None else None
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
    problems: list[Problem] = []
    links: dict[str, list[tuple[str, str]]] = {}
    ids: dict[str, set[str]] = {}
    with _Server(html_dir) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_ARGS))
        try:
            # Each width gets its own context, so a phone-width page is laid out as a phone loads it
            # (resizing a loaded desktop page left the theme's layout half-updated).
            contexts = {view: browser.new_context(viewport={"width": width, "height": height},
                                                  is_mobile=view == "phone", has_touch=view == "phone")
                        for view, (width, height) in VIEWPORTS.items()}
            page_state: dict[str, Any] = {}

            def route(route: Any) -> None:
                url = route.request.url
                if url.startswith(server.base) or url.startswith(("data:", "blob:", "about:")):
                    route.continue_()
                else:
                    page_state["outside"].append(url)
                    route.abort()

            for context in contexts.values():
                context.route("**/*", route)

            def open_tab(view: str, url: str) -> Any:
                tab = contexts[view].new_page()  # a fresh tab per page: no navigation leaks into the next
                tab.on("response", lambda r: page_state["missing"].append(r.url)
                       if r.status == 404 and r.url.startswith(server.base) else None)
                tab.on("pageerror", lambda e: page_state["script"].append(str(e)))
                tab.goto(url, wait_until="load", timeout=timeout_s * 1000)
                return tab

            for number, path in enumerate(pages, 1):
                rel = path.relative_to(html_dir).as_posix()
                start = time.perf_counter()
                redirect = REDIRECT.search(path.read_text(errors="replace")[:2000])
                if redirect:
                    target = redirect.group(1).strip()
                    links[rel], ids[rel] = [(target, urljoin(server.base + rel, target))], set()
                    continue
                page_state.update(outside=[], missing=[], script=[])
                layouts: dict[str, dict[str, Any]] = {}
                try:
                    tab = open_tab("desktop", server.base + rel)
                    info = tab.evaluate(_PAGE_SCRIPT)
                    if not rel.startswith(UNPHOTOGRAPHED):  # source listings: checked, not measured
                        layouts["desktop"] = tab.evaluate(_LAYOUT_SCRIPT)
                        name = rel.replace("/", "__").removesuffix(".html")
                        if shots is not None:
                            tab.screenshot(path=str(shots / f"{name}.desktop.png"), full_page=True)
                        for view in sorted(VIEWPORTS.keys() - {"desktop"}):
                            other = open_tab(view, server.base + rel)
                            other.evaluate(_PAGE_SCRIPT)  # typeset, as on the desktop
                            layouts[view] = other.evaluate(_LAYOUT_SCRIPT)
                            if shots is not None:
                                other.screenshot(path=str(shots / f"{name}.{view}.png"), full_page=True)
                            other.close()
                    tab.close()
                except PlaywrightError as exc:
                    problems.append(Problem(rel, "script-error", f"page did not load: {exc}"))
                    continue
                problems.extend(_text_problems(rel, info, paths))
                for view, layout in layouts.items():
                    problems.extend(_layout_problems(rel, view, layout))
                problems += [Problem(rel, "broken-image", f"{src!r} did not load") for src in info["brokenImages"]]
                problems += [Problem(rel, "missing-file", f"{url[len(server.base):]} (404)")
                             for url in dict.fromkeys(page_state["missing"])]
                problems += [Problem(rel, "outside-request", f"{url} (blocked)")
                             for url in dict.fromkeys(page_state["outside"])]
                problems += [Problem(rel, "script-error", msg) for msg in dict.fromkeys(page_state["script"])]
                links[rel], ids[rel] = info["links"], set(info["ids"])
                if progress:
                    print(f"[bookcheck] {number}/{len(pages)} {rel} ({time.perf_counter() - start:.1f} s)",
                          file=sys.stderr, flush=True)
        finally:
            browser.close()
    problems.extend(_link_problems(html_dir, server.base, links, ids))
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: exit 1 on problems, 0 when clean or when no browser exists (with a message)."""
    parser = argparse.ArgumentParser(prog="python -m funcprune.book.bookcheck", description=__doc__.split("\n")[0])
    parser.add_argument("html_dir", nargs="?", default="book/_build/html")
    parser.add_argument("--screenshots", default=None,
                        help="folder for screenshots (default: screenshots/ next to the HTML folder)")
    parser.add_argument("--no-screenshots", action="store_true")
    parser.add_argument("--require-browser", action="store_true",
                        help="fail instead of skipping when Chromium or playwright is missing")
    args = parser.parse_args(argv)
    html_dir = Path(args.html_dir)
    shots = None if args.no_screenshots else Path(args.screenshots or html_dir.parent / "screenshots")
    start = time.perf_counter()
    try:
        problems = check_book(html_dir, screenshots=shots, progress=True)
    except BrowserUnavailable as exc:
        print(f"[bookcheck] SKIPPED, the book was not checked in a browser: {exc}", file=sys.stderr)
        return 1 if args.require_browser else 0
    except FileNotFoundError as exc:
        print(f"[bookcheck] {exc}", file=sys.stderr)
        return 1
    fatal = [p for p in problems if p.fatal]
    notes: dict[str, list[str]] = {}
    for problem in problems:
        if not problem.fatal:
            notes.setdefault(f"{problem.kind}: {problem.detail}", []).append(problem.page)
    for note, pages in notes.items():
        print(f"[bookcheck] note, on {len(pages)} page(s) (e.g. {pages[0]}): {note} (not fatal)", file=sys.stderr)
    for problem in fatal:
        print(problem, file=sys.stderr)
    seconds = time.perf_counter() - start
    n_pages = len(_pages(html_dir.resolve()))
    verdict = f"{len(fatal)} problem(s)" if fatal else "no problems"
    where = f"; screenshots in {shots}" if shots else ""
    print(f"[bookcheck] {n_pages} pages checked in {seconds:.0f} s: {verdict}{where}", file=sys.stderr)
    return 1 if fatal else 0


if __name__ == "__main__":
    raise SystemExit(main())
