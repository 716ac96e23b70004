"""The studies' tests train real (small) networks on the CPU: one torch thread is much
faster than two on a shared 2-core machine (measured ~10× for these small convolutions)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
