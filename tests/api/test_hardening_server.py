"""Issue 19 against the real server (`convscope serve`, default model, real weights): bounded memory,
connection timeouts, interactive requests ahead of jobs, prompt SIGTERM with a resumable scan, and
the CLI's refusals (read-only output, an exposed host without a token)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from PIL import Image

from api.helpers import MODEL, free_port, png
from api.test_server import CONVSCOPE, start_server, stop, wait_healthy

MiB = 1024 * 1024
FILTERS_RSS_BOUND = 300 * MiB  # peak RSS above the idle server's, over every conv layer's filters
UPLOAD_RSS_BOUND = 100 * MiB
TIMEOUT_S = 2.0


def rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "CONVSCOPE_DEVICE": "cpu",
        "CONVSCOPE_RESPONSE_CACHE_ENTRIES": "0",
        "CONVSCOPE_HEADER_TIMEOUT": str(TIMEOUT_S),
        "CONVSCOPE_BODY_TIMEOUT": str(TIMEOUT_S),
        "CONVSCOPE_JOB_WORKERS": "2",
        "CONVSCOPE_OCCLUSION_BATCH_SIZE": "4",
    }
    process = start_server(port, "--model", MODEL, env=env)
    try:
        wait_healthy(process, base)
        yield base, process
    finally:
        if process.poll() is None:
            stop(process)


# ---- defects 1 and 2: memory -----------------------------------------------------------------------------
def test_filters_of_every_conv_layer_stay_within_a_memory_bound(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    base, process = server
    with httpx.Client(base_url=base, timeout=120) as client:
        rows = client.get(f"/api/models/{MODEL}/layers").json()
        layers = [layer["name"] for layer in rows if "units" not in layer]  # 2-D starts (logits) have no filters
        convs = []
        client.get(f"/api/models/{MODEL}/filters")  # warm: the first request loads what every one needs
        idle = rss(process.pid)
        reset_peak(process.pid)
        for name in layers:
            response = client.get(f"/api/models/{MODEL}/filters", params={"layer": name})
            if response.status_code == 422:  # not a Conv2d (a BatchNorm, an activation...)
                continue
            assert response.status_code == 200, (name, response.text)
            bands = response.json()["frequency"]["per_filter"]
            assert len(bands) == response.json()["out_channels"]
            assert all(abs(sum(row) - 1) < 1e-4 or sum(row) == 0 for row in bands), name  # 0: an all-zero filter
            convs.append(name)
    peak = rss(process.pid, "VmHWM")
    assert len(convs) == 49, convs  # every convolution of EfficientNet-Lite0, conv_head included
    assert peak - idle < FILTERS_RSS_BOUND, f"peak {peak / MiB:.0f} MiB, idle {idle / MiB:.0f} MiB"


def test_an_elongated_upload_is_refused_without_memory(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    base, process = server
    data = png(Image.new("L", (40, 1_000_000)), optimize=True)
    assert len(data) < 200_000
    with httpx.Client(base_url=base, timeout=60) as client:
        client.get("/api/health")
        idle = rss(process.pid)
        reset_peak(process.pid)
        started = time.perf_counter()
        response = client.post("/api/images", files={"file": ("long.png", data, "image/png")})
        seconds = time.perf_counter() - started
    assert response.status_code == 422 and "aspect ratio" in response.json()["detail"], response.text
    assert rss(process.pid, "VmHWM") - idle < UPLOAD_RSS_BOUND
    assert seconds < 5


# ---- defect 6: timeouts -----------------------------------------------------------------------------------
def _closed_within(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closes the connection, and what it sent before."""
    sock.settimeout(limit)
    started = time.monotonic()
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return time.monotonic() - started, received
        received += chunk


def test_a_half_sent_request_head_is_closed_within_the_header_timeout(
    server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    port = int(server[0].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        seconds, _ = _closed_within(sock, TIMEOUT_S + 5)
    assert seconds < TIMEOUT_S + 2
    with socket.create_connection(("127.0.0.1", port)) as sock:  # silent from the start
        seconds, _ = _closed_within(sock, TIMEOUT_S + 5)
    assert seconds < TIMEOUT_S + 2


def test_a_stalled_body_gets_408_and_the_connection_closes(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    port = int(server[0].rsplit(":", 1)[1])
    head = (
        b"POST /api/images HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + b"--x\r\n")
        seconds, received = _closed_within(sock, TIMEOUT_S + 5)
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert seconds < TIMEOUT_S + 2


# ---- defect 5: interactive requests before jobs --------------------------------------------------------------
def _projection(client: httpx.Client, channel: int) -> float:
    started = time.perf_counter()
    response = client.get(
        f"/api/models/{MODEL}/images/coffee/projection", params={"layer": "blocks.5.0.conv_pw", "channel": channel}
    )
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


def test_a_projection_during_two_running_jobs_stays_interactive(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    base, _ = server
    with httpx.Client(base_url=base, timeout=120) as client:
        _projection(client, 0)  # the image's forward pass is recorded from now on
        idle = min(_projection(client, channel) for channel in (1, 2, 3))
        jobs = []
        for image in ("chelsea", "astronaut"):
            response = client.post(f"/api/models/{MODEL}/images/{image}/occlusion", json={"size": 16, "stride": 8})
            assert response.status_code == 202, response.text
            jobs.append(response.json()["url"])

        def progress() -> list[dict[str, Any]]:
            return [client.get(url).json() for url in jobs]

        deadline = time.monotonic() + 120
        while not all(job["state"] == "running" and job["done"] > 0 for job in progress()):
            assert time.monotonic() < deadline, "the jobs did not start"
            time.sleep(0.05)
        before = [job["done"] for job in progress()]
        busy = _projection(client, 4)
        after = progress()
        for job in jobs:
            client.delete(job)
    assert all(job["state"] == "running" for job in after), "the jobs must still be running to prove anything"
    advanced = [job["done"] - done for job, done in zip(after, before, strict=True)]
    # each job finishes at most the batch it was in (plus one at a boundary race) while the click waits
    assert all(steps <= 2 * 4 for steps in advanced), advanced
    assert busy < 4 * idle + 1.0, f"projection {busy:.2f} s with two jobs running, {idle:.2f} s idle"


# ---- defect 7: SIGTERM during a scan ---------------------------------------------------------------------------
def _folder(root: Path, count: int) -> None:
    folder = root / "photos" / "set"
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (64 + i, 48), (5 * i % 256, 255 - 3 * i % 256, 90)).save(folder / f"p{i:03}.png")


def test_sigterm_during_a_scan_exits_promptly_and_the_scan_resumes_to_the_same_result(tmp_path: Path) -> None:
    from convscope.engine import Engine
    from convscope.models import load_model
    from convscope.scan import ScanStore, folder_source, run_scan

    _folder(tmp_path / "roots", 48)
    env = {
        "CONVSCOPE_DEVICE": "cpu",
        "CONVSCOPE_SCAN_ROOTS": str(tmp_path / "roots" / "photos"),
        "CONVSCOPE_SCAN_DIR": str(tmp_path / "scans"),
        "CONVSCOPE_SCAN_BATCH_SIZE": "2",
        "CONVSCOPE_TORCH_THREADS": "1",  # the comparison scan below runs with one thread too: same sums, same bits
    }
    body = {"folder": "photos/set", "layers": ["blocks.2.0", "conv_head"], "top": 3}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_server(port, "--model", MODEL, env=env)
    try:
        wait_healthy(process, base)
        with httpx.Client(base_url=base, timeout=60) as client:
            started = client.post(f"/api/models/{MODEL}/scans", json=body)
            assert started.status_code == 202, started.text
            url = started.json()["url"]
            while client.get(url).json()["done"] < 4:  # a few batches are checkpoint-free work to lose
                time.sleep(0.05)
        sent = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        process.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert took < 10, f"SIGTERM took {took:.1f} s"

    process = start_server(port, "--model", MODEL, env=env)
    try:
        wait_healthy(process, base)
        with httpx.Client(base_url=base, timeout=60) as client:
            (info,) = [scan for scan in client.get(f"/api/models/{MODEL}/scans").json() if scan["source"] == "folder"]
            assert info["status"] == "interrupted" and info["resume_url"], info
            assert 0 < info["progress"]["images_done"] < 48
            resumed = client.post(info["resume_url"])
            assert resumed.status_code == 202, resumed.text
            deadline = time.monotonic() + 300
            while (job := client.get(resumed.json()["url"]).json())["state"] in ("queued", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert job["state"] == "succeeded", job
    finally:
        stop(process)

    engine = Engine(load_model(MODEL), device_name="cpu")
    source = folder_source(tmp_path / "roots" / "photos" / "set")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server ran: a float sum's order depends on the thread count
    try:
        run_scan(engine, source, tmp_path / "whole", layers=body["layers"], top=3, batch_size=2)
    finally:
        torch.set_num_threads(threads)
    (scanned,) = (tmp_path / "scans").glob(f"{MODEL}/*/manifest.json")
    resumed_store, whole = ScanStore(scanned.parent), ScanStore(tmp_path / "whole")
    for layer in body["layers"]:
        assert resumed_store.all_top(layer) == whole.all_top(layer), layer


# ---- defect 9 and the network default: the CLI ------------------------------------------------------------------
def _read_only_dir(tmp_path: Path) -> Path:
    """A folder the scan cannot write: a 0555 folder, or (as root, which ignores that) sysfs."""
    if os.geteuid() == 0:
        return Path("/sys/fs/convscope-scan")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "scan"


def test_the_cli_scan_into_a_read_only_folder_exits_2_naming_the_path(tmp_path: Path) -> None:
    _folder(tmp_path, 2)
    out = _read_only_dir(tmp_path)
    result = subprocess.run(
        [CONVSCOPE, "scan", "--model", MODEL, "--images", str(tmp_path / "photos" / "set"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CONVSCOPE_DEVICE": "cpu"},
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(out) in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_serve_refuses_an_exposed_host_without_a_token() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONVSCOPE_")}
    result = subprocess.run(
        [CONVSCOPE, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "CONVSCOPE_TOKEN" in lines[0] and "--insecure" in lines[0], result.stderr
