"""A bounded in-memory store of uploaded images.

Ids are random and unguessable (`secrets`), and each upload belongs to the client that
sent it (another client's id is answered as unknown); the store holds at most
`max_images` images and `max_bytes` decoded RGB bytes, evicting the least
recently used. Nothing touches the file system.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

from cachetools import LRUCache
from PIL import Image

from convscope.errors import NotFoundError, TooLargeError

ID_BYTES = 16  # 128 random bits -> 22 URL-safe characters


@dataclass(frozen=True)
class StoredImage:
    id: str
    image: Image.Image  # decoded RGB, treat as read-only
    owner: str | None = None  # the client that uploaded it; only it can use the id

    @property
    def nbytes(self) -> int:
        width, height = self.image.size
        return width * height * 3


class ImageStore:
    def __init__(self, max_images: int, max_bytes: int) -> None:
        if max_images < 1 or max_bytes < 1:
            raise ValueError("the store needs room for at least one image")
        self.max_images = max_images
        self.max_bytes = max_bytes
        # least recently used first out, bounded by decoded bytes (and by count in `add`)
        self._items: LRUCache[str, StoredImage] = LRUCache(maxsize=max_bytes, getsizeof=lambda item: item.nbytes)
        self._lock = threading.Lock()

    def add(self, image: Image.Image, owner: str | None = None) -> StoredImage:
        """Keep an image; evict the least recently used ones to stay within the limits."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        item = StoredImage(secrets.token_urlsafe(ID_BYTES), rgb, owner)
        if item.nbytes > self.max_bytes:
            raise TooLargeError(
                f"the decoded image needs {item.nbytes:,} bytes; the upload store holds {self.max_bytes:,}"
            )
        with self._lock:
            while len(self._items) >= self.max_images:
                self._items.popitem()
            self._items[item.id] = item  # evicts the least recently used beyond max_bytes
        return item

    def find(self, image_id: str, owner: str | None) -> StoredImage | None:
        """The upload, if it exists and belongs to `owner` (another client's upload is not found)."""
        with self._lock:
            item = self._items.get(image_id)
            if item is None or item.owner != owner:
                return None
            return item  # the lookup made it the most recently used

    def get(self, image_id: str, owner: str | None = None) -> StoredImage:
        with self._lock:
            item = self._items.get(image_id)
            if item is None or item.owner != owner:
                raise NotFoundError(f"unknown image {image_id!r} (not a sample, and no such upload is kept)")
            return item

    def __contains__(self, image_id: object) -> bool:
        with self._lock:
            return image_id in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return int(self._items.currsize)
