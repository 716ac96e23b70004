"""Feature visualisation by optimisation (Olah et al., Distill 2017): what excites a unit most.

`visualize(engine, layer, channels)` optimises one image per channel in one batch with a
decorrelated Fourier parameterisation and random jitter / scale / rotation, and returns
`Visualization`s (the PNG-ready image, the optimised input in the model's normalised
space, the objective reached). `FeatvisCache` stores them on disk so a unit is computed
once; `build_atlas` writes a static site of a model's units. No web code here.

The names are imported on first use, so the CLI's parser can read `featvis.limits`
without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "OBJECTIVES": "convscope.featvis.objectives",
    "Objective": "convscope.featvis.objectives",
    "Target": "convscope.featvis.objectives",
    "check_target": "convscope.featvis.objectives",
    "Visualization": "convscope.featvis.optimise",
    "run_target": "convscope.featvis.optimise",
    "visualize": "convscope.featvis.optimise",
    "FeatvisCache": "convscope.featvis.cache",
    "default_cache_dir": "convscope.featvis.cache",
    "build_atlas": "convscope.featvis.atlas",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'convscope.featvis' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
