"""Mixed load on a real server: N clients for T seconds; errors, mismatches and the server's RSS over time.

Starts `convscope serve` on a free loopback port (default model; or `--url` for a running server, then
no RSS unless `--pid` is given). Each client is its own HTTP session (its own client cookie) and loops
over a mix of predictions, feature maps, projections, filters, an upload and its predictions, a small
occlusion answered at once and a larger one run as a job (polled to the end). Deterministic answers are
compared with a reference taken before the load starts: a different body is a *mismatch*; a status other
than the expected one is an *error*. Every `--every` seconds one line: elapsed, requests, errors,
mismatches, server RSS (MiB), and at the end the totals and per-kind latency percentiles.

Usage:
    python benchmarks/load.py                       # 8 clients, 60 s
    python benchmarks/load.py --clients 2 --seconds 10
    python benchmarks/load.py --malloc-arena-max 64 # compare with (nearly) glibc's default arenas
"""

from __future__ import annotations

import argparse
import io
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

MODEL = "efficientnet_lite0"
BASE = f"/api/models/{MODEL}/images"
IMAGES = ("chelsea", "coffee", "astronaut")
LAYERS = (("blocks.2.0.conv_pw", 17), ("blocks.5.0.conv_pw", 40), ("conv_head", 100))


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    mismatches: int = 0
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)
    messages: list[str] = field(default_factory=list)

    def record(self, kind: str, seconds: float, error: str | None = None, mismatch: bool = False) -> None:
        with self.lock:
            self.requests += 1
            self.latency[kind].append(seconds)
            if error is not None:
                self.errors += 1
                if len(self.messages) < 20:
                    self.messages.append(f"{kind}: {error}")
            if mismatch:
                self.mismatches += 1


def deterministic_requests() -> list[tuple[str, str, dict[str, Any]]]:
    requests: list[tuple[str, str, dict[str, Any]]] = []
    for image in IMAGES:
        requests.append(("predictions", f"{BASE}/{image}/predictions", {"top": 5}))
        for layer, channel in LAYERS:
            requests.append(("projection", f"{BASE}/{image}/projection", {"layer": layer, "channel": channel}))
        requests.append(("activations", f"{BASE}/{image}/activations", {"layer": LAYERS[0][0]}))
    requests.append(("filters", f"/api/models/{MODEL}/filters", {"layer": "conv_head"}))
    return requests


def reference(client: httpx.Client) -> dict[tuple[str, str], bytes]:
    answers = {}
    for _kind, path, params in deterministic_requests():
        response = client.get(path, params=params)
        response.raise_for_status()
        answers[(path, repr(sorted(params.items())))] = response.content
    return answers


def upload_bytes(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (rng.randint(100, 600), rng.randint(100, 600)), tuple(rng.randrange(256) for _ in "rgb"))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def client_loop(base: str, index: int, stop_at: float, answers: dict[tuple[str, str], bytes], totals: Totals) -> None:
    rng = random.Random(index)
    requests = deterministic_requests()
    with httpx.Client(base_url=base, timeout=300) as client:
        while time.monotonic() < stop_at:
            pick = rng.random()
            started = time.perf_counter()
            try:
                if pick < 0.7:
                    kind, path, params = rng.choice(requests)
                    response = client.get(path, params=params)
                    expected = answers[(path, repr(sorted(params.items())))]
                    error = None if response.status_code == 200 else f"{response.status_code} {response.text[:100]}"
                    totals.record(
                        kind, time.perf_counter() - started, error, error is None and response.content != expected
                    )
                elif pick < 0.85:
                    response = client.post("/api/images", files={"file": ("u.png", upload_bytes(rng.randrange(10**6)))})
                    if response.status_code != 201:
                        totals.record("upload", time.perf_counter() - started, f"{response.status_code}")
                        continue
                    image_id = response.json()["id"]
                    response = client.get(f"{BASE}/{image_id}/predictions")
                    error = None if response.status_code == 200 else f"{response.status_code} {response.text[:100]}"
                    totals.record("upload+predict", time.perf_counter() - started, error)
                elif pick < 0.95:
                    body = {"size": 64, "stride": 32}  # 25 positions: answered at once
                    response = client.post(f"{BASE}/{rng.choice(IMAGES)}/occlusion", json=body)
                    error = None if response.status_code == 200 else f"{response.status_code} {response.text[:100]}"
                    totals.record("occlusion", time.perf_counter() - started, error)
                else:
                    body = {"size": 32, "stride": 24}  # 81 positions: a job
                    response = client.post(f"{BASE}/{rng.choice(IMAGES)}/occlusion", json=body)
                    if response.status_code == 429:  # this client's cap: expected under load
                        totals.record("occlusion-job", time.perf_counter() - started)
                        continue
                    if response.status_code != 202:
                        totals.record("occlusion-job", time.perf_counter() - started, f"{response.status_code}")
                        continue
                    url = response.json()["url"]
                    while (job := client.get(url).json())["state"] in ("queued", "running"):
                        time.sleep(0.2)
                    error = None if job["state"] == "succeeded" else f"job {job['state']}: {job.get('error')}"
                    totals.record("occlusion-job", time.perf_counter() - started, error)
            except httpx.HTTPError as exc:
                totals.record("transport", time.perf_counter() - started, f"{type(exc).__name__}: {exc}")


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(arena_max: int | None) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "CONVSCOPE_SCAN_ON_STARTUP": "false"}
    if arena_max is not None:
        env["MALLOC_ARENA_MAX"] = str(arena_max)
    convscope = str(Path(sys.executable).parent / "convscope")
    process = subprocess.Popen(
        [convscope, "serve", "--host", "127.0.0.1", "--port", str(port), "--model", MODEL],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/health", timeout=5).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between progress lines")
    parser.add_argument("--url", default=None, help="a running server instead of starting one")
    parser.add_argument("--pid", type=int, default=None, help="with --url: the server's pid, for its RSS")
    parser.add_argument("--malloc-arena-max", type=int, default=None, help="MALLOC_ARENA_MAX for the started server")
    args = parser.parse_args()

    process = None
    if args.url:
        base, pid = args.url.rstrip("/"), args.pid
    else:
        process, base = start_server(args.malloc_arena_max)
        pid = process.pid
    try:
        with httpx.Client(base_url=base, timeout=300) as client:
            answers = reference(client)
        totals = Totals()
        started = time.monotonic()
        stop_at = started + args.seconds
        threads = [
            threading.Thread(target=client_loop, args=(base, i, stop_at, answers, totals), daemon=True)
            for i in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        print(f"{args.clients} clients for {args.seconds:.0f} s against {base}")
        print(f"{'t (s)':>6} {'requests':>9} {'errors':>7} {'mismatch':>9} {'RSS MiB':>8}")
        peak = 0.0
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(timeout=max(0.0, args.every / len(threads)))
            rss = rss_mib(pid)
            peak = max(peak, rss or 0.0)
            shown = f"{rss:8.0f}" if rss is not None else f"{'-':>8}"
            print(
                f"{time.monotonic() - started:6.0f} {totals.requests:9d} {totals.errors:7d} {totals.mismatches:9d} {shown}"
            )
        print(
            f"total: {totals.requests} requests, {totals.errors} errors, {totals.mismatches} mismatches, peak RSS {peak:.0f} MiB"
        )
        for kind, values in sorted(totals.latency.items()):
            values.sort()
            p50, p95 = values[len(values) // 2], values[min(len(values) - 1, int(len(values) * 0.95))]
            print(f"  {kind:15} n={len(values):5d}  p50 {p50 * 1000:8.0f} ms  p95 {p95 * 1000:8.0f} ms")
        for message in totals.messages:
            print("  error:", message)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
