"""REST server throughput and latency: warm projections over loopback with 1, 4, 16 and 64 concurrent clients.

Starts `convscope serve` as a user would (a subprocess, uvicorn, the default model), with the
rendered-PNG cache off so every request does its model work. "Warm" means the image's forward
pass is already recorded: a projection request costs one backward pass, the PNG encoding and the
HTTP round trip. Every request asks for a different (layer, channel), so nothing is served twice.
Concurrent requests are coalesced by the server (api/coalesce.py, CONVSCOPE_PROJECTION_WINDOW_MS):
after each scenario the batch-size histograms from /api/metrics are printed (requests per batch and
seeds computed per batch, counts per bucket), with projections/s and the p50/p95 latency.

Baseline, in the same run: the same projections called in-process (`Engine.project` + PNG
encoding, no HTTP), to show what the server adds. Targets: p95 <= 150 ms with 4 clients on a 2-core
CPU (issue 3); on one GPU >= 500 projections/s at 64 clients with p95 <= 150 ms (issue 15).

Each scenario sends 16 requests per client (at least 256), so it measures a steady state: with
only a couple of requests per client, 64 clients are one burst, a drain and a second burst, and
the server idles in between (that short run gave 26–38/s at 64 clients on the CPU, against 92/s
for the steady state).

Usage: python benchmarks/server.py [--requests N] [--clients 1,4,16,64] [--model efficientnet_lite0]
       [--torch-threads N] [--device cpu|cuda] [--workers N] [--window-ms MS] [--no-baseline] [--json OUT]
       (--workers: CONVSCOPE_WORKERS, backward passes at once on the CPU; --window-ms: the coalescing window)
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
from prometheus_client.parser import text_string_to_metric_families

from convscope.engine import Engine
from convscope.engine.render import png_bytes, projection_image
from convscope.models import DEFAULT_MODEL, load_model
from convscope.samples import load_sample

IMAGE = "chelsea"
LAYERS = ("blocks.1.0.conv_pw", "blocks.3.0.conv_pw", "blocks.5.0.conv_pw", "conv_head")
TARGET_P95_MS = 150.0
TARGET_GPU_RPS = 500.0
PER_CLIENT = 16  # requests per client by default: a steady state, not one burst and a drain
MIN_REQUESTS = 256
HISTOGRAMS = ("convscope_projection_batch_requests", "convscope_projection_batch_size")


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
    model: str,
    port: int,
    threads: int | None,
    device: str,
    workers: int | None = None,
    window_ms: float | None = None,
) -> tuple[subprocess.Popen[bytes], float, float]:
    """Start the server; seconds until the port accepts connections and until /api/health is 200."""
    env = {
        **os.environ,
        "CONVSCOPE_DEVICE": device,
        "CONVSCOPE_MAX_CONNECTIONS": "512",  # 64 clients and the metrics scrape
        **({"CONVSCOPE_WORKERS": str(workers)} if workers else {}),
        **({"CONVSCOPE_PROJECTION_WINDOW_MS": str(window_ms)} if window_ms is not None else {}),
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


def histograms(base: str, model: str) -> dict[str, dict[float, float]]:
    """The cumulative bucket counts of the batch histograms for `model` (upper bound -> count)."""
    text = httpx.get(f"{base}/api/metrics", timeout=60).text
    found: dict[str, dict[float, float]] = {name: {} for name in HISTOGRAMS}
    for family in text_string_to_metric_families(text):
        if family.name not in found:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("model") == model:
                found[family.name][float(sample.labels["le"])] = sample.value
    return found


def histogram_delta(before: dict[float, float], after: dict[float, float]) -> dict[str, int]:
    """Per-bucket (not cumulative) counts between two scrapes: {"1": n, "2": n, "<=4": n, ..., "more": n}."""
    out: dict[str, int] = {}
    below = 0.0
    for bound in sorted(after):
        cumulative = after[bound] - before.get(bound, 0.0)
        label = "more" if bound == float("inf") else f"{bound:g}" if bound <= 2 else f"<={bound:g}"
        out[label] = round(cumulative - below)
        below = cumulative
    return out


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
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help=f"requests per scenario (default {PER_CLIENT} per client, at least {MIN_REQUESTS})",
    )
    parser.add_argument("--clients", default="1,4,16,64", help="concurrent clients of each scenario (comma-separated)")
    parser.add_argument("--window-ms", type=float, default=None, help="CONVSCOPE_PROJECTION_WINDOW_MS (default 2)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the in-process baseline")
    parser.add_argument("--json", default=None, help="write the figures here as JSON")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch threads, server and baseline")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="server and baseline")
    parser.add_argument("--workers", type=int, default=None, help="CONVSCOPE_WORKERS for the server (default 2)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    scenarios = [int(part) for part in args.clients.split(",") if part.strip()]
    process, listening, healthy = start(args.model, port, args.torch_threads, args.device, args.workers, args.window_ms)
    try:
        layers = httpx.get(f"{base}/api/models/{args.model}/layers", timeout=60).json()
        channels = {row["name"]: row["channels"] for row in layers if row["name"] in LAYERS}
        # warm-up: record the forward pass (the first projection), touch every layer, warm the thread pool
        run_clients(base, args.model, workload(channels, 16), 4)
        figures: dict[str, object] = {
            "workers": args.workers or 2,
            "window_ms": args.window_ms if args.window_ms is not None else 2.0,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {device_label(args.device)}",
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
            "model": args.model,
            "startup_listening_s": round(listening, 2),
            "startup_healthy_s": round(healthy, 2),
        }
        rows = []
        for clients in scenarios:
            requests = workload(channels, args.requests or max(MIN_REQUESTS, PER_CLIENT * clients))
            before = histograms(base, args.model)
            latencies, wall = run_clients(base, args.model, requests, clients)
            after = histograms(base, args.model)
            row = {
                "clients": clients,
                "requests": len(latencies),
                "p50_ms": round(statistics.median(latencies), 1),
                "p95_ms": round(percentile(latencies, 95), 1),
                "max_ms": round(max(latencies), 1),
                "throughput_rps": round(len(latencies) / wall, 1),
                "batch_requests": histogram_delta(before[HISTOGRAMS[0]], after[HISTOGRAMS[0]]),
                "batch_seeds": histogram_delta(before[HISTOGRAMS[1]], after[HISTOGRAMS[1]]),
            }
            rows.append(row)
            print(
                f"{clients} clients: {row['throughput_rps']} projections/s, p50 {row['p50_ms']} ms, "
                f"p95 {row['p95_ms']} ms",
                flush=True,
            )
            print(f"  requests per batch: {_buckets(row['batch_requests'])}", flush=True)  # type: ignore[arg-type]
            print(f"  seeds per batch:    {_buckets(row['batch_seeds'])}", flush=True)  # type: ignore[arg-type]
        figures["server"] = rows
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)

    if not args.no_baseline:
        baseline, baseline_cpu = in_process(args.model, workload(channels, args.requests or MIN_REQUESTS), args.device)
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
    counts = ", ".join(f"{row['requests']} at {row['clients']}" for row in rows)
    print(f"model {args.model}, image {IMAGE}, layers {', '.join(LAYERS)}; requests per scenario: {counts}")
    print(f"start-up: listening after {listening:.2f} s, healthy (model loaded) after {healthy:.2f} s")
    print(f"coalescing window {figures['window_ms']} ms, {figures['workers']} workers")
    print(f"{'scenario':28s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s} {'proj/s':>7s}  requests per batch")
    base_p50 = None
    if "in_process" in figures:
        cpu = figures["in_process"]
        base_p50 = cpu["p50_ms"]  # type: ignore[index]
        print(f"{'in-process (no HTTP)':28s} {base_p50:8.1f} {cpu['p95_ms']:8.1f}")  # type: ignore[index]
        print(f"{'  its CPU time':28s} {cpu['cpu_p50_ms']:8.1f}   (mean {cpu['cpu_mean_ms']:.1f} ms)")  # type: ignore[index]
    for row in rows:
        name = f"HTTP, {row['clients']} client{'s' if row['clients'] > 1 else ''}"  # type: ignore[operator]
        ratio = f"   p50 = {row['p50_ms'] / base_p50:.2f}x in-process" if base_p50 else ""  # type: ignore[operator]
        print(
            f"{name:28s} {row['p50_ms']:8.1f} {row['p95_ms']:8.1f} {row['max_ms']:8.1f} {row['throughput_rps']:7.1f}"
            f"  {_buckets(row['batch_requests'])}{ratio}"  # type: ignore[arg-type]
        )
    by_clients = {row["clients"]: row for row in rows}
    if 4 in by_clients:
        p95 = by_clients[4]["p95_ms"]
        verdict = "meets" if p95 <= TARGET_P95_MS else "misses"  # type: ignore[operator]
        print(f"target (CPU): p95 <= {TARGET_P95_MS:.0f} ms with 4 clients: {p95} ms, {verdict} it")
    if 64 in by_clients and args.device == "cuda":
        row = by_clients[64]
        verdict = "meets" if row["throughput_rps"] >= TARGET_GPU_RPS and row["p95_ms"] <= TARGET_P95_MS else "misses"  # type: ignore[operator]
        print(
            f"target (GPU): >= {TARGET_GPU_RPS:.0f} projections/s with p95 <= {TARGET_P95_MS:.0f} ms at 64 clients: "
            f"{row['throughput_rps']}/s, p95 {row['p95_ms']} ms, {verdict} it"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def _buckets(counts: dict[str, int]) -> str:
    """`1:40 2:12 <=4:3` (empty buckets left out)."""
    return " ".join(f"{label}:{count}" for label, count in counts.items() if count) or "-"


if __name__ == "__main__":
    main()
