"""Inspection of a model, deconvnet projections and their rendering (no web code here)."""

from convscope.engine.capture import LayerCapture, Tap
from convscope.engine.engine import Engine, LayerInfo, Prediction, Projection, Seed, resolve_device
from convscope.engine.receptive_field import ReceptiveField
from convscope.engine.rules import MODES, RULES, Mode, Rule

__all__ = [
    "MODES",
    "RULES",
    "Engine",
    "LayerCapture",
    "LayerInfo",
    "Mode",
    "Prediction",
    "Projection",
    "ReceptiveField",
    "Rule",
    "Seed",
    "Tap",
    "resolve_device",
]
