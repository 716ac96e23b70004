"""Shared helpers for the API tests: images made in memory, a tiny model, readiness waits."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from convscope.api.settings import Settings
from convscope.engine import Engine
from convscope.models import LoadedModel
from convscope.models.labels import numbered_labels

MODEL = "efficientnet_lite0"


def png(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def poll_job(client: TestClient, url: str, timeout: float = 120.0, every: float = 0.05) -> dict[str, Any]:
    """Poll a job's URL until it has finished (succeeded, failed or cancelled); its last state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(url).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(every)
    raise AssertionError(f"job {url} did not finish in {timeout} s")


def run_job(client: TestClient, path: str, body: dict[str, Any] | None, timeout: float = 240.0) -> dict[str, Any]:
    """POST `body` to a route that answers with a job (202), follow it, and return its result."""
    response = client.post(path, json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == job["url"] == f"/api/jobs/{job['id']}"
    job = poll_job(client, job["url"], timeout, every=0.2)
    assert job["state"] == "succeeded", job
    assert job["done"] == job["total"] > 0
    return dict(job["result"])


@contextlib.contextmanager
def ready_client(settings: Settings, **app_options: Any) -> Iterator[TestClient]:
    """A TestClient on a real app, once its models have loaded."""
    from convscope.api import create_app

    with TestClient(create_app(settings, **app_options)) as client:
        wait_ready(client)
        yield client


def app_engine(client: TestClient, model: str) -> Engine:
    """The app's own engine for `model` (to compute expected values directly)."""
    engine: Engine = client.app.state.convscope.pool.get(model)  # type: ignore[attr-defined]
    return engine


def wait_ready(client: TestClient, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/api/health")
        if response.status_code == 200:
            return
        assert response.status_code == 503, response.text
        assert response.json()["status"] == "loading", response.text
        time.sleep(0.1)
    raise AssertionError("the models did not load in time")


def tiny_model(name: str = "tiny") -> LoadedModel:
    """A small conv net (random weights, fixed seed) on 32×32 inputs, for tests of the plumbing."""
    torch.manual_seed(0)
    module = nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 4, 3, stride=2, padding=1)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", nn.Conv2d(4, 6, 3, padding=1)),
                ("relu2", nn.ReLU()),
                ("gap", nn.AdaptiveAvgPool2d(1)),
                ("flat", nn.Flatten()),
                ("fc", nn.Linear(6, 10)),
            ]
        )
    ).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(name=name, module=module, labels=numbered_labels(10), input_size=32)


def tiny_loader(gate: Callable[[], object] | None = None) -> Callable[[str, Settings], LoadedModel]:
    def load(name: str, settings: Settings) -> LoadedModel:
        if gate is not None:
            gate()
        return tiny_model(name)

    return load


def tiny_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "models": ["tiny"],
        "device": "cpu",
        "input_size": 32,
        "frontend_dir": None,
        "scan_on_startup": False,
    }
    values.update(overrides)
    return Settings.model_validate(values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def all_at_once(clients: int, work: Callable[[int], None], timeout: float = 600.0) -> None:
    """`work(0)` … `work(clients - 1)` in threads released together by a barrier (concurrent
    clients); fails with every client's exception if any raised or did not finish in `timeout`."""
    barrier = threading.Barrier(clients)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=60)
            work(index)
        except BaseException as exc:  # reported below, with the others'
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), "a client did not finish in time"
    assert not errors, errors
