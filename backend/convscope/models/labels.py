"""Class names: ImageNet's from torchvision's metadata (offline), or numbered ones."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    from torchvision.models import AlexNet_Weights

    return tuple(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def numbered_labels(count: int) -> list[str]:
    return [f"class {i}" for i in range(count)]


def labels_for(num_classes: int) -> list[str]:
    """ImageNet names for a 1000-way classifier, numbered names otherwise."""
    if num_classes == 1000:
        return list(imagenet_labels())
    return numbered_labels(num_classes)
