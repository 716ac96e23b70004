"""The engine's surface: a plain class, one no-grad `infer` with taps, hooks and the
lock owned by the engine, the caller's model left as it was given (but for device/eval)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.engine import Engine, LayerCapture, Tap
from convscope.errors import NotFoundError
from fixtures.nets import make_engine, small_net

SIZE = 32


def _hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_engine_is_a_plain_hashable_class() -> None:
    engine = make_engine(small_net(), SIZE, classes=3)
    other = make_engine(small_net(), SIZE, classes=3)
    assert {engine: 1, other: 2}[engine] == 1
    assert engine != other and engine == engine
    assert not hasattr(engine, "_kinds")
    assert "test-net" in repr(engine)


def test_the_callers_parameters_keep_their_requires_grad() -> None:
    module = small_net()
    module.fc.weight.requires_grad_(False)
    engine = make_engine(module, SIZE, classes=3)
    assert module.conv1.weight.requires_grad and not module.fc.weight.requires_grad
    assert not module.training  # eval mode, as documented
    engine.project(_prepared(engine), "conv2", 0)
    assert module.conv1.weight.grad is None  # projections never accumulate parameter gradients
    assert _hooks(module) == 0


def _prepared(engine: Engine):  # type: ignore[no-untyped-def]
    from convscope.samples import load_sample

    return engine.prepare(load_sample("chelsea"))


def test_infer_taps_outputs_inputs_and_reductions() -> None:
    module = small_net()
    engine = make_engine(module, SIZE, classes=3)
    batch = torch.randn(2, 3, SIZE, SIZE)
    taps = [
        Tap("conv1"),
        Tap("conv2", input=True),
        Tap("conv2", reduce="mean"),
        Tap("conv2", reduce="sum"),
        Tap("conv2", reduce="max"),
        Tap("fc", input=True),
        Tap("conv2", reduce=lambda t: t[:, :2].clone()),
    ]
    logits, tapped = engine.infer(batch, taps)
    with torch.no_grad():
        conv1 = module.conv1(batch)
        relu1 = F.relu(conv1)
        conv2 = module.conv2(relu1)
        expected_logits = module.fc(conv2.mean(dim=(2, 3)))
    torch.testing.assert_close(logits, expected_logits)
    # conv1's output is taken before the in-place ReLU rewrites it
    torch.testing.assert_close(tapped[taps[0]], conv1)
    torch.testing.assert_close(tapped[taps[1]], relu1)
    torch.testing.assert_close(tapped[taps[2]], conv2.mean(dim=(2, 3)))
    torch.testing.assert_close(tapped[taps[3]], conv2.sum(dim=(2, 3)))
    torch.testing.assert_close(tapped[taps[4]], conv2.amax(dim=(2, 3)))
    torch.testing.assert_close(tapped[taps[5]], conv2.mean(dim=(2, 3)))
    torch.testing.assert_close(tapped[taps[6]], conv2[:, :2])
    assert not logits.requires_grad and not any(t.requires_grad for t in tapped.values())
    assert _hooks(module) == 0


def test_a_spatial_reduction_passes_over_a_non_4d_tensor() -> None:
    engine = make_engine(small_net(), SIZE, classes=3)
    _, tapped = engine.infer(torch.randn(1, 3, SIZE, SIZE), [Tap("fc", reduce="max")])
    assert tapped == {}


def test_infer_names_an_unknown_module() -> None:
    engine = make_engine(small_net(), SIZE, classes=3)
    with pytest.raises(NotFoundError, match="no module 'nope'"):
        engine.infer(torch.randn(1, 3, SIZE, SIZE), [Tap("nope")])


def test_a_capture_ignores_other_threads() -> None:
    module = small_net().eval()
    batch = torch.randn(1, 3, SIZE, SIZE)
    seen_elsewhere: list[int] = []
    with LayerCapture(module, taps=[Tap("conv1")]) as capture:

        def other() -> None:
            with torch.no_grad():
                module(batch)
            seen_elsewhere.append(len(capture.tapped))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert seen_elsewhere == [0]
        with torch.no_grad():
            module(batch)
        assert set(capture.tapped) == {Tap("conv1")}
    assert _hooks(module) == 0


def test_the_lock_is_free_between_batches_of_a_job() -> None:
    """An analysis job runs batch by batch: between two batches another thread gets the lock."""
    from convscope.analysis.filters import dead_channels

    engine = make_engine(small_net(), SIZE, classes=3)
    got_in: list[bool] = []

    def try_lock() -> None:
        acquired = engine.lock.acquire(timeout=5)
        got_in.append(acquired)
        if acquired:
            engine.lock.release()

    def images():  # type: ignore[no-untyped-def]
        for _ in range(3):
            thread = threading.Thread(target=try_lock)
            thread.start()
            thread.join()
            yield torch.randn(1, 3, SIZE, SIZE)

    layers = dead_channels(engine, images(), batch_size=1)
    assert got_in == [True, True, True]
    assert layers
