"""Correspondence analysis (paper Fig. 8 and Table 1).

Does the network relate the same object part across different images? For each
named part (left eye, right eye, nose…) every image has a box. The part is
occluded with the model's mean colour (zero after normalisation, as in the
occlusion study) in every image, and at a layer l the change of the feature
vector is ε_i = x_i − x̃_i. If the part means the same thing to the network in
every image, the ε_i point the same way, and

    Δ_l = mean over pairs i ≠ j of H(sign ε_i, sign ε_j)

— H the normalised Hamming distance, the fraction of components whose signs
differ — is low. The baseline occludes random boxes of the same sizes (several
seeded draws, each box wholly inside the image); the paper finds the eyes and
nose lower than random at layer 5, and the gap smaller at layer 7.

Boxes are `[x, y, width, height]` in pixels of the S×S model input (docs/architecture.md "Preprocessing").
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from convscope.analysis.features import (
    extract_features,
    resolve_feature,
)
from convscope.errors import InvalidRequestError
from convscope.tasks import Task, checkpoint

if TYPE_CHECKING:
    from convscope.engine import Engine
    from convscope.images import PreparedImage

Box = tuple[int, int, int, int]  # x, y, width, height
DEMO_ANNOTATION = Path(__file__).parent / "data" / "faces.json"
FACES_ANNOTATION = Path(__file__).parent / "data" / "lfw_faces.json"
BUNDLED_ANNOTATIONS = {"demo": DEMO_ANNOTATION, "faces": FACES_ANNOTATION}
MAX_IMAGES = 16
MAX_PARTS = 16
MAX_DRAWS = 100
MAX_LAYERS = 4
RANDOM = "random"


# ---- Δ ----------------------------------------------------------------------------------------
def hamming_matrix(eps: np.ndarray | torch.Tensor) -> np.ndarray:
    """N×N normalised Hamming distances between the sign vectors of the rows of `eps` (N×D)."""
    array = eps.detach().cpu().numpy() if isinstance(eps, torch.Tensor) else np.asarray(eps)
    signs = np.sign(array.reshape(len(array), -1))
    count = len(signs)
    matrix = np.zeros((count, count), dtype=np.float64)
    for i, j in combinations(range(count), 2):
        matrix[i, j] = matrix[j, i] = float(np.mean(signs[i] != signs[j]))
    return matrix


def sign_hamming_delta(eps: np.ndarray | torch.Tensor) -> float:
    """Δ: the mean over pairs i ≠ j of the normalised Hamming distance of sign(ε_i) and sign(ε_j)."""
    count = len(eps)
    if count < 2:
        raise InvalidRequestError("Δ needs at least two images (one pair)")
    matrix = hamming_matrix(eps)
    return float(matrix.sum() / (count * (count - 1)))


def nonzero_sign_delta(eps: np.ndarray | torch.Tensor) -> float:
    """Δ over the components that changed in both images of a pair (ε_i ≠ 0 and ε_j ≠ 0).

    Plain Δ counts a component that moved in one image and not at all in the other (common
    in rectified or pooled layers, where ε is exactly zero wherever a unit stays off) as a
    sign difference; this variant asks only whether the components that did move moved the
    same way. NaN when no pair shares a changed component."""
    array = eps.detach().cpu().numpy() if isinstance(eps, torch.Tensor) else np.asarray(eps)
    signs = np.sign(array.reshape(len(array), -1))
    if len(signs) < 2:
        raise InvalidRequestError("Δ needs at least two images (one pair)")
    values = []
    for i, j in combinations(range(len(signs)), 2):
        both = (signs[i] != 0) & (signs[j] != 0)
        if both.any():
            values.append(float(np.mean(signs[i][both] != signs[j][both])))
    return float(np.mean(values)) if values else float("nan")


def random_box_p_value(observed: float, random_values: Sequence[float]) -> float:
    """One-sided Monte Carlo p-value that a part's Δ is this low by chance.

    The null hypothesis: occluding the part is no different from occluding a random box of
    the same sizes. With D random draws, p = (1 + #{draws with Δ ≤ observed}) / (1 + D)
    (Davison & Hinkley's +1 rule, so p is never 0 and is exact for exchangeable draws). The
    smallest p D draws can give is 1 / (1 + D): 99 draws resolve p down to 0.01."""
    finite = [v for v in random_values if math.isfinite(v)]
    if not math.isfinite(observed) or not finite:
        return float("nan")
    below = sum(1 for v in finite if v <= observed)
    return (1 + below) / (1 + len(finite))


# ---- boxes --------------------------------------------------------------------------------------
def check_box(value: Any, size: int, where: str) -> Box:
    """A box `[x, y, width, height]` wholly inside the S×S image, or InvalidRequestError naming it."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise InvalidRequestError(f"{where}: a box is [x, y, width, height], got {value!r}")
    numbers = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise InvalidRequestError(f"{where}: box values must be numbers, got {value!r}")
        if float(item) != int(item):
            raise InvalidRequestError(f"{where}: box values must be whole pixels, got {value!r}")
        numbers.append(int(item))
    x, y, width, height = numbers
    if width < 1 or height < 1:
        raise InvalidRequestError(f"{where}: box {numbers} must be at least 1×1 pixel")
    if x < 0 or y < 0 or x + width > size or y + height > size:
        raise InvalidRequestError(
            f"{where}: box {numbers} (x, y, width, height) leaves the {size}×{size} image "
            f"(it spans x {x}…{x + width}, y {y}…{y + height})"
        )
    return (x, y, width, height)


def random_boxes(sizes: Sequence[tuple[int, int]], image_size: int, rng: np.random.Generator) -> list[Box]:
    """One box per (width, height), at a uniformly random position wholly inside the image."""
    boxes = []
    for width, height in sizes:
        if not (1 <= width <= image_size and 1 <= height <= image_size):
            raise InvalidRequestError(f"a {width}×{height} box does not fit in the {image_size}×{image_size} image")
        x = int(rng.integers(0, image_size - width + 1))
        y = int(rng.integers(0, image_size - height + 1))
        boxes.append((x, y, width, height))
    return boxes


def draw_random_boxes(
    parts: Mapping[str, Sequence[Box]], image_size: int, draws: int, seed: int
) -> list[dict[str, list[Box]]]:
    """`draws` sets of random boxes: per draw, per part, one box per image of that image's part size."""
    rng = np.random.default_rng(seed)
    return [
        {name: random_boxes([(b[2], b[3]) for b in boxes], image_size, rng) for name, boxes in parts.items()}
        for _ in range(draws)
    ]


def occluded(tensor: torch.Tensor, box: Box) -> torch.Tensor:
    """A copy of a 1×3×S×S normalised input with the box set to the mean colour (zero)."""
    x, y, width, height = box
    copy = tensor.clone()
    copy[..., y : y + height, x : x + width] = 0.0
    return copy


# ---- annotations ------------------------------------------------------------------------------------
def load_annotation(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A parts annotation from a JSON file, a bundled one (`demo`: the sample photos with faces;
    `faces`: 16 aligned LFW faces), or an already-parsed mapping."""
    if isinstance(source, Mapping):
        return dict(source)
    path = BUNDLED_ANNOTATIONS.get(str(source), Path(source))
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        from convscope.errors import NotFoundError

        raise NotFoundError(f"parts file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(f"cannot read parts file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"parts file {path}: expected a JSON object with a 'parts' key")
    return data


def demo_annotation(size: int = 224) -> dict[str, Any]:
    """The bundled eyes-and-nose boxes for the sample photos with faces, scaled to an S×S input."""
    data = load_annotation("demo")
    scale = size / int(data.get("size", 224))
    if scale != 1:
        data["parts"] = {
            part: {image: [round(v * scale) for v in box] for image, box in boxes.items()}
            for part, boxes in data["parts"].items()
        }
        data["size"] = size
    return data


def parse_parts(
    annotation: Mapping[str, Any], images: Sequence[str] | None, size: int
) -> tuple[list[str], dict[str, list[Box]]]:
    """The image names and, per part, one checked box per image, in the input's S×S frame.

    `annotation["parts"][part]` is either a list of boxes in image order or a mapping
    image name -> box; `annotation["size"]` (default: S) is the frame the boxes were
    drawn in, rescaled to S when it differs. `images` (e.g. from the command line)
    overrides `annotation["images"]`.
    """
    raw_parts = annotation.get("parts")
    if not isinstance(raw_parts, Mapping) or not raw_parts:
        raise InvalidRequestError("the annotation needs a non-empty 'parts' object: {part: boxes}")
    if len(raw_parts) > MAX_PARTS:
        raise InvalidRequestError(f"{len(raw_parts)} parts are more than the limit of {MAX_PARTS}")
    names = list(images) if images is not None else annotation.get("images")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidRequestError("name the images: an 'images' list in the annotation, or --images")
    if len(names) < 2:
        raise InvalidRequestError(f"correspondence needs at least two images, got {len(names)}")
    if len(names) > MAX_IMAGES:
        raise InvalidRequestError(f"{len(names)} images are more than the limit of {MAX_IMAGES}")
    if len(set(names)) != len(names):
        raise InvalidRequestError("each image may be named only once")
    frame = annotation.get("size", size)
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 1:
        raise InvalidRequestError(f"'size' must be a positive integer (the frame the boxes are in), got {frame!r}")
    parts: dict[str, list[Box]] = {}
    for part, boxes in raw_parts.items():
        if not isinstance(part, str) or not part or part == RANDOM:
            raise InvalidRequestError(f"part names must be non-empty strings other than {RANDOM!r}, got {part!r}")
        if isinstance(boxes, Mapping):
            missing = [name for name in names if name not in boxes]
            if missing:
                raise InvalidRequestError(f"part {part!r} has no box for image(s) {', '.join(missing)}")
            listed = [boxes[name] for name in names]
        elif isinstance(boxes, list):
            if len(boxes) != len(names):
                raise InvalidRequestError(f"part {part!r} has {len(boxes)} boxes for {len(names)} images")
            listed = boxes
        else:
            raise InvalidRequestError(f"part {part!r}: give a list of boxes or an {{image: box}} object")
        checked = []
        for name, box in zip(names, listed, strict=True):
            where = f"part {part!r} in image {name!r}"
            box = check_box(box, frame, where)
            if frame != size:
                box = check_box([round(v * size / frame) for v in box], size, where)
            checked.append(box)
        parts[part] = checked
    return names, parts


# ---- the study --------------------------------------------------------------------------------------
@dataclass
class RandomSummary:
    """The random boxes' Δ over draws (all None, no values, where no draw gave a finite Δ)."""

    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    values: list[float]


@dataclass
class TableCell:
    mean: float | None  # a part's Δ, or the random boxes' mean over draws
    std: float | None  # random boxes only: the spread over draws
    p_value: float | None  # parts only (see random_box_p_value)


@dataclass
class TableRow:
    occlusion: str  # a part's name, or "random"
    delta: dict[str, TableCell]  # per layer


@dataclass
class CorrespondenceResult:
    images: list[str]
    layers: list[str]
    input_size: int
    parts: dict[str, list[Box]]
    part_delta: dict[str, dict[str, float]]  # part -> layer -> Δ
    random_boxes: list[dict[str, list[Box]]]  # draw -> part -> boxes
    random_delta: list[dict[str, dict[str, float]]]  # draw -> part -> layer -> Δ
    draws: int
    seed: int
    forward_passes: int = 0
    seconds: float = 0.0
    part_delta_nonzero: dict[str, dict[str, float]] = field(default_factory=dict)  # part -> layer -> Δ≠0
    random_delta_nonzero: list[dict[str, dict[str, float]]] = field(default_factory=list)

    @property
    def pairs(self) -> int:
        return len(self.images) * (len(self.images) - 1) // 2

    def p_value(self, part: str, layer: str, nonzero: bool = False) -> float:
        """How often random boxes of this part's sizes gave a Δ as low as the part's (see random_box_p_value)."""
        observed = (self.part_delta_nonzero if nonzero else self.part_delta)[part][layer]
        draws = self.random_delta_nonzero if nonzero else self.random_delta
        return random_box_p_value(observed, [draw[part][layer] for draw in draws])

    def random_summary(self, layer: str, part: str | None = None, nonzero: bool = False) -> RandomSummary:
        """Mean, spread (std over draws), min and max of the random Δ (or Δ≠0); per draw, the mean
        over parts (or one part's same-size boxes)."""
        draws = self.random_delta_nonzero if nonzero else self.random_delta
        if part is None:
            values = [_finite_mean([draw[p][layer] for p in self.parts]) for draw in draws]
        else:
            values = [draw[part][layer] for draw in draws]
        array = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
        if not len(array):  # Δ≠0 where no pair shared a changed component
            return RandomSummary(None, None, None, None, [])
        return RandomSummary(
            mean=float(array.mean()),
            std=float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            min=float(array.min()),
            max=float(array.max()),
            values=[float(v) for v in array],
        )

    def table(self) -> list[TableRow]:
        """Table 1: one row per occluded part (its Δ and p-value) and one for random boxes (mean ± std
        over draws), per layer."""
        rows = [
            TableRow(
                part,
                {
                    layer: TableCell(self.part_delta[part][layer], None, self.p_value(part, layer))
                    for layer in self.layers
                },
            )
            for part in self.parts
        ]
        random_all = {layer: self.random_summary(layer) for layer in self.layers}
        rows.append(
            TableRow(
                RANDOM, {layer: TableCell(random_all[layer].mean, random_all[layer].std, None) for layer in self.layers}
            )
        )
        return rows


def correspondence(
    engine: Engine,
    images: Sequence[tuple[str, PreparedImage]],
    parts: Mapping[str, Sequence[Box]],
    *,
    layers: Sequence[str] | None = None,
    draws: int = 5,
    seed: int = 0,
    batch_size: int = 16,
    task: Task | None = None,
) -> CorrespondenceResult:
    """Δ per part and for random boxes at each layer (default: the last conv layer and the penultimate)."""
    began = time.perf_counter()
    size = engine.input_size
    names = [name for name, _ in images]
    if len(images) < 2:
        raise InvalidRequestError(f"correspondence needs at least two images, got {len(images)}")
    if len(images) > MAX_IMAGES:
        raise InvalidRequestError(f"{len(images)} images are more than the limit of {MAX_IMAGES}")
    if not parts:
        raise InvalidRequestError("no parts to occlude")
    if isinstance(draws, bool) or not isinstance(draws, int) or not 1 <= draws <= MAX_DRAWS:
        raise InvalidRequestError(f"draws must be an integer from 1 to {MAX_DRAWS}, got {draws!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidRequestError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidRequestError(f"batch size must be a positive integer, got {batch_size!r}")
    checked: dict[str, list[Box]] = {}
    for part, boxes in parts.items():
        if len(boxes) != len(images):
            raise InvalidRequestError(f"part {part!r} has {len(boxes)} boxes for {len(images)} images")
        checked[part] = [
            check_box(list(box), size, f"part {part!r} in image {name!r}")
            for name, box in zip(names, boxes, strict=True)
        ]
    wanted = list(layers) if layers else [engine.last_conv_layer(), "penultimate"]
    if len(wanted) > MAX_LAYERS:
        raise InvalidRequestError(f"at most {MAX_LAYERS} layers, got {len(wanted)}")
    specs = list(dict.fromkeys(resolve_feature(engine, name) for name in wanted))
    layer_names = [spec.name for spec in specs]
    random_sets = draw_random_boxes(checked, size, draws, seed)

    # per image: the original, then each part, then each draw's part-sized random boxes
    occluders: list[tuple[str, int | None]] = [(part, None) for part in checked]
    occluders += [(part, draw) for draw in range(draws) for part in checked]
    per_image = 1 + len(occluders)
    total = len(images) * per_image
    done = 0
    # eps[layer][(part, draw)] -> N×D tensor (row i: image i)
    eps: dict[str, dict[tuple[str, int | None], list[torch.Tensor]]] = {
        name: {key: [] for key in occluders} for name in layer_names
    }
    for index, (_, prepared) in enumerate(images):
        tensor = prepared.tensor
        copies = [tensor]
        for part, draw in occluders:
            box = checked[part][index] if draw is None else random_sets[draw][part][index]
            copies.append(occluded(tensor, box))
        rows: dict[str, list[torch.Tensor]] = {name: [] for name in layer_names}
        for begin in range(0, len(copies), batch_size):
            chunk = torch.cat(copies[begin : begin + batch_size])
            _, feats = extract_features(engine, chunk, specs)
            for name in layer_names:
                rows[name].append(feats[name])
            done += len(chunk)
            checkpoint(task, done, total, "correspondence")
        for name in layer_names:
            stacked = torch.cat(rows[name])
            for k, key in enumerate(occluders, start=1):
                eps[name][key].append(stacked[0] - stacked[k])

    def per_part(measure: Callable[[torch.Tensor], float], draw: int | None) -> dict[str, dict[str, float]]:
        """part -> layer -> `measure` of the images' ε, for the part's boxes (draw None) or one random draw."""
        return {part: {name: measure(torch.stack(eps[name][(part, draw)])) for name in layer_names} for part in checked}

    part_delta = per_part(sign_hamming_delta, None)
    random_delta = [per_part(sign_hamming_delta, draw) for draw in range(draws)]
    part_delta_nonzero = per_part(nonzero_sign_delta, None)
    random_delta_nonzero = [per_part(nonzero_sign_delta, draw) for draw in range(draws)]
    return CorrespondenceResult(
        images=names,
        layers=layer_names,
        input_size=size,
        parts=checked,
        part_delta=part_delta,
        random_boxes=random_sets,
        random_delta=random_delta,
        draws=draws,
        seed=seed,
        forward_passes=total,
        seconds=time.perf_counter() - began,
        part_delta_nonzero=part_delta_nonzero,
        random_delta_nonzero=random_delta_nonzero,
    )


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def format_table(result: CorrespondenceResult) -> str:
    """The Table 1-like text: one row per occluded part and one for random boxes (mean ± std over draws)."""
    layers = result.layers
    table = result.table()
    width = max(len("occlusion"), *(len(row.occlusion) for row in table))
    header = f"{'occlusion':{width}s}  " + "  ".join(f"{'Δ ' + layer:>24s}" for layer in layers)
    lines = [header, "-" * len(header)]
    for row in table:
        cells = []
        for layer in layers:
            cell = row.delta[layer]
            text = "—" if cell.mean is None else f"{cell.mean:.4f}"
            text += f" ± {cell.std:.4f}" if cell.std is not None else ""
            if cell.p_value is not None and math.isfinite(cell.p_value):
                text += f" (p {cell.p_value:.2f})"
            cells.append(f"{text:>24s}")
        lines.append(f"{row.occlusion:{width}s}  " + "  ".join(cells))
    lines.append(
        f"n = {len(result.images)} images ({result.pairs} pairs), {result.draws} random draws; "
        "p: share of random same-size boxes with a Δ as low as the part's (one-sided, +1 rule)"
    )
    return "\n".join(lines)
