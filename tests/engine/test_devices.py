"""Device selection."""

from __future__ import annotations

import pytest
import torch

from convscope.engine import Engine, resolve_device
from convscope.engine.engine import set_cuda_tf32
from convscope.errors import InvalidRequestError
from convscope.models import load_model


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_cuda_requested_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequestError, match="CUDA is not available"):
        resolve_device("cuda")


def test_unknown_device() -> None:
    with pytest.raises(InvalidRequestError, match="unknown device"):
        resolve_device("tpu")


def test_set_cuda_tf32_sets_both_flags_and_reads_back() -> None:
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        set_cuda_tf32(True)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
        set_cuda_tf32(False)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_cpu_engine_leaves_the_tf32_flags_alone() -> None:
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    Engine(load_model("zfnet", pretrained=False), device_name="cpu", tf32=not before[0])
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
