"""Inspection of a model, deconvnet projections and their rendering (no web code here)."""

from convscope.engine.engine import Engine, LayerInfo, Prediction, Projection, Seed, resolve_device
from convscope.engine.receptive_field import ReceptiveField
from convscope.engine.rules import RULES, Rule

__all__ = [
    "RULES",
    "Engine",
    "LayerInfo",
    "Prediction",
    "Projection",
    "ReceptiveField",
    "Rule",
    "Seed",
    "resolve_device",
]
