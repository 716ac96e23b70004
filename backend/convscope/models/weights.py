"""Loading state dicts from files, safely (`weights_only=True`) and with clear errors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from convscope.errors import WeightsUnavailableError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    file = Path(path)
    if not file.is_file():
        raise WeightsUnavailableError(f"weights file not found: {file}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle/zip
        raise WeightsUnavailableError(f"cannot read weights from {file}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"{file} does not hold a state dict of tensors")
    return state


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Strictly load a state dict file into `module`; mismatches become one clear error."""
    state = read_state_dict(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise WeightsUnavailableError(f"weights in {path} do not fit the model: {detail}") from None
