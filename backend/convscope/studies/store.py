"""Study files on disk: atomic JSON, Markdown tables, and finding finished studies.

Every study writes one JSON document with `"study": KIND` (`training`, `evolution`,
`ablation`, `probe`), `"version"`, `"finished": true` once complete, a `"title"` and
the files it refers to (`"image"`: a PNG beside it; `"markdown"`: a table beside it),
named relative to the JSON's folder. `find_studies(root)` lists the finished ones
under a folder, which is what the API serves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convscope.fileio import atomic_write, atomic_write_text

STUDY_KINDS = ("training", "evolution", "ablation", "probe")
FORMAT_VERSION = 1
MAX_DEPTH = 4  # folders below the studies root that are searched
MAX_JSON_BYTES = 20_000_000


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    with atomic_write(path, "w") as file:
        json.dump(data, file, indent=1, allow_nan=False)
        file.write("\n")


def write_text(path: str | Path, text: str) -> None:
    atomic_write_text(path, text)


def mean_std(values: Sequence[float]) -> dict[str, float | int]:
    """{"mean", "std", "n"}: the sample standard deviation (0 for a single value)."""
    n = len(values)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def pct(stat: dict[str, Any] | None, *, error: bool = False) -> str:
    """A mean ± std of fractions as a percentage ("97.2 ± 0.4"); `error` gives 100 − accuracy."""
    if not stat or stat.get("mean") is None:
        return "–"
    mean = float(stat["mean"])
    if math.isnan(mean):
        return "–"
    value = 100.0 * (1.0 - mean if error else mean)
    if int(stat.get("n", 1)) > 1:
        return f"{value:.1f} ± {100.0 * float(stat['std']):.1f}"
    return f"{value:.1f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub Markdown table; `align` is one char per column: l, r or c."""
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    spec = align or "l" + "r" * (len(header) - 1)
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(marks[a] for a in spec) + " |",
    ]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class StudyFile:
    """A finished study found on disk."""

    id: str
    kind: str
    path: Path  # the JSON document
    title: str
    modified: float

    def load(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.path.read_text())
        return data

    def related(self, name: str) -> Path | None:
        """A file the study names (e.g. its montage PNG), only if it sits inside its folder."""
        try:
            data = self.load()
        except (OSError, ValueError):
            return None
        relative = data.get(name)
        if not isinstance(relative, str) or not relative:
            return None
        folder = self.path.parent.resolve()
        candidate = (folder / relative).resolve()
        if folder not in candidate.parents or not candidate.is_file():
            return None
        return candidate


def _walk(root: Path, depth: int = 0) -> Iterator[Path]:
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            if depth < MAX_DEPTH:
                yield from _walk(entry, depth + 1)
        elif entry.suffix == ".json" and entry.is_file():
            yield entry


def study_id(root: Path, path: Path) -> str:
    """The study's id: its JSON's path under the root, without `.json`, `/` written as `~`."""
    return path.relative_to(root).with_suffix("").as_posix().replace("/", "~")


def read_study_header(path: Path) -> dict[str, Any] | None:
    """The document when it is a finished study, else None (never raises on bad files)."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("study") not in STUDY_KINDS or data.get("finished") is not True:
        return None
    return data


def find_studies(root: str | Path | None) -> list[StudyFile]:
    """Every finished study under `root` (newest first)."""
    if root is None:
        return []
    base = Path(root)
    if not base.is_dir():
        return []
    found = []
    for path in _walk(base):
        data = read_study_header(path)
        if data is None:
            continue
        found.append(
            StudyFile(
                id=study_id(base, path),
                kind=str(data["study"]),
                path=path,
                title=str(data.get("title") or path.stem),
                modified=path.stat().st_mtime,
            )
        )
    # an ablation's own training runs (its runs/ folder) are part of it, not studies of their own
    ablations = [study.path.parent for study in found if study.kind == "ablation"]
    found = [
        study
        for study in found
        if study.kind != "training" or not any(folder in study.path.parents for folder in ablations)
    ]
    found.sort(key=lambda study: (-study.modified, study.id))
    return found
