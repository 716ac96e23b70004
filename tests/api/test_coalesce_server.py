"""Coalesced projections on the real server (`convscope serve`, default model, CPU): 16 clients at once,
each with its own cookie and upload, get exactly the bytes the same requests got one at a time, and the
metrics show that requests were answered together (batches of more than one request)."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image, ImageOps
from prometheus_client.parser import text_string_to_metric_families

from api.helpers import MODEL, all_at_once, png
from api.test_server import served
from convscope.samples import load_sample

CLIENTS = 16
LAYERS = ("blocks.2.0.conv_pw", "blocks.4.0.conv_pw")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """No rendered-PNG cache: every request does its model work (the recorded passes stay cached)."""
    env = {"CONVSCOPE_RESPONSE_CACHE_ENTRIES": "0", "CONVSCOPE_DEVICE": "cpu"}
    with served("--model", MODEL, env=env) as base:
        yield base


def batches(base: str) -> tuple[float, float]:
    """(batches, batches answering one request only) so far, from /api/metrics."""
    text = httpx.get(f"{base}/api/metrics", timeout=30).text
    samples = {
        (sample.name, sample.labels.get("le")): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "convscope_projection_batch_requests"
        for sample in family.samples
        if sample.labels.get("model") == MODEL
    }
    return samples.get(("convscope_projection_batch_requests_count", None), 0.0), samples.get(
        ("convscope_projection_batch_requests_bucket", "1.0"), 0.0
    )


def upload(client: httpx.Client, index: int) -> str:
    """A photo of this client's own (the astronaut, turned and mirrored its way), uploaded with its cookie."""
    image = load_sample("astronaut").rotate(index * 7, expand=True)
    image = ImageOps.mirror(image) if index % 2 else image
    response = client.post("/api/images", files={"file": ("mine.png", png(image.convert("RGB")), "image/png")})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def requests_of(index: int, upload_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, params or body) of one client: shared samples, its upload, a batch."""
    base = f"/api/models/{MODEL}/images"
    layer = LAYERS[index % 2]
    sample = ("chelsea", "coffee")[index % 2]
    return [
        ("GET", f"{base}/{sample}/projection", {"layer": layer, "channel": index, "mode": "guided"}),
        ("GET", f"{base}/{upload_id}/projection", {"layer": LAYERS[0], "channel": 3, "mode": "deconvnet"}),
        (
            "POST",
            f"{base}/{sample}/projections",
            {"layer": LAYERS[1], "mode": "auto", "seeds": [{"channel": 20 + index}, {"channel": 1, "select": "map"}]},
        ),
    ]


def session(server: str, cookies: httpx.Cookies | None = None) -> httpx.Client:
    return httpx.Client(base_url=server, timeout=300, cookies=cookies)


def send(client: httpx.Client, method: str, path: str, data: dict[str, Any]) -> bytes:
    response = client.get(path, params=data) if method == "GET" else client.post(path, json=data)
    assert response.status_code == 200, response.text
    return response.content


def test_sixteen_clients_get_the_one_at_a_time_bytes(server: str) -> None:
    # Each client keeps its cookie (its own client id) across the phases, but opens fresh connections
    # in each: an idle keep-alive connection that the server closes (5 s) just as the client reuses
    # it would fail a request for a reason that has nothing to do with batching.
    cookies: list[httpx.Cookies] = []
    uploads: list[str] = []
    for index in range(CLIENTS):
        with session(server) as client:
            uploads.append(upload(client, index))
            cookies.append(client.cookies)
    work = [requests_of(index, uploads[index]) for index in range(CLIENTS)]
    # one at a time: every answer computed alone (each client with its own cookie, for its upload)
    alone = []
    for index in range(CLIENTS):
        with session(server, cookies[index]) as client:
            alone.append([send(client, *request) for request in work[index]])
    before = batches(server)

    together: list[list[bytes | None]] = [[None] * len(mine) for mine in work]

    def run(index: int) -> None:
        order = list(range(len(work[index])))
        random.Random(index).shuffle(order)
        with session(server, cookies[index]) as client:
            for position in order:
                together[index][position] = send(client, *work[index][position])

    all_at_once(CLIENTS, run)
    for index in range(CLIENTS):
        assert together[index] == alone[index], f"client {index}: a coalesced answer differs from its own alone"

    after = batches(server)
    count, single = after[0] - before[0], after[1] - before[1]
    assert count >= 1 and count - single >= 1, f"{count} batches, {single} of them answering one request"

    # uploads stay their client's own: another client's id is unknown to it, even with batching
    with session(server, cookies[1]) as client:
        foreign = client.get(
            f"/api/models/{MODEL}/images/{uploads[0]}/projection", params={"layer": LAYERS[0], "channel": 3}
        )
    assert foreign.status_code == 404, foreign.text


def test_the_answers_are_real_projections(server: str) -> None:
    """A guard on the comparison above: the bytes are PNG projections, not empty answers that would match."""
    response = httpx.get(
        f"{server}/api/models/{MODEL}/images/chelsea/projection",
        params={"layer": LAYERS[0], "channel": 0, "mode": "guided"},
        timeout=120,
    )
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.size == (224, 224) and len(set(image.getdata())) > 100
