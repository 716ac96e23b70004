"""The bundled real photos: scikit-image's sample data and matplotlib's Grace Hopper."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from convscope.errors import NotFoundError


@dataclass(frozen=True)
class Sample:
    id: str
    name: str
    path: Path


def _skimage_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def _matplotlib_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data"


_SAMPLES: tuple[tuple[str, str, str, str], ...] = (
    ("chelsea", "Chelsea the cat", "skimage", "chelsea.png"),
    ("coffee", "Coffee cup", "skimage", "coffee.png"),
    ("astronaut", "Astronaut Eileen Collins", "skimage", "astronaut.png"),
    ("grace_hopper", "Grace Hopper", "matplotlib", "grace_hopper.jpg"),
    ("rocket", "Rocket on the launch pad", "skimage", "rocket.jpg"),
    ("motorcycle", "Motorcycle", "skimage", "motorcycle_left.png"),
    ("hubble", "Hubble deep field", "skimage", "hubble_deep_field.jpg"),
    ("camera", "Cameraman", "skimage", "camera.png"),
    ("grass", "Grass texture", "skimage", "grass.png"),
    ("brick", "Brick wall texture", "skimage", "brick.png"),
    ("gravel", "Gravel texture", "skimage", "gravel.png"),
)


@lru_cache(maxsize=1)
def list_samples() -> tuple[Sample, ...]:
    """Every bundled photo present in the installed packages."""
    roots = {"skimage": _skimage_dir(), "matplotlib": _matplotlib_dir()}
    found = []
    for sample_id, name, source, filename in _SAMPLES:
        path = roots[source] / filename
        if path.is_file():
            found.append(Sample(sample_id, name, path))
    return tuple(found)


def get_sample(sample_id: str) -> Sample:
    for sample in list_samples():
        if sample.id == sample_id:
            return sample
    raise NotFoundError(f"unknown sample image {sample_id!r}")


FACE_PREFIX = "lfw:"
FACE_COUNT = 100  # lfw_subset: 100 faces, then 100 non-faces


def is_face_id(text: str) -> bool:
    return text.startswith(FACE_PREFIX)


@lru_cache(maxsize=128)
def load_face(image_id: str) -> Image.Image:
    """`lfw:N`: face N (0-99) of scikit-image's aligned 25×25 `lfw_subset`, as an RGB image.

    Not listed among the samples (they are tiny and would crowd the dashboard); the
    correspondence study's `--parts faces` annotation uses them."""
    index_text = image_id[len(FACE_PREFIX) :]
    if not index_text.isdigit() or not 0 <= int(index_text) < FACE_COUNT:
        raise NotFoundError(f"unknown face {image_id!r}: use lfw:0 … lfw:{FACE_COUNT - 1}")
    import numpy as np
    from skimage.data import lfw_subset

    pixels = (lfw_subset()[int(index_text)] * 255).round().astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB")


@lru_cache(maxsize=32)
def load_sample(sample_id: str) -> Image.Image:
    """The sample photo as an RGB image (cached; treat as read-only)."""
    with Image.open(get_sample(sample_id).path) as image:
        return image.convert("RGB")
