"""Inspection of a model, deconvnet projections and their rendering (no web code here)."""

from convscope.engine.engine import Engine, LayerInfo, Prediction, Projection, Seed, resolve_device
from convscope.engine.receptive_field import ReceptiveField
from convscope.engine.rules import MODES, RULES, Mode, Rule

__all__ = [
    "MODES",
    "RULES",
    "Engine",
    "LayerInfo",
    "Mode",
    "Prediction",
    "Projection",
    "ReceptiveField",
    "Rule",
    "Seed",
    "resolve_device",
]
