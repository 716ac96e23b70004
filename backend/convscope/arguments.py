"""Argparse glue shared by the commands: a flag's destination is the keyword it feeds."""

from __future__ import annotations

import argparse
from typing import Any


def pick(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """`{name: args.name}` for each name: the keyword arguments of a library call, from the flags."""
    return {name: getattr(args, name) for name in names}
