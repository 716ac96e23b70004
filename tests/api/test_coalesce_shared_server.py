"""Shared forward passes on the real server (`convscope serve`, default model, CPU, forced on with
CONVSCOPE_SHARE_FORWARD=on): four clients click four new uploads at once; every image is recorded once,
at least two of them in one shared pass (as `GET /api/metrics` counts), and every answer is the unshared
engine's, within one grey level (not byte for byte: see test_coalesce_shared.py).

One worker and a 50 ms window: the requests that miss the first window wait for the busy engine and
leave together in the next batch, so the clicks meet however slowly the clients start."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps
from prometheus_client.parser import text_string_to_metric_families

from api.helpers import MODEL, all_at_once, png
from api.test_coalesce_shared import assert_close
from api.test_server import served
from convscope.api.caching import Rendered
from convscope.api.coalesce import render
from convscope.engine import Engine
from convscope.models import load_model
from convscope.samples import load_sample

CLIENTS = 4
LAYER = "blocks.2.0.conv_pw"
COUNTERS = ("forward_passes", "shared_passes", "shared_images")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    env = {
        "CONVSCOPE_RESPONSE_CACHE_ENTRIES": "0",
        "CONVSCOPE_DEVICE": "cpu",
        "CONVSCOPE_SHARE_FORWARD": "on",
        "CONVSCOPE_PROJECTION_WINDOW_MS": "50",
        "CONVSCOPE_WORKERS": "1",
        "CONVSCOPE_TORCH_THREADS": "1",
    }
    with served("--model", MODEL, env=env) as base:
        yield base


def engine_metrics(base: str) -> dict[str, float]:
    """The engine's counters and the shared-pass histogram's count and sum, from /api/metrics."""
    text = httpx.get(f"{base}/api/metrics", timeout=30).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == MODEL and "le" not in sample.labels:
                values[sample.name] = sample.value
    return values


def photo(index: int) -> Image.Image:
    """A photo of this client's own: the coffee cup, turned and mirrored its way."""
    image = load_sample("coffee").rotate(index * 11 + 5, expand=True)
    return (ImageOps.mirror(image) if index % 2 else image).convert("RGB")


def test_four_clients_on_four_new_images_share_a_forward_pass(server: str) -> None:
    uploads: list[tuple[httpx.Cookies, str]] = []
    for index in range(CLIENTS):
        with httpx.Client(base_url=server, timeout=300) as client:
            response = client.post("/api/images", files={"file": ("mine.png", png(photo(index)), "image/png")})
            assert response.status_code == 201, response.text
            uploads.append((client.cookies, str(response.json()["id"])))
    before = engine_metrics(server)

    answers: list[Rendered | None] = [None] * CLIENTS

    def click(index: int) -> None:
        cookies, upload = uploads[index]
        with httpx.Client(base_url=server, timeout=300, cookies=cookies) as client:
            response = client.get(
                f"/api/models/{MODEL}/images/{upload}/projection",
                params={"layer": LAYER, "channel": index * 3, "mode": "guided"},
            )
        assert response.status_code == 200, response.text
        headers = {name: response.headers[name] for name in ("X-Seed-Value", "X-Seed-Y", "X-Seed-X", "X-Mode")}
        answers[index] = Rendered(response.content, response.headers.get("etag", ""), headers)

    all_at_once(CLIENTS, click)

    after = engine_metrics(server)
    delta = {
        name: after[f"convscope_engine_{name}_total"] - before[f"convscope_engine_{name}_total"] for name in COUNTERS
    }
    # each image recorded once; at least one pass recorded two or more of them
    assert delta["forward_passes"] - delta["shared_passes"] + delta["shared_images"] == CLIENTS, delta
    assert delta["shared_passes"] >= 1 and delta["shared_images"] >= 2, delta
    assert after["convscope_engine_shared_pass_images_count"] == after["convscope_engine_shared_passes_total"]
    assert after["convscope_engine_shared_pass_images_sum"] == after["convscope_engine_shared_images_total"]

    reference = Engine(load_model(MODEL), device_name="cpu", share_forward=False)
    for index, answer in enumerate(answers):
        assert answer is not None
        expected = render(reference.project(reference.prepare(photo(index)), LAYER, index * 3, mode="guided"))
        assert_close(answer, expected)
        assert np.asarray(Image.open(io.BytesIO(answer.body))).shape[:2] == (224, 224)
