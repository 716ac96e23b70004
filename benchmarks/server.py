"""REST server latency: warm projections over loopback with 1 and 4 concurrent clients, and start-up time.

Starts `convscope serve` as a user would (a subprocess, uvicorn, the default model), with the
rendered-PNG cache off so every request does its model work. "Warm" means the image's forward
pass is already recorded: a projection request costs one backward pass, the PNG encoding and the
HTTP round trip. Every request asks for a different (layer, channel), so nothing is served twice.

Baseline, in the same run: the same projections called in-process (`Engine.project` + PNG
encoding, no HTTP), to show what the server adds. Target (issue 3): p95 <= 150 ms with 4 clients
on a 2-core CPU.

Usage: python benchmarks/server.py [--requests 120] [--model efficientnet_lite0] [--torch-threads N] [--device cpu|cuda]
       [--workers N] [--json OUT]   (--workers: CONVSCOPE_WORKERS, backward passes at once on the CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import torch

from convscope.engine import Engine
from convscope.engine.render import png_bytes, projection_image
from convscope.models import DEFAULT_MODEL, load_model
from convscope.samples import load_sample

IMAGE = "chelsea"
LAYERS = ("blocks.1.0.conv_pw", "blocks.3.0.conv_pw", "blocks.5.0.conv_pw", "conv_head")
TARGET_P95_MS = 150.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def device_label(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "CPU only"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def workload(channels: dict[str, int], count: int) -> list[dict[str, object]]:
    """`count` distinct projection requests spread over the layers."""
    requests = []
    for i in range(count):
        layer = LAYERS[i % len(LAYERS)]
        requests.append({"layer": layer, "channel": (i // len(LAYERS) * 7 + 1) % channels[layer]})
    return requests


def start(
    model: str, port: int, threads: int | None, device: str, workers: int | None = None
) -> tuple[subprocess.Popen[bytes], float, float]:
    """Start the server; seconds until the port accepts connections and until /api/health is 200."""
    env = {
        **os.environ,
        "CONVSCOPE_DEVICE": device,
        **({"CONVSCOPE_WORKERS": str(workers)} if workers else {}),
        **({"CONVSCOPE_TORCH_THREADS": str(threads)} if threads else {}),
        "CONVSCOPE_RESPONSE_CACHE_ENTRIES": "0",
        "CONVSCOPE_SCAN_ON_STARTUP": "false",
        "CONVSCOPE_LOG_LEVEL": "warning",
    }
    command = [sys.executable, "-m", "convscope", "serve", "--port", str(port), "--model", model]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listening = healthy = None
    while healthy is None:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}")
        try:
            status = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).status_code
            listening = listening or time.perf_counter() - started
            if status == 200:
                healthy = time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    assert listening is not None
    return process, listening, healthy


def run_clients(base: str, model: str, requests: list[dict[str, object]], clients: int) -> tuple[list[float], float]:
    """Latencies (ms) of every request, `clients` threads each with its own keep-alive connection."""
    url = f"/api/models/{model}/images/{IMAGE}/projection"
    latencies: list[float] = []
    lock = threading.Lock()
    shares = [requests[i::clients] for i in range(clients)]
    barrier = threading.Barrier(clients)

    def client(share: list[dict[str, object]]) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            http.get("/api/health")  # open the connection before timing
            barrier.wait()
            for params in share:
                begin = time.perf_counter()
                response = http.get(url, params=params)  # type: ignore[arg-type]
                elapsed = (time.perf_counter() - begin) * 1000
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text}")
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - begin


def in_process(model: str, requests: list[dict[str, object]], device: str) -> tuple[list[float], list[float]]:
    """The baseline: the same projections without HTTP (forward pass cached, as for the server).

    Returns wall-clock and process CPU milliseconds per projection; the CPU figure is the one to
    read when other work shares the machine (it still counts torch's worker threads spinning)."""
    engine = Engine(load_model(model), device_name=device)
    image = engine.prepare(load_sample(IMAGE))
    engine.project(image, LAYERS[0], 0)  # record the forward pass (predictions no longer do)
    wall, cpu = [], []
    for params in requests:
        begin, begin_cpu = time.perf_counter(), time.process_time()
        result = engine.project(image, str(params["layer"]), int(params["channel"]))  # type: ignore[call-overload]
        png_bytes(projection_image(result.projection))
        wall.append((time.perf_counter() - begin) * 1000)
        cpu.append((time.process_time() - begin_cpu) * 1000)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--requests", type=int, default=120, help="requests per scenario")
    parser.add_argument("--json", default=None, help="write the figures here as JSON")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch threads, server and baseline")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="server and baseline")
    parser.add_argument("--workers", type=int, default=None, help="CONVSCOPE_WORKERS for the server (default 2)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process, listening, healthy = start(args.model, port, args.torch_threads, args.device, args.workers)
    try:
        layers = httpx.get(f"{base}/api/models/{args.model}/layers", timeout=60).json()
        channels = {row["name"]: row["channels"] for row in layers if row["name"] in LAYERS}
        # warm-up: record the forward pass (the first projection), touch every layer, warm the thread pool
        run_clients(base, args.model, workload(channels, 16), 4)
        figures: dict[str, object] = {
            "workers": args.workers or 2,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {device_label(args.device)}",
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
            "model": args.model,
            "startup_listening_s": round(listening, 2),
            "startup_healthy_s": round(healthy, 2),
        }
        requests = workload(channels, args.requests)
        rows = []
        for clients in (1, 4):
            latencies, wall = run_clients(base, args.model, requests, clients)
            row = {
                "clients": clients,
                "requests": len(latencies),
                "p50_ms": round(statistics.median(latencies), 1),
                "p95_ms": round(percentile(latencies, 95), 1),
                "max_ms": round(max(latencies), 1),
                "throughput_rps": round(len(latencies) / wall, 1),
            }
            rows.append(row)
        figures["server"] = rows
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)

    baseline, baseline_cpu = in_process(args.model, requests, args.device)
    figures["in_process"] = {
        "p50_ms": round(statistics.median(baseline), 1),
        "p95_ms": round(percentile(baseline, 95), 1),
        "cpu_p50_ms": round(statistics.median(baseline_cpu), 1),
        "cpu_mean_ms": round(statistics.fmean(baseline_cpu), 1),
    }
    figures["load_average_after"] = os.getloadavg()

    loads = ", ".join(f"{x:.1f}" for x in figures["load_average"])  # type: ignore[attr-defined]
    print(
        f"convscope server benchmark — {figures['machine']}, {figures['torch_threads']} torch threads, "
        f"load average at start {loads}"
    )
    print(f"model {args.model}, image {IMAGE}, layers {', '.join(LAYERS)}; {args.requests} distinct requests each")
    print(f"start-up: listening after {listening:.2f} s, healthy (model loaded) after {healthy:.2f} s")
    print(f"{'scenario':28s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s} {'req/s':>7s}")
    base_p50 = figures["in_process"]["p50_ms"]  # type: ignore[index]
    print(f"{'in-process (no HTTP)':28s} {base_p50:8.1f} {figures['in_process']['p95_ms']:8.1f}")  # type: ignore[index]
    cpu = figures["in_process"]
    print(f"{'  its CPU time':28s} {cpu['cpu_p50_ms']:8.1f}   (mean {cpu['cpu_mean_ms']:.1f} ms)")  # type: ignore[index]
    for row in rows:
        name = f"HTTP, {row['clients']} client{'s' if row['clients'] > 1 else ''}"
        print(
            f"{name:28s} {row['p50_ms']:8.1f} {row['p95_ms']:8.1f} {row['max_ms']:8.1f} {row['throughput_rps']:7.1f}"
            f"   p50 = {row['p50_ms'] / base_p50:.2f}x in-process"  # type: ignore[operator]
        )
    p95 = rows[-1]["p95_ms"]
    verdict = "meets" if p95 <= TARGET_P95_MS else "misses"  # type: ignore[operator]
    print(f"target: p95 <= {TARGET_P95_MS:.0f} ms with 4 clients: {p95} ms, {verdict} it")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
