"""The on-disk store of a scan: a directory with `manifest.json`, `scan.sqlite` and `cache/`.

- `manifest.json`: what was scanned and how (model and a fingerprint of its weights,
  layers with their receptive fields, k, the image source with a digest of its file
  list, settings such as the JPEG decoder) and how far the scan got, with the files it
  skipped and why (`skipped`). Rewritten atomically (temporary file + `os.replace`)
  after every checkpoint.
- `scan.sqlite` (standard-library SQLite): the image list (path, content hash once
  read, why a file was skipped), the running top-k of each layer as of the last
  checkpoint, and once finished the table `topk(layer, channel, rank, value, image, y, x)`.
  A checkpoint is one transaction: the images it covers and the top-k over exactly
  those images are committed together, so `--resume` starts from the next batch and
  never counts an image twice.
- `cache/`: rendered crops and projections (see `convscope.scan.render`).

Only one process writes a store at a time (an exclusive `flock` on `.lock`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convscope import __version__
from convscope.engine.engine import LayerInfo
from convscope.engine.receptive_field import ReceptiveField
from convscope.errors import ConvscopeError, InvalidRequestError, NotFoundError
from convscope.fileio import atomic_write_bytes
from convscope.scan.topk import Entry, TopK

FORMAT = "convscope-scan/1"
MANIFEST = "manifest.json"
DATABASE = "scan.sqlite"
CACHE = "cache"
LOCK = ".lock"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    idx INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS state (
    layer TEXT PRIMARY KEY,
    channels INTEGER NOT NULL,
    k INTEGER NOT NULL,
    width INTEGER NOT NULL,
    vals BLOB NOT NULL,
    imgs BLOB NOT NULL,
    pos BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS topk (
    layer TEXT NOT NULL,
    channel INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    value REAL NOT NULL,
    image INTEGER NOT NULL,
    y INTEGER NOT NULL,
    x INTEGER NOT NULL,
    PRIMARY KEY (layer, channel, rank)
);
"""


class ScanStoreError(ConvscopeError):
    """A store that cannot be used as asked (different settings, busy, unfinished...)."""

    status_code = 409


@dataclass(frozen=True)
class _LayerRecord:
    """A scanned layer as the manifest stores it (flat keys): the engine's `LayerInfo` on disk."""

    name: str
    kind: str
    channels: int
    height: int
    width: int
    rf_size: float
    rf_stride: float
    rf_offset: float
    rf_global: bool

    @classmethod
    def of(cls, info: LayerInfo) -> _LayerRecord:
        shape = (info.name, info.kind, info.channels, info.height, info.width)
        field_ = info.receptive_field
        return cls(*shape, float(field_.size), float(field_.stride), float(field_.offset), bool(field_.global_))

    def info(self) -> LayerInfo:
        field_ = ReceptiveField(self.rf_size, self.rf_stride, self.rf_offset, self.rf_global)
        return LayerInfo(self.name, self.kind, self.channels, self.height, self.width, field_)


@dataclass(frozen=True)
class ImageSource:
    """The images of a scan: `paths` relative to `root`, or absolute when `root` is None.

    `ids` name the images to users (the relative path, or a sample id)."""

    kind: str  # "folder" or "samples"
    root: str | None
    paths: tuple[str, ...]
    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.ids):
            raise ValueError("one id per image path is needed")

    def file(self, index: int) -> Path:
        path = self.paths[index]
        return Path(path) if self.root is None else Path(self.root) / path

    def digest(self) -> str:
        from convscope.scan.walk import list_digest

        return list_digest(f"{image_id}\t{path}" for image_id, path in zip(self.ids, self.paths, strict=True))


@dataclass(frozen=True)
class ScanConfig:
    """Everything that decides a scan's result: a rerun with an equal config is the same scan."""

    model: str
    weights: str | None
    weights_sha256: str | None
    fingerprint: str
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layers: tuple[LayerInfo, ...]
    top: int
    source_kind: str
    source_root: str | None
    image_count: int
    image_list_sha256: str
    crop_pct: float = 1.0  # see convscope.models.preprocessing
    decoder: str = "pil"  # "pil" (CPU) or "nvjpeg" (GPU): their pixels differ, so it is part of the identity

    def identity(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = [layer["name"] for layer in data["layers"]]
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    def differences(self, other: ScanConfig) -> list[str]:
        mine, theirs = self.identity(), other.identity()
        return [key for key in mine if mine[key] != theirs[key]]


@dataclass
class Progress:
    next_batch: int = 0
    batches: int = 0
    images_done: int = 0
    skipped: int = 0
    seconds: float = 0.0


@dataclass
class ImageRecord:
    index: int
    sha256: str | None = None
    error: str | None = None


MANIFEST_SKIPPED_LIMIT = 10_000  # files listed in manifest.json; scan.sqlite's `images` table has them all


@dataclass
class Manifest:
    status: str
    config: ScanConfig
    batch_size: int
    progress: Progress
    created_at: float
    updated_at: float
    finished_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"image", "id", "reason"} per unreadable file

    def add_skipped(self, index: int, image_id: str, reason: str) -> None:
        if len(self.skipped) < MANIFEST_SKIPPED_LIMIT:
            self.skipped.append({"image": index, "id": image_id, "reason": reason})

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "convscope_version": __version__,
            "status": self.status,
            "model": {
                "name": self.config.model,
                "weights": self.config.weights,
                "weights_sha256": self.config.weights_sha256,
                "fingerprint": self.config.fingerprint,
                "input_size": self.config.input_size,
                "mean": list(self.config.mean),
                "std": list(self.config.std),
                "crop_pct": self.config.crop_pct,
            },
            "layers": [asdict(_LayerRecord.of(info)) for info in self.config.layers],
            "top": self.config.top,
            "images": {
                "source": self.config.source_kind,
                "root": self.config.source_root,
                "count": self.config.image_count,
                "list_sha256": self.config.image_list_sha256,
                "list": f"{DATABASE}:images",
            },
            "settings": {"batch_size": self.batch_size, "decoder": self.config.decoder},
            "progress": asdict(self.progress),
            "skipped": self.skipped,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise ScanStoreError(f"not a convscope scan manifest (format {data.get('format')!r}, expected {FORMAT})")
        model, images = data["model"], data["images"]
        config = ScanConfig(
            model=model["name"],
            weights=model["weights"],
            weights_sha256=model["weights_sha256"],
            fingerprint=model["fingerprint"],
            input_size=int(model["input_size"]),
            mean=tuple(model["mean"]),
            std=tuple(model["std"]),
            layers=tuple(_LayerRecord(**layer).info() for layer in data["layers"]),
            top=int(data["top"]),
            source_kind=images["source"],
            source_root=images["root"],
            image_count=int(images["count"]),
            image_list_sha256=images["list_sha256"],
            crop_pct=float(model.get("crop_pct", 1.0)),  # manifests from before crop_pct: 1
            decoder=str(data["settings"].get("decoder", "pil")),  # manifests from before the choice: Pillow
        )
        return cls(
            status=data["status"],
            config=config,
            batch_size=int(data["settings"]["batch_size"]),
            progress=Progress(**data["progress"]),
            created_at=float(data["created_at"]),
            updated_at=float(data["updated_at"]),
            finished_at=data.get("finished_at"),
            extra=dict(data.get("extra") or {}),
            skipped=list(data.get("skipped") or []),
        )

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def layer(self, name: str) -> LayerInfo:
        for layer in self.config.layers:
            if layer.name == name:
                return layer
        scanned = ", ".join(layer.name for layer in self.config.layers)
        raise NotFoundError(f"layer {name!r} is not in this scan (scanned: {scanned})")


def _blob(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().numpy().tobytes()


def _tensor(blob: bytes, dtype: np.dtype[Any], shape: tuple[int, int]) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(blob, dtype=dtype).reshape(shape).copy())


class ScanLock:
    """An exclusive advisory lock on a store directory (`flock`; a no-op where unsupported)."""

    def __init__(self, directory: Path, wait: bool = False, timeout: float = 600.0) -> None:
        self.path = directory / LOCK
        self.wait = wait
        self.timeout = timeout
        self._handle: Any = None

    def __enter__(self) -> ScanLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+b")  # held until __exit__
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if not self.wait or time.monotonic() > deadline:
                    handle.close()
                    raise ScanStoreError(f"another scan is writing {self.path.parent}; wait for it to finish") from None
                time.sleep(0.2)
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()  # releases the lock
            self._handle = None


class ScanStore:
    """One scan directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    # ---- paths -------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    @property
    def database_path(self) -> Path:
        return self.directory / DATABASE

    @property
    def cache_dir(self) -> Path:
        return self.directory / CACHE

    def exists(self) -> bool:
        return self.manifest_path.is_file() and self.database_path.is_file()

    def lock(self, wait: bool = False) -> ScanLock:
        return ScanLock(self.directory, wait=wait)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.database_path, timeout=60)
        try:
            yield connection
        finally:
            connection.close()

    # ---- manifest ------------------------------------------------------------------------
    def manifest(self) -> Manifest:
        try:
            data = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise NotFoundError(f"no scan at {self.directory} (no {MANIFEST})") from None
        except (OSError, ValueError) as exc:
            raise ScanStoreError(f"cannot read {self.manifest_path}: {exc}") from None
        try:
            return Manifest.from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ScanStoreError(f"{self.manifest_path} is not a valid scan manifest: {exc}") from None

    def write_manifest(self, manifest: Manifest) -> None:
        manifest.updated_at = time.time()
        text = json.dumps(manifest.to_json(), indent=2) + "\n"
        atomic_write_bytes(self.manifest_path, text.encode())

    # ---- writing -------------------------------------------------------------------------
    def create(
        self, config: ScanConfig, source: ImageSource, batch_size: int, extra: dict[str, Any] | None = None
    ) -> Manifest:
        """A new, empty scan (replaces a partial directory without a manifest)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in (self.database_path, self.directory / f"{DATABASE}-journal"):
            if leftover.exists():
                leftover.unlink()
        with self._connect() as db, db:
            db.executescript(SCHEMA)
            db.executemany(
                "INSERT INTO images (idx, id, path) VALUES (?, ?, ?)",
                (
                    (index, image_id, path)
                    for index, (image_id, path) in enumerate(zip(source.ids, source.paths, strict=True))
                ),
            )
            for layer in config.layers:
                empty = TopK.empty(layer.channels, config.top, layer.width)
                db.execute(
                    "INSERT INTO state VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        layer.name,
                        layer.channels,
                        config.top,
                        layer.width,
                        _blob(empty.values),
                        _blob(empty.images),
                        _blob(empty.positions),
                    ),
                )
            db.execute("INSERT INTO meta VALUES ('progress', ?)", (json.dumps(asdict(Progress())),))
        now = time.time()
        manifest = Manifest("running", config, batch_size, Progress(), now, now, extra=dict(extra or {}))
        self.write_manifest(manifest)
        return manifest

    def progress(self) -> Progress:
        with self._connect() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'progress'").fetchone()
        return Progress(**json.loads(row[0])) if row else Progress()

    def load_state(self) -> dict[str, TopK]:
        """The top-k of every layer as of the last checkpoint."""
        states = {}
        with self._connect() as db:
            for layer, channels, k, width, vals, imgs, pos in db.execute("SELECT * FROM state"):
                shape = (channels, k)
                states[layer] = TopK(
                    k,
                    width,
                    _tensor(vals, np.dtype(np.float32), shape),
                    _tensor(imgs, np.dtype(np.int64), shape),
                    _tensor(pos, np.dtype(np.int64), shape),
                )
        return states

    def checkpoint(
        self, manifest: Manifest, progress: Progress, states: dict[str, TopK], records: Sequence[ImageRecord]
    ) -> None:
        """Commit the images read since the last checkpoint and the top-k over all images so far."""
        with self._connect() as db, db:
            db.executemany(
                "UPDATE images SET sha256 = ?, error = ? WHERE idx = ?",
                ((record.sha256, record.error, record.index) for record in records),
            )
            for name, state in states.items():
                db.execute(
                    "UPDATE state SET vals = ?, imgs = ?, pos = ? WHERE layer = ?",
                    (_blob(state.values), _blob(state.images), _blob(state.positions), name),
                )
            db.execute("UPDATE meta SET value = ? WHERE key = 'progress'", (json.dumps(asdict(progress)),))
        manifest.progress = progress
        self.write_manifest(manifest)

    def finish(self, manifest: Manifest, states: dict[str, TopK]) -> None:
        """Write the final `topk` table and mark the scan complete."""
        with self._connect() as db, db:
            db.execute("DELETE FROM topk")
            for name, state in states.items():
                rows = []
                for channel in range(state.channels):
                    for rank, entry in enumerate(state.entries(channel)):
                        rows.append((name, channel, rank, entry.value, entry.image, entry.y, entry.x))
                db.executemany("INSERT INTO topk VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('status', 'complete')")
        manifest.status = "complete"
        manifest.finished_at = time.time()
        self.write_manifest(manifest)

    # ---- reading -------------------------------------------------------------------------
    def top(self, layer: str, channel: int) -> list[Entry]:
        """The finished top-k of one channel, best first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT value, image, y, x FROM topk WHERE layer = ? AND channel = ? ORDER BY rank",
                (layer, channel),
            ).fetchall()
        return [Entry(float(v), int(i), int(y), int(x)) for v, i, y, x in rows]

    def all_top(self, layer: str) -> dict[int, list[Entry]]:
        out: dict[int, list[Entry]] = {}
        with self._connect() as db:
            for channel, value, image, y, x in db.execute(
                "SELECT channel, value, image, y, x FROM topk WHERE layer = ? ORDER BY channel, rank", (layer,)
            ):
                out.setdefault(int(channel), []).append(Entry(float(value), int(image), int(y), int(x)))
        return out

    def image(self, index: int) -> tuple[str, str, str | None, str | None]:
        """(id, path, sha256, error) of an image of the scan."""
        with self._connect() as db:
            row = db.execute("SELECT id, path, sha256, error FROM images WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise NotFoundError(f"image {index} is not in this scan")
        return row[0], row[1], row[2], row[3]

    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of every file the scan could not read."""
        with self._connect() as db:
            rows = db.execute("SELECT path, error FROM images WHERE error IS NOT NULL ORDER BY idx").fetchall()
        return [(str(path), str(error)) for path, error in rows]


def check_layer_and_channel(manifest: Manifest, layer: str, channel: int) -> LayerInfo:
    spec = manifest.layer(layer)
    if not 0 <= channel < spec.channels:
        raise InvalidRequestError(f"channel {channel} is out of range for layer {layer!r} (0..{spec.channels - 1})")
    return spec
