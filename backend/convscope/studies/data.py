"""Labelled image sets for the studies, and their fixed, seeded splits.

Two real datasets work offline out of the box:

- `digits`: scikit-learn's handwritten digits (1,797 8×8 images, 10 classes), drawn
  white on black as RGB; models see them upsampled to their input size;
- `faces`: scikit-image's `lfw_subset` (100 25×25 faces, 100 non-faces), 2 classes;

and any ImageFolder-style directory (one sub-folder per class) works too.

Images are kept at their own resolution; `tensor()` and `batches()` turn them into
model inputs with the preprocessing contract (shorter side resized to S, centre
crop S×S, normalised), so a study sees exactly what the engine would see.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convscope.errors import InvalidRequestError, NotFoundError
from convscope.images import load_image_file, resize_and_crop

BUILTIN_DATASETS = ("digits", "faces")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_SIDE = 512  # ImageFolder images are shrunk to at most this shorter side when read


@dataclass
class ImageSet:
    """Images (RGB, own size) with integer labels and class names."""

    name: str
    images: list[Image.Image]
    labels: np.ndarray  # int64, one per image
    classes: list[str]
    flip: bool = True  # whether a horizontal flip keeps the class (not for digits)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        index = [int(i) for i in indices]
        return ImageSet(self.name, [self.images[i] for i in index], self.labels[index], self.classes, self.flip)

    def displays(self, size: int) -> np.ndarray:
        """N×S×S×3 uint8: every image as the model sees it before normalisation."""
        out = np.empty((len(self), size, size, 3), dtype=np.uint8)
        for i, image in enumerate(self.images):
            out[i] = np.asarray(resize_and_crop(image, size), dtype=np.uint8)
        return out

    def uint8_tensor(self, size: int) -> torch.Tensor:
        """N×3×S×S uint8 (compact: normalise batches with `normalise_batch`)."""
        return torch.from_numpy(self.displays(size)).permute(0, 3, 1, 2).contiguous()

    def tensor(self, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        """N×3×S×S float32, normalised with mean/std (the engine's preprocessing)."""
        return normalise_batch(self.uint8_tensor(size), mean, std)

    def batches(
        self, size: int, mean: Sequence[float], std: Sequence[float], batch_size: int = 64
    ) -> Iterator[torch.Tensor]:
        """Normalised model inputs, `batch_size` at a time (bounded memory at any S)."""
        for start in range(0, len(self), batch_size):
            yield self.subset(range(start, min(start + batch_size, len(self)))).tensor(size, mean, std)

    def is_gray(self, sample: int = 64) -> bool:
        """Whether the images are grey (R = G = B), judged on up to `sample` of them."""
        step = max(1, len(self) // sample)
        for image in self.images[::step]:
            array = np.asarray(image.convert("RGB"), dtype=np.int16)
            if np.any(array[..., 0] != array[..., 1]) or np.any(array[..., 1] != array[..., 2]):
                return False
        return True

    def describe(self) -> dict[str, object]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {"name": self.name, "images": len(self), "classes": self.classes, "per_class": counts.tolist()}


def normalise_batch(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """N×3×S×S uint8 -> float32 normalised (the same arithmetic as `convscope.images.normalise`)."""
    mean_t = torch.tensor(tuple(mean), dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.tensor(tuple(std), dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - mean_t) / std_t


def _gray_to_rgb(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)), mode="L").convert("RGB")


@lru_cache(maxsize=1)
def _digits() -> tuple[tuple[Image.Image, ...], np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images / 16.0 * 255.0)
    return tuple(_gray_to_rgb(image) for image in images), bunch.target.astype(np.int64)


@lru_cache(maxsize=1)
def _faces() -> tuple[tuple[Image.Image, ...], np.ndarray]:
    from skimage.data import lfw_subset

    images = lfw_subset()  # 200×25×25 in [0, 1]: 100 faces, then 100 non-faces
    labels = np.array([0] * 100 + [1] * (len(images) - 100), dtype=np.int64)
    return tuple(_gray_to_rgb(np.rint(image * 255.0)) for image in images), labels


def _image_folder(root: Path) -> ImageSet:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise InvalidRequestError(f"{root} needs at least two class sub-folders (ImageFolder layout)")
    images: list[Image.Image] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for file in files:
            image = load_image_file(file)
            if min(image.size) > MAX_SIDE:
                scale = MAX_SIDE / min(image.size)
                image = image.resize(
                    (round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR
                )
            images.append(image)
            labels.append(index)
    counts = np.bincount(np.array(labels, dtype=np.int64), minlength=len(classes))
    if counts.min() < 2:
        empty = [classes[i] for i in np.flatnonzero(counts < 2)]
        raise InvalidRequestError(f"every class needs at least two images; too few in {', '.join(empty)}")
    return ImageSet(root.name, images, np.array(labels, dtype=np.int64), classes, flip=True)


def load_dataset(spec: str) -> ImageSet:
    """`digits`, `faces` or an ImageFolder directory."""
    if spec == "digits":
        digit_images, digit_labels = _digits()
        return ImageSet("digits", list(digit_images), digit_labels.copy(), [str(d) for d in range(10)], flip=False)
    if spec == "faces":
        face_images, face_labels = _faces()
        return ImageSet("faces", list(face_images), face_labels.copy(), ["face", "non-face"], flip=True)
    root = Path(spec)
    if not root.is_dir():
        raise NotFoundError(f"no dataset {spec!r}: use digits, faces or an ImageFolder directory")
    return _image_folder(root)


def dataset_id(spec: str) -> str:
    """A short name for a dataset spec (the folder's name for a directory)."""
    return spec if spec in BUILTIN_DATASETS else Path(spec).name or spec


def split_indices(labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, stratified train/validation split (sorted indices), the same for the same seed."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise InvalidRequestError(f"the validation fraction must be between 0 and 1, not {val_fraction}")
    index = np.arange(len(labels))
    train, val = train_test_split(index, test_size=val_fraction, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(val)


def stratified_subset(labels: np.ndarray, count: int | None, seed: int = 0) -> np.ndarray:
    """At most `count` indices with the class proportions kept (all of them when None)."""
    index = np.arange(len(labels))
    if count is None or count >= len(labels):
        return index
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(index, train_size=count, random_state=seed, stratify=labels)
    return np.sort(keep)


def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (shuffled with the seed): [(train indices, test indices)] * folds."""
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(labels).min())
    if folds < 2 or folds > smallest:
        raise InvalidRequestError(f"{folds} folds need 2 ≤ folds ≤ {smallest} (the smallest class's size)")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(train, test) for train, test in splitter.split(np.zeros(len(labels)), labels)]
