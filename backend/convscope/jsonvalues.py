"""JSON-safe numbers: JSON has no NaN or infinity, so a non-finite float is sent as null."""

from __future__ import annotations

import math


def finite_or_none(value: float) -> float | None:
    """`value` when it is a finite number, else None (null in JSON)."""
    return value if math.isfinite(value) else None
