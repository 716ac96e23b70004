"""The projection batching queue (api/coalesce.py) on a real engine (the tiny conv net of api/helpers.py):
the window, the seed cap, grouping by (layer, mode) and image, errors and cancellation stay per request,
and every answer is the unbatched one byte for byte."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from unittest import mock

import pytest
from pydantic import ValidationError

from api.helpers import tiny_model
from convscope.api.coalesce import WINDOW_CAP_MS, Coalescer, render
from convscope.api.metrics import Metrics
from convscope.api.settings import Settings
from convscope.engine import Engine
from convscope.engine.engine import Seed
from convscope.errors import InvalidRequestError
from convscope.images import PreparedImage
from convscope.samples import load_sample

WIDE = WINDOW_CAP_MS  # the widest window: requests started together always share it


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(tiny_model(), device_name="cpu")


@pytest.fixture(scope="module")
def images(engine: Engine) -> dict[str, PreparedImage]:
    return {name: engine.prepare(load_sample(name)) for name in ("chelsea", "coffee")}


def run(engine: Engine, body: Callable[[Coalescer, Any], Awaitable[Any]], **options: Any) -> tuple[Any, Any]:
    """Run `body(coalescer, spy)` on a fresh event loop; `spy` wraps the engine's project_many."""
    coalescer = Coalescer(**{"window_ms": WIDE, "metrics": Metrics(), **options})
    with mock.patch.object(engine, "project_many", wraps=engine.project_many) as spy:
        result = asyncio.run(body(coalescer, spy))
    return result, spy


def unbatched(engine: Engine, image: PreparedImage, layer: str, rule: str, seed: Seed) -> tuple[bytes, dict[str, str]]:
    item = render(engine.project(image, layer, seed.channel, mode=rule, select=seed.select, position=seed.position))  # type: ignore[arg-type]
    return item.body, dict(item.headers)


def calls(spy: mock.MagicMock) -> list[tuple[str, str, str, list[Seed]]]:
    """(image key, layer, mode, seeds) of each project_many call."""
    return [(c.args[0].key, c.args[1], c.kwargs["mode"], list(c.args[2])) for c in spy.call_args_list]


def histogram(metrics: Metrics, name: str) -> tuple[float, float]:
    """(count, sum) of one of the tiny model's histograms."""
    count = metrics.registry.get_sample_value(f"{name}_count", {"model": "tiny"}) or 0.0
    total = metrics.registry.get_sample_value(f"{name}_sum", {"model": "tiny"}) or 0.0
    return count, total


def test_requests_within_the_window_share_one_call_and_equal_unbatched_answers(
    engine: Engine, images: dict[str, PreparedImage]
) -> None:
    image = images["chelsea"]
    seeds = [Seed(0), Seed(1, "map"), Seed(2, position=(3, 4)), Seed(0)]  # Seed(0) twice: computed once

    async def body(coalescer: Coalescer, spy: Any) -> list[Any]:
        return await asyncio.gather(*(coalescer.project(engine, image, "conv2", "guided", [s]) for s in seeds))

    answers, spy = run(engine, body)
    assert calls(spy) == [(image.key, "conv2", "guided", seeds[:3])]
    for seed, (item,) in zip(seeds, answers, strict=True):
        assert (item.body, dict(item.headers)) == unbatched(engine, image, "conv2", "guided", seed)


def test_a_request_after_the_batch_left_starts_the_next_one(engine: Engine, images: dict[str, PreparedImage]) -> None:
    image = images["chelsea"]

    async def body(coalescer: Coalescer, spy: Any) -> None:
        first = asyncio.create_task(coalescer.project(engine, image, "conv1", "deconvnet", [Seed(0)]))
        await asyncio.sleep(0)  # well within the window: joins the first batch
        second = asyncio.create_task(coalescer.project(engine, image, "conv1", "deconvnet", [Seed(1)]))
        await asyncio.gather(first, second)
        await coalescer.project(engine, image, "conv1", "deconvnet", [Seed(2)])  # the window is long over

    _, spy = run(engine, body)
    assert [seeds for *_, seeds in calls(spy)] == [[Seed(0), Seed(1)], [Seed(2)]]


def test_the_window_has_a_cap() -> None:
    with pytest.raises(ValueError, match="0..50 ms"):
        Coalescer(window_ms=WINDOW_CAP_MS + 1)
    with pytest.raises(ValidationError):
        Settings(projection_window_ms=WINDOW_CAP_MS + 1)
    assert Settings().projection_window_ms == 2.0


def test_a_full_batch_leaves_at_once_and_a_large_request_stays_whole(
    engine: Engine, images: dict[str, PreparedImage]
) -> None:
    image = images["coffee"]

    async def body(coalescer: Coalescer, spy: Any) -> None:
        singles = [coalescer.project(engine, image, "conv1", "gradient", [Seed(c)]) for c in range(3)]
        await asyncio.gather(*singles)
        await coalescer.project(engine, image, "conv1", "gradient", [Seed(c, "map") for c in range(4)])

    _, spy = run(engine, body, max_seeds=2)
    assert [len(seeds) for *_, seeds in calls(spy)] == [2, 1, 4]


def test_a_batch_is_grouped_by_layer_mode_and_image(engine: Engine, images: dict[str, PreparedImage]) -> None:
    chelsea, coffee = images["chelsea"], images["coffee"]
    wanted = [
        (chelsea, "conv1", "deconvnet", Seed(0)),
        (chelsea, "conv1", "guided", Seed(0)),
        (chelsea, "conv2", "deconvnet", Seed(1)),
        (coffee, "conv1", "deconvnet", Seed(2)),
        (chelsea, "conv1", "deconvnet", Seed(3)),
    ]
    metrics = Metrics()

    async def body(coalescer: Coalescer, spy: Any) -> list[Any]:
        return await asyncio.gather(*(coalescer.project(engine, i, layer, rule, [s]) for i, layer, rule, s in wanted))

    answers, spy = run(engine, body, metrics=metrics)
    assert sorted(calls(spy), key=repr) == sorted(
        [
            (chelsea.key, "conv1", "deconvnet", [Seed(0), Seed(3)]),
            (chelsea.key, "conv1", "guided", [Seed(0)]),
            (chelsea.key, "conv2", "deconvnet", [Seed(1)]),
            (coffee.key, "conv1", "deconvnet", [Seed(2)]),
        ],
        key=repr,
    )
    for (image, layer, rule, seed), (item,) in zip(wanted, answers, strict=True):
        assert (item.body, dict(item.headers)) == unbatched(engine, image, layer, rule, seed)
    # one batch of five requests and five seeds; every request's wait observed, the model time too
    assert histogram(metrics, "convscope_projection_batch_requests") == (1.0, 5.0)
    assert histogram(metrics, "convscope_projection_batch_size") == (1.0, 5.0)
    assert histogram(metrics, "convscope_projection_queue_wait_seconds")[0] == 5.0
    count, seconds = histogram(metrics, "convscope_projection_model_seconds")
    assert count == 1.0 and seconds > 0


def test_an_error_fails_only_its_own_request(engine: Engine, images: dict[str, PreparedImage]) -> None:
    image = images["chelsea"]

    async def body(coalescer: Coalescer, spy: Any) -> list[Any]:
        requests = [coalescer.project(engine, image, "conv2", "deconvnet", [Seed(c)]) for c in (0, 999, 1)]
        return await asyncio.gather(*requests, return_exceptions=True)

    (good, bad, other), spy = run(engine, body)
    assert isinstance(bad, InvalidRequestError) and "out of range" in str(bad)
    assert (good[0].body, dict(good[0].headers)) == unbatched(engine, image, "conv2", "deconvnet", Seed(0))
    assert (other[0].body, dict(other[0].headers)) == unbatched(engine, image, "conv2", "deconvnet", Seed(1))
    # the batch failed as a whole, then each request was redone alone
    assert [seeds for *_, seeds in calls(spy)] == [[Seed(0), Seed(999), Seed(1)], [Seed(0)], [Seed(999)], [Seed(1)]]


def test_a_cancelled_request_leaves_its_batch(engine: Engine, images: dict[str, PreparedImage]) -> None:
    image = images["coffee"]

    async def body(coalescer: Coalescer, spy: Any) -> tuple[list[Any], bool]:
        tasks = [asyncio.create_task(coalescer.project(engine, image, "conv2", "guided", [Seed(c)])) for c in range(3)]
        await asyncio.sleep(0)  # all three are waiting for the window
        assert coalescer.queue(engine).waiting == 3
        tasks[1].cancel()
        done = await asyncio.gather(tasks[0], tasks[2])
        return done, tasks[1].cancelled()

    (done, cancelled), spy = run(engine, body)
    assert cancelled
    assert calls(spy) == [(image.key, "conv2", "guided", [Seed(0), Seed(2)])]
    assert (done[1][0].body, dict(done[1][0].headers)) == unbatched(engine, image, "conv2", "guided", Seed(2))
