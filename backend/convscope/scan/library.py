"""A directory of scans for a server: `<scan_dir>/<model>/<scan id>/`, and the folders it may scan.

No web code here: the REST routes (`convscope.api.routes.scans`) use it, and so can
Python users. Scan ids and folder names come from clients, so both are checked:
ids are short slugs, and folders must be inside one of the configured roots
(`safe_subfolder`: no absolute paths, no `..`, no symbolic links leading out).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from convscope.engine import Engine
from convscope.errors import ConvscopeError, InvalidRequestError, NotFoundError
from convscope.scan.render import ScanRenderer
from convscope.scan.scanner import model_fingerprint
from convscope.scan.store import Manifest, ScanStore, ScanStoreError
from convscope.scan.walk import safe_subfolder

SAMPLES_SCAN = "samples"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


class ForbiddenError(ConvscopeError):
    """A folder the server is not configured to scan."""

    status_code = 403


def slug(text: str, limit: int = 60) -> str:
    """A readable file-system-safe name; altered names get a short hash so they stay unique."""
    cleaned = _SLUG.sub("-", text).strip("-.")[:limit] or "x"
    if cleaned != text:
        cleaned = f"{cleaned}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return cleaned


def normalise_folder(folder: str) -> str:
    """`photos/./small/` and `photos//small` -> `photos/small`: one name, so one store, per folder."""
    parts = folder.strip().replace("\\", "/").split("/")
    return "/".join(part for part in parts if part not in ("", "."))


def check_scan_id(scan_id: str) -> str:
    if not _ID.match(scan_id):
        raise NotFoundError(f"unknown scan {scan_id!r}")
    return scan_id


@dataclass(frozen=True)
class ScanEntry:
    id: str
    model: str
    store: ScanStore
    manifest: Manifest


class ScanLibrary:
    def __init__(self, directory: str | Path, roots: Sequence[str | Path] = ()) -> None:
        self.directory = Path(directory)
        self.roots = {Path(root).name: Path(root) for root in roots}
        self._renderers: dict[tuple[str, str, float, bool], ScanRenderer] = {}
        self._fingerprints: dict[int, tuple[Engine, str]] = {}
        self._lock = threading.Lock()

    # ---- where scans live -------------------------------------------------------------------
    def model_dir(self, model: str) -> Path:
        return self.directory / slug(model)

    def store(self, model: str, scan_id: str) -> ScanStore:
        return ScanStore(self.model_dir(model) / check_scan_id(scan_id))

    def get(self, model: str, scan_id: str) -> ScanEntry:
        store = self.store(model, scan_id)
        if not store.manifest_path.is_file():
            raise NotFoundError(f"model {model!r} has no scan {scan_id!r}")
        manifest = store.manifest()
        if manifest.config.model != model:
            raise NotFoundError(f"model {model!r} has no scan {scan_id!r}")
        return ScanEntry(scan_id, model, store, manifest)

    def list(self, model: str) -> list[ScanEntry]:
        """Every readable scan of a model: the start-up sample scan, other sample scans, then
        folder scans, each by creation time."""
        folder = self.model_dir(model)
        if not folder.is_dir():
            return []
        entries = []
        for child in sorted(folder.iterdir()):
            if not child.is_dir() or not _ID.match(child.name):
                continue
            try:
                entries.append(self.get(model, child.name))
            except ConvscopeError:
                continue  # half-created or foreign directories are not listed
        entries.sort(
            key=lambda e: (e.id != SAMPLES_SCAN, not e.id.startswith(SAMPLES_SCAN), e.manifest.created_at, e.id)
        )
        return entries

    # ---- weights -------------------------------------------------------------------------------
    def fingerprint(self, engine: Engine) -> str:
        with self._lock:
            known = self._fingerprints.get(id(engine))
            if known is not None and known[0] is engine:
                return known[1]
        value = model_fingerprint(engine.model.module)
        with self._lock:
            self._fingerprints[id(engine)] = (engine, value)
        return value

    def matches(self, engine: Engine, manifest: Manifest) -> bool:
        return manifest.config.input_size == engine.input_size and manifest.config.fingerprint == self.fingerprint(
            engine
        )

    def renderer(self, entry: ScanEntry, engine: Engine) -> ScanRenderer:
        """A (cached) renderer of a finished scan. Its projections need the scan's weights:
        with other weights they fail with the reason (crops still work)."""
        if not entry.manifest.complete:
            raise ScanStoreError(f"scan {entry.id!r} has not finished yet")
        verified = self.matches(engine, entry.manifest)
        key = (entry.model, entry.id, entry.manifest.updated_at, verified)
        with self._lock:
            renderer = self._renderers.get(key)
            if renderer is None:
                renderer = ScanRenderer(entry.store, engine=engine, verified=verified)
                self._renderers = {k: v for k, v in self._renderers.items() if k[:2] != key[:2]}
                self._renderers[key] = renderer
        return renderer

    # ---- folders clients may scan -----------------------------------------------------------------
    def resolve_folder(self, folder: str) -> Path:
        """`<root name>/<relative path>` -> the real folder, only inside a configured root."""
        if not self.roots:
            raise ForbiddenError("this server has no scan roots configured (CONVSCOPE_SCAN_ROOTS)")
        text = folder.strip().replace("\\", "/").strip("/") if not folder.startswith("/") else folder
        if text.startswith("/"):
            raise ForbiddenError("give the folder as <root>/<path inside it>, not an absolute path")
        name, _, rest = text.partition("/")
        root = self.roots.get(name)
        if root is None:
            known = ", ".join(sorted(self.roots))
            raise ForbiddenError(f"{name!r} is not a scan root of this server (roots: {known})")
        try:
            return safe_subfolder(root, rest)
        except InvalidRequestError as exc:
            raise ForbiddenError(str(exc)) from None
        except OSError as exc:  # e.g. a name component over 255 bytes
            raise InvalidRequestError(f"folder {folder!r} cannot be used: {exc.strerror or exc}") from None

    def samples_scan_id(self, layers: Sequence[str] | None, top: int) -> str:
        """`samples` for the default layers and k = 9 (the start-up scan), else `samples-<hash>`."""
        if not layers and top == 9:
            return SAMPLES_SCAN
        key = repr((list(layers) if layers else None, top))
        return f"{SAMPLES_SCAN}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"

    def folder_scan_id(self, folder: str, layers: Sequence[str] | None, top: int) -> str:
        name = normalise_folder(folder)
        key = repr((name, list(layers) if layers else None, top))
        return f"{slug(name.replace('/', '--'), 40)}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
