"""Headless-Chromium helpers for tests (Playwright, system Chromium, no downloads).

Use from a test module::

    from browser import chromium, open_page, png_stats   # noqa: F401 (chromium is a fixture)

    def test_page(chromium, tmp_path):
        with open_page(chromium, tmp_path / "page.html") as visit:
            assert visit.console_errors == []
            assert visit.external_requests == []
            png = visit.screenshot(tmp_path / "shot.png")

``chromium`` skips the test when /usr/bin/chromium (or $SGDTUNE_CHROMIUM) is
missing, unless SGDTUNE_REQUIRE_BROWSER=1, in which case it fails. Every
request that leaves file:, data:, blob:, about: or loopback is recorded in
``external_requests`` and aborted, so a test can never reach the network.

Command line, for README screenshots::

    python tests/browser.py PAGE.html OUT.png [--width 1400 --height 960] [--eval JS]
"""

from __future__ import annotations

import ipaddress
import os
import struct
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = os.environ.get("SGDTUNE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_SCHEMES = {"file", "data", "blob", "about", "chrome-error"}


def browser_required() -> bool:
    return os.environ.get("SGDTUNE_REQUIRE_BROWSER") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip, or fail when SGDTUNE_REQUIRE_BROWSER=1 (CI must not silently skip)."""
    if browser_required():
        pytest.fail(f"{reason} (SGDTUNE_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def is_local(url: str) -> bool:
    """True for file:/data:/blob:/about: URLs and http(s)/ws to loopback hosts."""
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def launch(playwright):
    """Launch the system Chromium headless with networking side channels off."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def chromium():
    """A Playwright Browser on system Chromium, shared by the tests of one module."""
    if not Path(CHROMIUM).exists():
        skip_or_fail(f"headless browser not found at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - depends on the environment
        skip_or_fail("the playwright Python package is not installed")
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Visit:
    """One opened page plus what it did: console errors and requests."""

    page: object  # playwright.sync_api.Page
    url: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)

    def screenshot(self, path: str | Path | None = None, full_page: bool = True) -> bytes:
        """PNG bytes of the page (also written to ``path`` when given)."""
        png = self.page.screenshot(full_page=full_page)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(png)
        return png


def _to_url(target: str | Path) -> str:
    text = str(target)
    if "://" in text or text.startswith(("data:", "about:")):
        return text
    return Path(text).resolve().as_uri()


@contextmanager
def open_page(
    browser,
    target: str | Path,
    width: int = 1400,
    height: int = 960,
    scale: float = 1,
    wait_until: str = "load",
    timeout_ms: int = 15_000,
) -> Iterator[Visit]:
    """Open a local file or URL in a fresh context; record errors and requests.

    Console messages of type "error" and uncaught page exceptions go into
    ``console_errors``; every request URL into ``requests`` and the
    non-loopback ones also into ``external_requests`` (and are aborted).
    """
    context = browser.new_context(
        viewport={"width": width, "height": height}, device_scale_factor=scale,
        service_workers="block",
    )
    url = _to_url(target)
    visit = Visit(page=None, url=url)

    def on_route(route) -> None:
        req_url = route.request.url
        if is_local(req_url):
            route.continue_()
        else:
            if req_url not in visit.external_requests:
                visit.external_requests.append(req_url)
            route.abort()

    context.route("**/*", on_route)
    page = context.new_page()
    visit.page = page
    page.on("console", lambda msg: msg.type == "error" and visit.console_errors.append(msg.text))
    page.on("pageerror", lambda exc: visit.console_errors.append(f"uncaught: {exc}"))
    page.on("request", lambda req: visit.requests.append(req.url))

    def on_request(req) -> None:  # catches what routing may not see (e.g. websockets)
        if not is_local(req.url) and req.url not in visit.external_requests:
            visit.external_requests.append(req.url)

    page.on("request", on_request)
    page.on("websocket", lambda ws: visit.external_requests.append(ws.url))
    try:
        page.goto(url, wait_until=wait_until, timeout=timeout_ms)
        yield visit
    finally:
        context.close()


def png_stats(png: bytes) -> tuple[int, int, int]:
    """(width, height, number of distinct colours) of an 8-bit RGB/RGBA PNG.

    Enough to tell a blank screenshot from a drawn one. Uses Pillow when it is
    installed (fast), else a tiny zlib-based decoder (~2 s for 1400x960).
    """
    try:
        import io

        from PIL import Image
    except ImportError:
        return _png_stats_zlib(png)
    with Image.open(io.BytesIO(png)) as img:
        colours = img.getcolors(maxcolors=1 << 24)
        return img.width, img.height, len(colours)


def _png_stats_zlib(png: bytes) -> tuple[int, int, int]:
    """Pure-Python decoder for png_stats: IHDR, IDAT, and the five row filters."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width = 8, [], 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        body = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or colour_type not in (2, 6) or interlace:
                raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour_type}")
            bpp = 3 if colour_type == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev = bytearray(stride)
    colours: set[bytes] = set()
    for row in range(height):
        filt = raw[row * (stride + 1)]
        line = bytearray(raw[row * (stride + 1) + 1 : (row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = prev[i]
            if filt == 1:
                line[i] = (line[i] + left) & 0xFF
            elif filt == 2:
                line[i] = (line[i] + up) & 0xFF
            elif filt == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif filt == 4:
                up_left = prev[i - bpp] if i >= bpp else 0
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else up_left)
                line[i] = (line[i] + pred) & 0xFF
        colours.update(bytes(line[i : i + bpp]) for i in range(0, stride, bpp))
        prev = line
    return width, height, len(colours)


def _main(argv: list[str]) -> int:
    import argparse

    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description="Screenshot a local page with headless Chromium.")
    parser.add_argument("page", help="local file or URL")
    parser.add_argument("out", help="PNG file to write")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--scale", type=float, default=1)
    parser.add_argument("--eval", metavar="JS", help="JavaScript expression to run before the shot")
    args = parser.parse_args(argv)
    with sync_playwright() as pw:
        browser = launch(pw)
        with open_page(browser, args.page, args.width, args.height, args.scale) as visit:
            if args.eval:
                visit.page.evaluate(args.eval)
            visit.screenshot(args.out)
            problems = visit.console_errors + visit.external_requests
        browser.close()
    print(f"wrote {args.out}; console errors / external requests: {problems or 'none'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
