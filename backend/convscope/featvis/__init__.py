"""Feature visualisation by optimisation (Olah et al., Distill 2017): what excites a unit most.

`visualize(engine, layer, channels)` optimises one image per channel in one batch with a
decorrelated Fourier parameterisation and random jitter / scale / rotation, and returns
`Visualization`s (the PNG-ready image, the optimised input in the model's normalised
space, the objective reached). `FeatvisCache` stores them on disk so a unit is computed
once; `build_atlas` writes a static site of a model's units. No web code here.
"""

from convscope.featvis.cache import FeatvisCache, default_cache_dir
from convscope.featvis.objectives import OBJECTIVES, Objective, Target, check_target
from convscope.featvis.optimise import Visualization, run_target, visualize

__all__ = [
    "OBJECTIVES",
    "FeatvisCache",
    "Objective",
    "Target",
    "Visualization",
    "check_target",
    "default_cache_dir",
    "run_target",
    "visualize",
]
