"""The projection batching queue with shared forward passes (api/coalesce.py, `Engine.share_forward`): the
groups of one (layer, rule) on several new images are recorded in one forward pass and answered by one
`Engine.project_images` call, close to the unbatched answers; on the CPU by default (auto) every image
keeps its own forward pass and every answer its bytes; an error still fails only its own request.

Shared answers are compared as decoded pixels within one grey level (and seed values within 1e-5), not as
PNG bytes: the one-image engine may take the receptive-field crop (cone.py), which a shared pass never
takes, and another convolution algorithm may be chosen for a batch; a last-bit difference in a projection
can move a pixel of the contrast-normalised image by one level."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any
from unittest import mock

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from api.helpers import tiny_loader, tiny_model, tiny_settings
from api.test_coalesce import WIDE, Clock, settle
from convscope.api.caching import Rendered
from convscope.api.coalesce import Coalescer, render
from convscope.api.metrics import Metrics
from convscope.api.pool import ModelPool
from convscope.api.settings import Settings
from convscope.engine import Engine
from convscope.engine.engine import Seed
from convscope.errors import InvalidRequestError
from convscope.images import PreparedImage
from convscope.samples import load_sample

NAMES = ("chelsea", "coffee", "rocket", "astronaut")


@pytest.fixture(scope="module")
def reference() -> Engine:
    """The unbatched answers: an engine of the same tiny net that never shares a pass."""
    return Engine(tiny_model(), device_name="cpu", workers=1, share_forward=False)


@pytest.fixture(scope="module")
def images(reference: Engine) -> list[PreparedImage]:
    return [reference.prepare(load_sample(name)) for name in NAMES]


def unbatched(engine: Engine, image: PreparedImage, layer: str, rule: str, seed: Seed) -> Rendered:
    return render(engine.project(image, layer, seed.channel, mode=rule, select=seed.select, position=seed.position))  # type: ignore[arg-type]


def pixels(item: Rendered) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(item.body)).convert("RGB"), dtype=np.int16)


def assert_close(item: Rendered, expected: Rendered) -> None:
    headers, wanted = dict(item.headers), dict(expected.headers)
    assert {k: headers[k] for k in ("X-Seed-Y", "X-Seed-X", "X-Mode")} == {
        k: wanted[k] for k in ("X-Seed-Y", "X-Seed-X", "X-Mode")
    }
    assert float(headers["X-Seed-Value"]) == pytest.approx(float(wanted["X-Seed-Value"]), rel=1e-5, abs=1e-6)
    difference = np.abs(pixels(item) - pixels(expected))
    assert difference.max() <= 1 and pixels(expected).std() > 0


def run(engine: Engine, wanted: list[tuple[PreparedImage, str, str, Seed]], errors: bool = False) -> tuple[Any, Any]:
    """Every request at once in one window; returns the answers and spies on project_many and project_images."""
    clock = Clock()
    coalescer = Coalescer(window_ms=WIDE, metrics=Metrics(), clock=clock)

    async def body() -> list[Any]:
        requests = (coalescer.project(engine, image, layer, rule, [seed]) for image, layer, rule, seed in wanted)
        return await settle(clock, *requests, errors=errors)

    with (
        mock.patch.object(engine, "project_many", wraps=engine.project_many) as many,
        mock.patch.object(engine, "project_images", wraps=engine.project_images) as together,
    ):
        answers = asyncio.run(body())
    return answers, (many, together)


def test_four_new_images_share_one_forward_pass_and_answer_as_unbatched(
    reference: Engine, images: list[PreparedImage], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="convscope.api.coalesce")
    engine = Engine(tiny_model(), device_name="cpu", workers=1, share_forward=True)
    wanted = [(image, "conv2", "guided", Seed(index)) for index, image in enumerate(images)]
    wanted.append((images[0], "conv2", "guided", Seed(5, "map")))  # a second seed on one of them
    wanted.append((images[1], "conv1", "guided", Seed(0)))  # alone on its layer: project_many, as always
    forward = engine.stats.forward_passes
    answers, (many, together) = run(engine, wanted)
    assert together.call_count == 1
    layer, requests = together.call_args.args
    assert layer == "conv2" and [(image.key, list(seeds)) for image, seeds in requests] == [
        (images[0].key, [Seed(0), Seed(5, "map")]),
        (images[1].key, [Seed(1)]),
        (images[2].key, [Seed(2)]),
        (images[3].key, [Seed(3)]),
    ]
    assert [c.args[1] for c in many.call_args_list] == ["conv1"]
    # conv2 of four images: one shared pass; conv1 of the second one: its own whole pass (another layer)
    assert engine.stats.forward_passes == forward + 2
    assert (engine.stats.shared_passes, engine.stats.shared_images) == (1, 4)
    for (image, layer, rule, seed), (item,) in zip(wanted, answers, strict=True):
        assert_close(item, unbatched(reference, image, layer, rule, seed))
    lines = [r.getMessage() for r in caplog.records if r.name == "convscope.api.coalesce"]
    assert len(lines) == 1 and "4 groups on several images at once" in lines[0]


def test_on_the_cpu_by_default_each_image_keeps_its_own_pass_and_its_bytes(
    reference: Engine, images: list[PreparedImage]
) -> None:
    engine = Engine(tiny_model(), device_name="cpu", workers=1)  # share_forward: auto
    assert engine.share_forward is False
    wanted = [(image, "conv2", "guided", Seed(index)) for index, image in enumerate(images)]
    forward = engine.stats.forward_passes
    answers, (many, together) = run(engine, wanted)
    assert together.call_count == 0 and many.call_count == 4
    assert engine.stats.forward_passes == forward + 4 and engine.stats.shared_passes == 0
    for (image, layer, rule, seed), (item,) in zip(wanted, answers, strict=True):
        expected = unbatched(reference, image, layer, rule, seed)
        assert (item.body, dict(item.headers)) == (expected.body, dict(expected.headers))


def test_an_error_among_shared_groups_fails_only_its_own_request(
    reference: Engine, images: list[PreparedImage]
) -> None:
    engine = Engine(tiny_model(), device_name="cpu", workers=1, share_forward=True)
    wanted = [(images[0], "conv2", "deconvnet", Seed(1)), (images[1], "conv2", "deconvnet", Seed(999))]
    wanted.append((images[2], "conv2", "deconvnet", Seed(2)))
    (good, bad, other), (many, together) = run(engine, wanted, errors=True)
    assert isinstance(bad, InvalidRequestError) and "out of range" in str(bad)
    assert together.call_count == 1 and many.call_count == 3  # the call failed: each group alone
    assert_close(good[0], unbatched(reference, images[0], "conv2", "deconvnet", Seed(1)))
    assert_close(other[0], unbatched(reference, images[2], "conv2", "deconvnet", Seed(2)))


@pytest.mark.parametrize(("value", "expected"), [("auto", False), ("on", True), ("off", False)])
def test_the_setting_reaches_the_engines(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    """CONVSCOPE_SHARE_FORWARD -> Settings -> the pool's engines (auto on the CPU: off)."""
    monkeypatch.setenv("CONVSCOPE_SHARE_FORWARD", value)
    assert Settings().share_forward == value
    pool = ModelPool(tiny_settings(share_forward=value), tiny_loader(), offer=lambda settings: [])
    pool.load()
    assert [engine.share_forward for engine in pool.engines()] == [expected]


def test_a_bad_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSCOPE_SHARE_FORWARD", "sometimes")
    with pytest.raises(ValidationError, match="share_forward"):
        Settings()
