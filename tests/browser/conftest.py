"""The real server in a subprocess and Debian's Chromium, for the dashboard tests.

The server is `python -m convscope serve` on a free loopback port with the default
model (EfficientNet-Lite0, ImageNet weights) and ZFNet (random weights, for the
model picker); Chromium is /usr/bin/chromium driven
by Playwright's sync API (Playwright's own browser download is not used).
Screenshots go to test-artifacts/screenshots/ (ignored by git).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CONVSCOPE_CHROMIUM", "/usr/bin/chromium"))
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
SCAN_ROOT = ARTIFACTS / "scan-root" / "photos"  # the browser server's scan root
STARTUP_TIMEOUT_S = 180.0
# conditions, not sleeps: a loaded machine (a shared CI box) only makes them take longer
EXPECT_TIMEOUT_MS = 30_000
VIEWPORT = {"width": 1280, "height": 800}
NARROW = {"width": 420, "height": 860}  # a narrow window (a phone held upright, a side panel)


def pytest_configure(config: pytest.Config) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason=f"Chromium not found at {CHROMIUM} (install Debian's chromium: `make chromium`)")
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(skip)


def chromium_path() -> str:
    return str(CHROMIUM)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


# The server isolates clients by their `convscope_client` cookie (uploads and jobs are the
# client's own). In these tests the pages and the tests' own HTTP requests are one client:
# every `urllib.request.urlopen` here sends TEST_CLIENT's cookie, and `share_client(context)`
# (done by `open_page`) gives a browser context the same cookie.
TEST_CLIENT = secrets.token_urlsafe(24)
_opener = urllib.request.build_opener()
_opener.addheaders = [("Cookie", f"convscope_client={TEST_CLIENT}")]
urllib.request.install_opener(_opener)


def share_client(context: Any) -> None:
    """Make a Playwright browser context the tests' client (see TEST_CLIENT)."""
    context.add_cookies(
        [
            {"name": "convscope_client", "value": TEST_CLIENT, "domain": host, "path": "/", "httpOnly": True}
            for host in ("127.0.0.1", "localhost")
        ]
    )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def running_server(settings: dict[str, str], log_path: Path) -> Iterator[str]:
    """`python -m convscope serve` on a free loopback port with these CONVSCOPE_* (and other)
    environment settings; yields its base URL once /api/health is 200, stops it on exit."""
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **settings}
    command = [sys.executable, "-m", "convscope", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with status {process.returncode}:\n{_log_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{base}/api/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not healthy after {STARTUP_TIMEOUT_S:.0f} s:\n{_log_tail(log_path)}")
            time.sleep(0.25)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """Base URL of a real `convscope serve` subprocess (killed at the end of the session)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    SCAN_ROOT.mkdir(parents=True, exist_ok=True)
    settings = {
        # folders under this root may be scanned from the page (the Top 9 panel's "Scan a folder")
        "CONVSCOPE_SCAN_ROOTS": str(SCAN_ROOT),
        "CONVSCOPE_DEVICE": os.environ.get("CONVSCOPE_DEVICE", "cpu"),
        # a second model (the paper's architecture, random weights: loads in a second) for the model picker
        "CONVSCOPE_MODELS": "efficientnet_lite0,zfnet",
    }
    with running_server(settings, ARTIFACTS / "browser-server.log") as base:
        yield base


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium through Playwright's sync API (one browser per session)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_page(chromium: Any, viewport: dict[str, int] = VIEWPORT) -> Iterator[Any]:
    """A fresh page (1280×800 unless told; own context: no shared storage); fails on uncaught page errors."""
    context = chromium.new_context(viewport=viewport, device_scale_factor=1)
    share_client(context)
    context.set_default_timeout(60_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def tab(chromium: Any, server_url: str) -> Iterator[Any]:
    with open_page(chromium) as page:
        yield page


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture
def shoot(tab: Any, screenshots: Path) -> Any:
    """shoot("name") saves a screenshot of the page under test-artifacts/screenshots/name.png."""

    def take(name: str, *, full_page: bool = False, keep_mouse: bool = False) -> Path:
        path = screenshots / f"{name}.png"
        if not keep_mouse:
            with contextlib.suppress(Exception):
                tab.mouse.move(0, 0)  # no hover tooltip in the picture unless asked for
        tab.screenshot(path=str(path), full_page=full_page)
        return path

    return take
