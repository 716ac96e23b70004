"""A disk cache of feature visualisations: each unit is computed once.

A unit is keyed by (model, weights hash, layer, channel, objective [and position],
steps, size, seed). Its files live in

    <root>/<model>/<weights hash>/<layer>/<objective>/s<size>-n<steps>-r<seed>/<channel>.{npz,png,json}

each written atomically (a temporary file renamed into place), the JSON last: a unit
whose JSON is there is complete. The weights hash is the model's parameter fingerprint
(`convscope.scan.scanner.model_fingerprint`), so other weights never hit old images.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from convscope.engine import Engine
from convscope.featvis.objectives import Target
from convscope.featvis.optimise import LEARNING_RATE, Visualization, run_target
from convscope.scan.library import slug
from convscope.scan.render import layer_dirname
from convscope.scan.store import atomic_write_bytes
from convscope.tasks import Task, checkpoint


@dataclass(frozen=True)
class CacheStats:
    hits: int
    computed: int


class FeatvisCache:
    """Visualisations on disk under `directory` (thread-safe; safe for concurrent processes)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._fingerprints: dict[int, tuple[Engine, str]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.computed = 0

    # ---- keys ------------------------------------------------------------------------------
    def fingerprint(self, engine: Engine) -> str:
        """The weights hash of an engine's model (computed once per engine)."""
        from convscope.scan.scanner import model_fingerprint

        with self._lock:
            known = self._fingerprints.get(id(engine))
            if known is not None and known[0] is engine:
                return known[1]
        with engine.lock:
            value = model_fingerprint(engine.model.module)
        with self._lock:
            self._fingerprints[id(engine)] = (engine, value)
        return value

    def folder(self, engine: Engine, target: Target) -> Path:
        objective: str = target.objective
        if target.position is not None:
            objective += f"-y{target.position[0]}-x{target.position[1]}"
        return (
            self.directory
            / slug(engine.name)
            / self.fingerprint(engine)[:20]
            / layer_dirname(target.layer)
            / objective
            / f"s{target.size}-n{target.steps}-r{target.seed}"
        )

    def path(self, engine: Engine, target: Target, channel: int, suffix: str) -> Path:
        """`.png`, `.npz` or `.json` of one unit."""
        return self.folder(engine, target) / f"{int(channel)}{suffix}"

    # ---- reading and writing ---------------------------------------------------------------
    def has(self, engine: Engine, target: Target, channel: int) -> bool:
        return self.path(engine, target, channel, ".json").is_file()

    def get(self, engine: Engine, target: Target, channel: int) -> Visualization | None:
        """The stored unit, or None when it was never computed (or its files are unreadable)."""
        try:
            meta = json.loads(self.path(engine, target, channel, ".json").read_text())
            with Image.open(self.path(engine, target, channel, ".png")) as png:
                image = np.asarray(png.convert("RGB")).copy()
            with np.load(self.path(engine, target, channel, ".npz")) as raw:
                array = raw["input"].astype(np.float32)
        except (OSError, ValueError, KeyError):
            return None
        with self._lock:
            self.hits += 1
        return Visualization.of_target(
            engine.name,
            target,
            channel,
            image=image,
            input=array,
            value=float(meta["value"]),
            trace=[float(v) for v in meta.get("trace", [])],
            seconds=float(meta.get("seconds", 0.0)),
            cached=True,
        )

    def put(self, engine: Engine, target: Target, vis: Visualization) -> None:
        raw = io.BytesIO()
        np.savez(raw, input=vis.input.astype(np.float32))
        atomic_write_bytes(self.path(engine, target, vis.channel, ".npz"), raw.getvalue())
        atomic_write_bytes(self.path(engine, target, vis.channel, ".png"), vis.png())
        meta = {**vis.to_dict(), "weights": self.fingerprint(engine), "trace": vis.trace}
        atomic_write_bytes(self.path(engine, target, vis.channel, ".json"), json.dumps(meta).encode())

    # ---- computing what is missing ----------------------------------------------------------
    def visualize(
        self,
        engine: Engine,
        target: Target,
        *,
        batch_size: int | None = None,
        lr: float = LEARNING_RATE,
        task: Task | None = None,
    ) -> list[Visualization]:
        """Every channel of `target`, from the cache where stored, the rest computed in
        batches (one optimisation step for each batch) and stored. Progress is in steps."""
        found: dict[int, Visualization] = {}
        for channel in target.channels:
            stored = self.get(engine, target, channel)
            if stored is not None:
                found[channel] = stored
        missing = [c for c in target.channels if c not in found]

        def store(vis: Visualization) -> None:
            self.put(engine, target, vis)
            with self._lock:
                self.computed += 1

        for vis in run_target(
            engine, target, channels=missing, batch_size=batch_size, lr=lr, task=task, on_result=store
        ):
            found[vis.channel] = vis
        if not missing:
            checkpoint(task, 1, 1, "feature visualisation")  # all from the cache: done at once
        return [found[c] for c in target.channels]

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.hits, self.computed)


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/convscope/featvis` (`~/.cache/convscope/featvis`)."""
    import os

    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "convscope" / "featvis"
