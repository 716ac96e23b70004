"""The projection batching queue (api/coalesce.py) on a real engine (the tiny conv net of api/helpers.py):
the window, the seed cap, grouping by (layer, mode) and image, errors and cancellation stay per request,
and every answer is the unbatched one byte for byte."""

from __future__ import annotations

import asyncio
import logging
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

WIDE = WINDOW_CAP_MS  # the widest window: the timer that ends it fires within 50 ms (real time)


class Clock:
    """The queue's clock, moved by the test: a window is over when the test says so, never because a
    busy machine was slow between two requests."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def settle(clock: Clock, *requests: Awaitable[Any], errors: bool = False) -> list[Any]:
    """Start the requests, let each reach the queue, end the window, and wait for their answers."""
    tasks = [asyncio.ensure_future(request) for request in requests]
    await asyncio.sleep(0)  # every request is waiting in the queue now
    clock.now += 1.0  # the window is over
    return await asyncio.gather(*tasks, return_exceptions=errors)


@pytest.fixture(scope="module")
def engine() -> Engine:
    """One backward pass at a time (as on CUDA): every due request joins one batch. How a batch is
    split among several workers (the CPU's default) has its own test."""
    return Engine(tiny_model(), device_name="cpu", workers=1)


@pytest.fixture(scope="module")
def images(engine: Engine) -> dict[str, PreparedImage]:
    return {name: engine.prepare(load_sample(name)) for name in ("chelsea", "coffee")}


def run(engine: Engine, body: Callable[[Coalescer, Clock], Awaitable[Any]], **options: Any) -> tuple[Any, Any]:
    """Run `body(coalescer, clock)` on a fresh event loop; returns its result and a spy on project_many."""
    clock = Clock()
    coalescer = Coalescer(**{"window_ms": WIDE, "metrics": Metrics(), "clock": clock, **options})
    with mock.patch.object(engine, "project_many", wraps=engine.project_many) as spy:
        result = asyncio.run(body(coalescer, clock))
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

    async def body(coalescer: Coalescer, clock: Clock) -> list[Any]:
        return await settle(clock, *(coalescer.project(engine, image, "conv2", "guided", [s]) for s in seeds))

    answers, spy = run(engine, body)
    assert calls(spy) == [(image.key, "conv2", "guided", seeds[:3])]
    for seed, (item,) in zip(seeds, answers, strict=True):
        assert (item.body, dict(item.headers)) == unbatched(engine, image, "conv2", "guided", seed)


def test_a_request_after_the_batch_left_starts_the_next_one(engine: Engine, images: dict[str, PreparedImage]) -> None:
    image = images["chelsea"]

    async def body(coalescer: Coalescer, clock: Clock) -> None:
        first = asyncio.create_task(coalescer.project(engine, image, "conv1", "deconvnet", [Seed(0)]))
        await asyncio.sleep(0)
        clock.now += WIDE / 2000  # half the window later: joins the first batch
        await settle(clock, first, coalescer.project(engine, image, "conv1", "deconvnet", [Seed(1)]))
        await settle(clock, coalescer.project(engine, image, "conv1", "deconvnet", [Seed(2)]))  # a new window

    _, spy = run(engine, body)
    assert [seeds for *_, seeds in calls(spy)] == [[Seed(0), Seed(1)], [Seed(2)]]


def test_the_window_has_a_cap() -> None:
    with pytest.raises(ValueError, match=r"0\.\.50 ms"):
        Coalescer(window_ms=WINDOW_CAP_MS + 1)
    with pytest.raises(ValidationError):
        Settings(projection_window_ms=WINDOW_CAP_MS + 1)
    assert Settings().projection_window_ms == 2.0


def test_a_full_batch_leaves_at_once_and_a_large_request_stays_whole(
    engine: Engine, images: dict[str, PreparedImage]
) -> None:
    image = images["coffee"]

    async def body(coalescer: Coalescer, clock: Clock) -> None:
        await settle(clock, *(coalescer.project(engine, image, "conv1", "gradient", [Seed(c)]) for c in range(3)))
        # alone and larger than a batch: it leaves at once, whole (the window is never over here)
        await coalescer.project(engine, image, "conv1", "gradient", [Seed(c, "map") for c in range(4)])

    _, spy = run(engine, body, max_seeds=2)
    assert [len(seeds) for *_, seeds in calls(spy)] == [2, 1, 4]


def test_a_batch_is_grouped_by_layer_mode_and_image(
    engine: Engine, images: dict[str, PreparedImage], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="convscope.api.coalesce")
    chelsea, coffee = images["chelsea"], images["coffee"]
    wanted = [
        (chelsea, "conv1", "deconvnet", Seed(0)),
        (chelsea, "conv1", "guided", Seed(0)),
        (chelsea, "conv2", "deconvnet", Seed(1)),
        (coffee, "conv1", "deconvnet", Seed(2)),
        (chelsea, "conv1", "deconvnet", Seed(3)),
    ]
    metrics = Metrics()

    async def body(coalescer: Coalescer, clock: Clock) -> list[Any]:
        return await settle(clock, *(coalescer.project(engine, i, layer, rule, [s]) for i, layer, rule, s in wanted))

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
    # and one log line for the batch
    lines = [r.getMessage() for r in caplog.records if r.name == "convscope.api.coalesce"]
    assert len(lines) == 1 and lines[0].startswith("projection batch on tiny: 5 requests, 5 seeds computed in 4 groups")


def test_an_error_fails_only_its_own_request(engine: Engine, images: dict[str, PreparedImage]) -> None:
    image = images["chelsea"]

    async def body(coalescer: Coalescer, clock: Clock) -> list[Any]:
        requests = [coalescer.project(engine, image, "conv2", "deconvnet", [Seed(c)]) for c in (0, 999, 1)]
        return await settle(clock, *requests, errors=True)

    (good, bad, other), spy = run(engine, body)
    assert isinstance(bad, InvalidRequestError) and "out of range" in str(bad)
    assert (good[0].body, dict(good[0].headers)) == unbatched(engine, image, "conv2", "deconvnet", Seed(0))
    assert (other[0].body, dict(other[0].headers)) == unbatched(engine, image, "conv2", "deconvnet", Seed(1))
    # the batch failed as a whole, then each request was redone alone
    assert [seeds for *_, seeds in calls(spy)] == [[Seed(0), Seed(999), Seed(1)], [Seed(0)], [Seed(999)], [Seed(1)]]


def test_a_cancelled_request_leaves_its_batch(engine: Engine, images: dict[str, PreparedImage]) -> None:
    image = images["coffee"]

    async def body(coalescer: Coalescer, clock: Clock) -> tuple[list[Any], bool]:
        tasks = [asyncio.create_task(coalescer.project(engine, image, "conv2", "guided", [Seed(c)])) for c in range(3)]
        await asyncio.sleep(0)  # all three are waiting for the window
        assert coalescer.queue(engine).waiting == 3
        tasks[1].cancel()
        await asyncio.sleep(0)
        assert coalescer.queue(engine).waiting == 2
        done = await settle(clock, tasks[0], tasks[2])
        return done, tasks[1].cancelled()

    (done, cancelled), spy = run(engine, body)
    assert cancelled
    assert calls(spy) == [(image.key, "conv2", "guided", [Seed(0), Seed(2)])]
    assert (done[1][0].body, dict(done[1][0].headers)) == unbatched(engine, image, "conv2", "guided", Seed(2))


def test_what_is_due_is_split_among_the_free_workers(images: dict[str, PreparedImage]) -> None:
    """On the CPU a batch runs on one worker thread: with 2 workers, 5 due seeds leave as batches of 3
    and 2 at once, not as one batch of 5 that leaves a core idle; answers stay the unbatched ones."""
    two = Engine(tiny_model(), device_name="cpu", workers=2)
    image = images["chelsea"]
    seeds = [Seed(c) for c in range(5)]

    async def body(coalescer: Coalescer, clock: Clock) -> list[Any]:
        return await settle(clock, *(coalescer.project(two, image, "conv2", "deconvnet", [s]) for s in seeds))

    answers, spy = run(two, body)
    batches = [batch for *_, batch in calls(spy)]  # the two run at once: in either order
    assert sorted(batches, key=lambda batch: batch[0].channel) == [seeds[:3], seeds[3:]]
    for seed, (item,) in zip(seeds, answers, strict=True):
        assert (item.body, dict(item.headers)) == unbatched(two, image, "conv2", "deconvnet", seed)
