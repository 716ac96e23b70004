"""The real server: `convscope serve` under uvicorn on a free loopback port, as a user starts it."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image

from api.helpers import MODEL, free_port

CONVSCOPE = str(Path(sys.executable).parent / "convscope")


def start_server(port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "CONVSCOPE_SCAN_ON_STARTUP": "false",
        "CONVSCOPE_SCAN_DIR": str(Path(tempfile.gettempdir()) / "convscope-test-scans"),
        **(env or {}),
    }
    return subprocess.Popen(
        [CONVSCOPE, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_healthy(process: subprocess.Popen[bytes], base: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"the server exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{base}/api/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become healthy in time")


def stop(process: subprocess.Popen[bytes]) -> str:
    """SIGTERM by pid; uvicorn shuts down gracefully, then re-raises the signal. Returns the output."""
    os.kill(process.pid, signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    assert process.returncode in (0, -signal.SIGTERM), process.returncode
    return output.decode()


@contextmanager
def served(
    *args: str, env: dict[str, str] | None = None, stopped: Callable[[str], None] | None = None
) -> Iterator[str]:
    """`convscope serve ARGS` on a free loopback port, once healthy (its base URL); SIGTERM afterwards,
    and `stopped` gets what it printed."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_server(port, *args, env=env)
    try:
        wait_healthy(process, base)
        yield base
    finally:
        if process.poll() is None:
            output = stop(process)
            if stopped is not None:
                stopped(output)


def shut_down_gracefully(output: str) -> None:
    assert "Application shutdown complete" in output, output[-2000:]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """No response cache and a two-image forward cache for three images: requests do real model work."""
    env = {"CONVSCOPE_RESPONSE_CACHE_ENTRIES": "0", "CONVSCOPE_ENGINE_CACHE_SIZE": "2", "CONVSCOPE_DEVICE": "cpu"}
    with served("--model", MODEL, env=env, stopped=shut_down_gracefully) as base:
        yield base


def test_real_server_serves_a_projection_png(server: str) -> None:
    params = {"layer": "blocks.4.0.conv_pw", "channel": 11}
    response = httpx.get(f"{server}/api/models/{MODEL}/images/chelsea/projection", params=params, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.format == "PNG" and image.size == (224, 224) and image.mode == "RGB"
    assert len(set(image.getdata())) > 100, "a projection, not a blank image"


def _requests() -> list[tuple[str, dict[str, object]]]:
    base = f"/api/models/{MODEL}/images"
    requests: list[tuple[str, dict[str, object]]] = []
    for image in ("chelsea", "coffee", "astronaut"):
        requests.append((f"{base}/{image}/predictions", {"top": 5}))
        for layer, channel, mode, select in (
            ("blocks.2.0.conv_pw", 17, "guided", "max"),
            ("blocks.5.0.conv_pw", 40, "deconvnet", "map"),
            ("conv_head", 100, "deconvnet", "max"),
        ):
            params = {"layer": layer, "channel": channel, "mode": mode, "select": select}
            requests.append((f"{base}/{image}/projection", params))
    return requests


def test_concurrent_requests_match_sequential_ones(server: str) -> None:
    requests = _requests()
    with httpx.Client(base_url=server, timeout=120) as client:
        sequential = []
        for path, params in requests:
            response = client.get(path, params=params)  # type: ignore[arg-type]
            assert response.status_code == 200, response.text
            sequential.append(response.content)

    order = list(range(len(requests))) * 2
    random.Random(3).shuffle(order)

    def fetch(index: int) -> tuple[int, int, bytes]:
        path, params = requests[index]
        response = httpx.get(f"{server}{path}", params=params, timeout=120)  # type: ignore[arg-type]
        return index, response.status_code, response.content

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(fetch, order))

    assert [status for _, status, _ in results] == [200] * len(order)
    for index, _, content in results:
        assert content == sequential[index], requests[index]


def test_serve_exits_with_a_message_when_the_model_cannot_load() -> None:
    process = start_server(free_port(), "--model", "no_such_model")
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    text = output.decode()
    assert "no_such_model" in text and "unknown model" in text
