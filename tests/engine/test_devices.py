"""Device selection."""

from __future__ import annotations

import pytest
import torch

from convscope.engine import resolve_device
from convscope.errors import InvalidRequestError


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
