"""A memory budget per request: scans and analyses that record many layers' outputs at once are
refused (422, with the estimate) before any work when their estimate passes `request_memory_mb`.

The estimate is the recorded outputs of one batch (float32), times a factor for the copies the
top-k update and the features' reductions make: deliberately coarse, and on the safe side.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from convscope.api.settings import MiB, Settings
from convscope.engine import Engine, LayerInfo
from convscope.errors import InvalidRequestError

COPIES = 3  # recorded output + the reshaped/sorted copies made while reducing it


def layers_bytes(infos: Iterable[LayerInfo], batch: int) -> int:
    return COPIES * 4 * batch * sum(info.channels * info.height * info.width for info in infos)


def check_memory(settings: Settings, needed: int, what: str, advice: str) -> None:
    budget = settings.request_memory_mb * MiB
    if needed > budget:
        raise InvalidRequestError(
            f"{what} would need about {needed / MiB:,.0f} MiB of working memory; the limit per request is "
            f"{settings.request_memory_mb:,} MiB (CONVSCOPE_REQUEST_MEMORY_MB); {advice}"
        )


def check_scan_memory(settings: Settings, infos: Sequence[LayerInfo], batch: int) -> None:
    check_memory(settings, layers_bytes(infos, batch), f"a scan of {len(infos)} layers", "scan fewer layers")


def check_analysis_memory(settings: Settings, engine: Engine, layers: Iterable[str | None], batch: int) -> None:
    """Layers by name; names that are not module outputs (`penultimate`, `NAME:input`) count as the
    largest layer, to stay on the safe side."""
    known = {info.name: info for info in engine.layers()}
    largest = max(known.values(), key=lambda info: info.channels * info.height * info.width, default=None)
    infos = [known.get(name or "", largest) for name in layers]
    needed = layers_bytes([info for info in infos if info is not None], batch)
    check_memory(settings, needed, "this analysis", "ask for fewer or smaller layers")
