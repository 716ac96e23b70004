"""Shared forward passes (`Engine.record_together`, `Engine.project_images`, `share_forward`): several
images recorded in one batched pass answer what one image at a time answers, each image is recorded once
however threads ask, the cache counts a shared pass's bytes once, and on the CPU by default nothing changes.

Shared answers are compared within a float tolerance, not byte for byte. Measured here (CPU, one thread),
the batched pass gives the bits of the one-image dense pass; the one-image engine may instead take the
receptive-field crop (cone.py), which a shared pass never takes, and that differs in the last bits (up to
7e-7 of the peak on EfficientNet-Lite0). Nor is bit-equality promised elsewhere: another thread count or
CUDA may pick another convolution algorithm for another batch size. The tolerance (rtol 1e-4, atol 1e-5 of the projection's peak) is far below what
a wrong sample, seed or rule would give (those differ by the whole projection)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any
from unittest import mock

import pytest
import torch

from convscope.engine import Engine, Seed
from convscope.engine.engine import Projection
from convscope.images import PreparedImage
from convscope.models import load_model
from convscope.samples import load_sample
from fixtures.nets import alexnet_shaped, make_engine

SIZE = 96
NAMES = ("chelsea", "coffee", "rocket", "astronaut")
MODES = ("deconvnet", "guided", "gradient")
SEEDS = {  # a different number of seeds per image: the rows of the shared backward pass are packed
    "conv2": [[Seed(0), Seed(5, "map"), Seed(2, position=(1, 1))], [Seed(7)], [Seed(3), Seed(1)]],
    "relu5": [[Seed(4)], [Seed(0), Seed(9, "map")], [Seed(11), Seed(2), Seed(6)]],
    "logits": [[Seed(3)], [Seed(1), Seed(8)], [Seed(0)]],  # a 2-D start: the whole pass is shared
}


def close(actual: Projection, expected: Projection) -> None:
    assert (actual.layer, actual.channel, actual.mode, actual.select) == (
        expected.layer,
        expected.channel,
        expected.mode,
        expected.select,
    )
    assert actual.seed_position == expected.seed_position
    assert actual.seed_value == pytest.approx(expected.seed_value, rel=1e-5, abs=1e-6)
    scale = float(expected.projection.abs().max())  # 0 for a dead channel: then both must be all zeros
    torch.testing.assert_close(actual.projection, expected.projection, rtol=1e-4, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    module = alexnet_shaped()
    module(torch.zeros(1, 3, SIZE, SIZE))  # materialise the lazy classifier
    return module.eval()


def engine_on(net: torch.nn.Module, **options: Any) -> Engine:
    return make_engine(net, SIZE, **{"cache_size": None, **options})


@pytest.fixture(scope="module")
def alone(net: torch.nn.Module) -> Engine:
    """The reference: one image per recorded pass."""
    return engine_on(net, share_forward=False)


@pytest.fixture(scope="module")
def images(alone: Engine) -> list[PreparedImage]:
    turned = [alone.prepare(load_sample(name).rotate(90)) for name in NAMES[:2]]
    return [alone.prepare(load_sample(name)) for name in NAMES] + turned


def one_at_a_time(
    engine: Engine, layer: str, requests: Sequence[tuple[PreparedImage, list[Seed]]], mode: str
) -> list[list[Projection]]:
    engine.clear_cache()
    return [engine.project_many(image, layer, seeds, mode=mode) for image, seeds in requests]  # type: ignore[arg-type]


def recorded_images(engine: Engine) -> int:
    """Images recorded so far, however: alone (one per pass) or in shared passes."""
    stats = engine.stats
    return stats.forward_passes - stats.shared_passes + stats.shared_images


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layer", sorted(SEEDS))
def test_three_images_recorded_together_are_one_forward_pass_with_the_one_at_a_time_answers(
    net: torch.nn.Module, alone: Engine, images: list[PreparedImage], layer: str, mode: str
) -> None:
    shared = engine_on(net, share_forward=True)
    requests = list(zip(images[:3], SEEDS[layer], strict=True))
    expected = one_at_a_time(alone, layer, requests, mode)
    forward, backward = shared.stats.forward_passes, shared.stats.backward_passes
    answers = shared.project_images(layer, requests, mode=mode)  # type: ignore[arg-type]
    assert shared.stats.forward_passes == forward + 1
    assert (shared.stats.shared_passes, shared.stats.shared_images, shared.stats.shared_pass_sizes) == (1, 3, {3: 1})
    rows = max(
        len(seeds) for seeds in SEEDS[layer]
    )  # on the CPU one backward pass per row: the most seeds on one image
    assert shared.stats.backward_passes == backward + rows
    for mine, theirs in zip(answers, expected, strict=True):
        assert len(mine) == len(theirs)
        for actual, wanted in zip(mine, theirs, strict=True):
            close(actual, wanted)
    assert sum(bool(p.projection.any()) for mine in answers for p in mine) >= 4  # real projections, not zeros
    # a later click on one of them goes back through the shared pass: no new forward pass
    (again,) = shared.project_many(images[1], layer, [Seed(2)], mode=mode)  # type: ignore[arg-type]
    (wanted,) = alone.project_many(images[1], layer, [Seed(2)], mode=mode)  # type: ignore[arg-type]
    close(again, wanted)
    assert shared.stats.forward_passes == forward + 1
    assert shared.stats.cone_passes == 0  # the cone is not used on a shared pass


@pytest.mark.parametrize("at_once", [2, 5])
def test_rows_in_vmapped_chunks_as_on_cuda_give_the_same_projections(
    net: torch.nn.Module, alone: Engine, images: list[PreparedImage], at_once: int
) -> None:
    """CUDA's route (rows of seeds in vmapped backward passes of at most `at_once` rows, bounded by
    SHARED_BACKWARD_SAMPLES), run here on the CPU: 5 rows in chunks of 2 (three passes) or all at once."""
    shared = engine_on(net, share_forward=True)
    requests = [
        (images[0], [Seed(c) for c in range(5)]),
        (images[1], [Seed(7), Seed(2, "map")]),
        (images[2], [Seed(3)]),
    ]
    expected = one_at_a_time(alone, "relu5", requests, "guided")
    backward = shared.stats.backward_passes
    with mock.patch.object(Engine, "_rows_at_once", staticmethod(lambda image: at_once)):
        answers = shared.project_images("relu5", requests, mode="guided")
    assert shared.stats.backward_passes == backward + -(-5 // at_once)
    for mine, theirs in zip(answers, expected, strict=True):
        for actual, wanted in zip(mine, theirs, strict=True):
            close(actual, wanted)


def test_a_click_on_another_layer_records_that_image_alone(
    net: torch.nn.Module, alone: Engine, images: list[PreparedImage]
) -> None:
    shared = engine_on(net, share_forward=True)
    assert shared.record_together(images[:3], "conv2") == [3]
    assert shared.record_together(images[:3], "conv2") == []  # all cached: nothing to record
    forward = shared.stats.forward_passes
    (deeper,) = shared.project_many(images[0], "relu5", [Seed(1)], mode="guided")
    assert shared.stats.forward_passes == forward + 1  # its whole pass, alone
    close(deeper, alone.project_many(images[0], "relu5", [Seed(1)], mode="guided")[0])
    # the other two still answer from the shared pass, the first from its own whole pass
    answers = shared.project_images("conv2", [(image, [Seed(3)]) for image in images[:3]], mode="deconvnet")
    assert shared.stats.forward_passes == forward + 1
    for image, (answer,) in zip(images[:3], answers, strict=True):
        close(answer, alone.project_many(image, "conv2", [Seed(3)], mode="deconvnet")[0])
    # an image with a record that lacks the layer is not recorded together: it gets its whole pass alone
    assert shared.record_together([images[1], images[3], images[4]], "relu5") == [2]


def test_more_images_than_a_pass_holds_are_split_evenly(net: torch.nn.Module, images: list[PreparedImage]) -> None:
    shared = engine_on(net, share_forward=True)
    shared.shared_pass_images = 4
    assert shared.record_together(images[:6], "conv2") == [3, 3]
    assert shared.stats.shared_passes == 2 and shared.stats.shared_pass_sizes == {3: 2}


def test_one_image_alone_is_recorded_as_without_sharing(
    net: torch.nn.Module, alone: Engine, images: list[PreparedImage]
) -> None:
    shared = engine_on(net, share_forward=True)
    assert shared.record_together([images[0], images[0]], "conv2") == [1]
    assert shared.stats.shared_passes == 0
    alone.clear_cache()
    for mode in MODES:
        mine = shared.project_many(images[0], "conv2", SEEDS["conv2"][0], mode=mode)  # type: ignore[arg-type]
        theirs = alone.project_many(images[0], "conv2", SEEDS["conv2"][0], mode=mode)  # type: ignore[arg-type]
        for actual, wanted in zip(mine, theirs, strict=True):
            assert torch.equal(actual.projection, wanted.projection)


def test_an_image_twice_in_one_call_is_refused(net: torch.nn.Module, images: list[PreparedImage]) -> None:
    from convscope.errors import InvalidRequestError

    shared = engine_on(net, share_forward=True)
    with pytest.raises(InvalidRequestError, match="appears twice"):
        shared.project_images("conv2", [(images[0], [Seed(0)]), (images[0], [Seed(1)])])


# ---- concurrency ---------------------------------------------------------------------------------


def test_overlapping_image_sets_from_two_threads_record_each_image_once(
    net: torch.nn.Module, alone: Engine, images: list[PreparedImage]
) -> None:
    """The first thread is held inside its shared pass (images 0-2) while the second asks for images
    1-3: it records image 3 alone, then waits for the first thread's records of 1 and 2."""
    shared = engine_on(net, share_forward=True)
    inside, go_on = threading.Event(), threading.Event()
    record = shared._record_tensor
    results: dict[str, Any] = {}
    forward, before = shared.stats.forward_passes, recorded_images(shared)

    def held(tensor: torch.Tensor, stop_after: str | None = None) -> Any:
        if threading.current_thread().name == "first":
            inside.set()
            assert go_on.wait(timeout=60)
        return record(tensor, stop_after)

    def first() -> None:
        results["first"] = shared.project_images("conv2", [(image, [Seed(4)]) for image in images[:3]])

    def second() -> None:
        assert inside.wait(timeout=60)
        results["sizes"] = shared.record_together(images[1:4], "conv2")  # 1 and 2 are being recorded
        go_on.set()
        results["second"] = shared.project_images("conv2", [(image, [Seed(4)]) for image in images[1:4]])

    with mock.patch.object(shared, "_record_tensor", held):
        threads = [threading.Thread(target=run, name=run.__name__) for run in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread never finished: deadlock"
    assert results["sizes"] == [1]  # image 3 alone: 1 and 2 were the first thread's
    assert shared.stats.forward_passes == forward + 2 and recorded_images(shared) == before + 4
    expected = {image.key: alone.project_many(image, "conv2", [Seed(4)])[0] for image in images[:4]}
    for image, (answer,) in zip(images[:3], results["first"], strict=True):
        close(answer, expected[image.key])
    for image, (answer,) in zip(images[1:4], results["second"], strict=True):
        close(answer, expected[image.key])


def test_many_threads_with_overlapping_sets_never_record_an_image_twice(
    net: torch.nn.Module, images: list[PreparedImage]
) -> None:
    shared = engine_on(net, share_forward=True)
    subsets = [images[start : start + 3] for start in range(4)] * 2  # 8 threads, each image in several sets
    before = recorded_images(shared)
    start = threading.Barrier(len(subsets))
    errors: list[BaseException] = []

    def run(subset: list[PreparedImage]) -> None:
        try:
            start.wait(timeout=60)
            shared.project_images("relu5", [(image, [Seed(1)]) for image in subset], mode="guided")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(subset,)) for subset in subsets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread never finished: deadlock"
    assert not errors, errors
    assert recorded_images(shared) == before + len(images)  # six images, each recorded once


# ---- the cache's accounting ---------------------------------------------------------------------


def bytes_alone(engine: Engine, images: Sequence[PreparedImage], layer: str | None) -> int:
    """The bytes the records of `images` hold when each is recorded alone (`layer`: a first click's)."""
    engine.clear_cache()
    for image in images:
        engine._record(image, layer)
    return engine.memory().bytes


def test_a_shared_pass_is_one_record_whose_bytes_count_once(
    net: torch.nn.Module, alone: Engine, images: list[PreparedImage]
) -> None:
    shared = engine_on(net, share_forward=True)
    three = images[:3]
    separate = bytes_alone(alone, three, "conv2")
    assert shared.record_together(three, "conv2") == [3]
    memory = shared.memory()
    assert memory.records == 1
    # the batch holds what the three records hold apart (inputs, saved tensors, outputs: N× as large each),
    # counted once: not three times over, and not a third of it
    assert abs(memory.bytes - separate) <= 0.01 * separate
    together = memory.bytes
    # one image gets a whole record of its own: the shared pass still serves the other two, in full
    shared._record(images[0])
    whole = [bytes_alone(alone, [image], None) for image in three]
    assert shared.memory().records == 2
    assert abs(shared.memory().bytes - (together + whole[0])) <= 0.01 * (together + whole[0])
    # once every image has its own, the shared pass serves none: it leaves, and its bytes with it
    shared._record(images[1])
    shared._record(images[2])
    assert shared.memory().records == 3
    assert abs(shared.memory().bytes - sum(whole)) <= 0.01 * sum(whole)


def test_a_shared_pass_ages_with_its_images_and_leaves_whole(net: torch.nn.Module, images: list[PreparedImage]) -> None:
    shared = engine_on(net, share_forward=True, cache_size=2)
    a, b, c, d, e, f = images
    shared.record_together([a, b, c], "conv2")
    shared.project_many(d, "conv2", [Seed(0)])  # records: the shared pass, d
    shared.project_many(b, "conv2", [Seed(0)])  # b's use makes the shared pass the most recent: d is older
    shared.project_many(e, "conv2", [Seed(0)])  # a third record: the least recently used (d) leaves
    assert shared.memory().records == 2
    forward = shared.stats.forward_passes
    shared.project_many(a, "conv2", [Seed(1)])  # still shared
    assert shared.stats.forward_passes == forward
    shared.project_many(f, "conv2", [Seed(0)])  # now e is the least recently used
    shared.project_many(d, "conv2", [Seed(0)])  # and now the shared pass: all three of its images leave
    assert shared.memory().records == 2
    for image in (a, b, c):
        shared.project_many(image, "conv2", [Seed(1)])
    assert shared.stats.forward_passes == forward + 5  # f, d, then a, b and c, each alone again
    assert shared.memory().bytes > 0 and shared.memory().records == 2


def test_a_shared_pass_larger_than_the_cache_is_used_not_kept(
    net: torch.nn.Module, alone: Engine, images: list[PreparedImage]
) -> None:
    shared = engine_on(net, share_forward=True, cache_mb=0.01)
    forward = shared.stats.forward_passes
    answers = shared.project_images("conv2", [(image, [Seed(2)]) for image in images[:3]])
    assert shared.stats.not_cached == 1 and shared.memory().records == 0 and shared.memory().bytes == 0
    assert shared.stats.forward_passes == forward + 1
    for image, (answer,) in zip(images[:3], answers, strict=True):
        close(answer, alone.project_many(image, "conv2", [Seed(2)])[0])


# ---- the policy ---------------------------------------------------------------------------------


def test_on_the_cpu_nothing_is_shared_by_default_and_answers_are_the_same_bytes(
    net: torch.nn.Module, alone: Engine, images: list[PreparedImage]
) -> None:
    auto = engine_on(net)  # share_forward=None: by device
    assert auto.share_forward is False and alone.share_forward is False
    for layer in sorted(SEEDS):
        requests = list(zip(images[:3], SEEDS[layer], strict=True))
        auto.clear_cache()
        forward = auto.stats.forward_passes
        answers = auto.project_images(layer, requests, mode="guided")
        assert auto.stats.forward_passes == forward + 3  # one per image
        expected = one_at_a_time(alone, layer, requests, "guided")
        for mine, theirs in zip(answers, expected, strict=True):
            for actual, wanted in zip(mine, theirs, strict=True):
                assert torch.equal(actual.projection, wanted.projection)
                assert (actual.seed_value, actual.seed_position) == (wanted.seed_value, wanted.seed_position)
    assert auto.stats.shared_passes == 0


def test_the_policy_is_checked(net: torch.nn.Module) -> None:
    from convscope.errors import InvalidRequestError

    assert engine_on(net, share_forward=True).share_forward is True
    with pytest.raises(InvalidRequestError, match="share_forward"):
        engine_on(net, share_forward="yes")


def test_the_default_model_shares_a_pass_with_the_one_at_a_time_answers() -> None:
    """EfficientNet-Lite0 with its real weights (ReLU6 blocks, batch norm, no max-pool)."""
    model = load_model()
    shared = Engine(model, device_name="cpu", share_forward=True)
    reference = Engine(load_model(), device_name="cpu", share_forward=False)
    photos = [shared.prepare(load_sample(name)) for name in NAMES[:3]]
    layer = "blocks.2.0.conv_pw"
    requests = [(photo, [Seed(channel), Seed(channel + 7, "map")]) for channel, photo in enumerate(photos)]
    forward = shared.stats.forward_passes
    answers = shared.project_images(layer, requests, mode="guided")
    assert shared.stats.forward_passes == forward + 1 and shared.stats.shared_images == 3
    for (photo, seeds), mine in zip(requests, answers, strict=True):
        for actual, wanted in zip(mine, reference.project_many(photo, layer, seeds, mode="guided"), strict=True):
            close(actual, wanted)
