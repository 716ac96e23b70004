"""Concurrent clicks on the CPU: backward passes at once over shared recorded passes, the
rule held per call, one record per image however many threads ask for it at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from torch import nn

from convscope.engine import Engine, Seed
from convscope.errors import InvalidRequestError
from convscope.images import PreparedImage
from convscope.samples import load_sample
from fixtures.nets import alexnet_shaped, make_engine, pooled_sequential

SIZE = 96
MODES = ("deconvnet", "guided", "gradient")


@pytest.fixture(scope="module")
def engine() -> Engine:
    net = alexnet_shaped()
    net(torch.zeros(1, 3, SIZE, SIZE))  # materialise the lazy classifier
    return make_engine(net, SIZE)


@pytest.fixture(scope="module")
def images(engine: Engine) -> list[PreparedImage]:
    return [engine.prepare(load_sample(name)) for name in ("chelsea", "coffee", "rocket", "astronaut")]


def test_eight_threads_equal_the_sequential_results_byte_for_byte(engine: Engine, images: list[PreparedImage]) -> None:
    jobs = [(i, layer, c, m) for i in range(4) for layer in ("conv2", "relu5") for c in (0, 7) for m in MODES]
    engine.clear_cache()
    expected = {job: engine.project(images[job[0]], job[1], job[2], mode=job[3]).projection for job in jobs}  # type: ignore[arg-type]
    engine.clear_cache()

    def run(job: tuple[int, str, int, str]) -> tuple[tuple[int, str, int, str], torch.Tensor]:
        return job, engine.project(images[job[0]], job[1], job[2], mode=job[3]).projection  # type: ignore[arg-type]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, jobs * 2))
    assert len(results) == 2 * len(jobs)
    for job, projection in results:
        assert torch.equal(projection, expected[job]), job


def test_one_image_is_recorded_once_however_many_threads_click_it(engine: Engine, images: list[PreparedImage]) -> None:
    engine.clear_cache()
    before = engine.stats.forward_passes
    start = threading.Barrier(8)

    def click(k: int) -> torch.Tensor:
        start.wait(timeout=30)
        return engine.project(images[0], "relu5", k, mode=MODES[k % 3]).projection  # type: ignore[arg-type]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(click, range(8)))
    assert engine.stats.forward_passes == before + 1
    assert all(torch.isfinite(result).all() for result in results)


class _Rendezvous(torch.autograd.Function):
    """Identity; its backward waits until `parties` backward passes are inside it at once."""

    barrier: threading.Barrier | None = None
    timeout = 20.0

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if _Rendezvous.barrier is not None:
            _Rendezvous.barrier.wait(timeout=_Rendezvous.timeout)  # BrokenBarrierError if the passes are serialised
        return grad


class _Meet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = _Rendezvous.apply(x)
        return result


def _meeting_net() -> nn.Sequential:
    return pooled_sequential(
        60,
        ("conv1", nn.Conv2d(3, 4, 3, padding=1)),
        ("meet", _Meet()),
        ("relu", nn.ReLU()),
        ("conv2", nn.Conv2d(4, 4, 3, padding=1)),
        classes=3,
    )


def test_two_backward_passes_run_at_once_each_with_its_own_rule() -> None:
    engine = make_engine(_meeting_net(), 32, classes=3)
    assert engine.workers == 2
    image = engine.prepare(load_sample("chelsea"))
    expected = {mode: engine.project(image, "conv2", 1, mode=mode).projection for mode in ("deconvnet", "gradient")}
    _Rendezvous.barrier = threading.Barrier(2)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {mode: pool.submit(engine.project, image, "conv2", 1, mode=mode) for mode in expected}
            results = {mode: future.result(timeout=60).projection for mode, future in futures.items()}
    finally:
        _Rendezvous.barrier = None
    for mode, projection in results.items():
        assert torch.equal(projection, expected[mode]), mode
    assert not torch.equal(results["deconvnet"], results["gradient"])


def test_one_worker_serialises_backward_passes() -> None:
    module = _meeting_net().eval()
    from convscope.models.labels import numbered_labels
    from convscope.models.spec import LoadedModel

    engine = Engine(LoadedModel("one", module, numbered_labels(3), input_size=32), device_name="cpu", workers=1)
    image = engine.prepare(load_sample("chelsea"))
    engine.project(image, "conv2", 0)
    _Rendezvous.barrier, _Rendezvous.timeout = threading.Barrier(2), 3.0
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(engine.project, image, "conv2", c) for c in (0, 1)]
            errors = [future.exception(timeout=60) for future in futures]
    finally:
        _Rendezvous.barrier, _Rendezvous.timeout = None, 20.0
    assert any(isinstance(error, threading.BrokenBarrierError) for error in errors)


def test_workers_must_be_positive() -> None:
    from convscope.models.labels import numbered_labels
    from convscope.models.spec import LoadedModel

    with pytest.raises(InvalidRequestError, match="workers"):
        Engine(LoadedModel("bad", _meeting_net(), numbered_labels(3), input_size=32), device_name="cpu", workers=0)


def test_many_seeds_and_one_at_a_time_agree_under_threads(engine: Engine, images: list[PreparedImage]) -> None:
    seeds = [Seed(c) for c in range(0, 24, 3)]
    expected = engine.project_many(images[1], "relu5", seeds, mode="guided")
    with ThreadPoolExecutor(max_workers=8) as pool:
        singles = list(pool.map(lambda seed: engine.project_many(images[1], "relu5", [seed], mode="guided")[0], seeds))
    for single, many in zip(singles, expected, strict=True):
        assert torch.equal(single.projection, many.projection)
