"""The studies' tests train real (small) networks on the CPU: one torch thread is much
faster than two on a shared 2-core machine (measured ~10× for these small convolutions)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from studies.helpers import one_thread


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    with one_thread():
        yield
