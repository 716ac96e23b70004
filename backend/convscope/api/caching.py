"""PNG responses with a strong ETag, Cache-Control and `If-None-Match` -> 304.

The ETag is the hash of the PNG bytes. Rendered PNGs are kept in a small LRU
keyed by the request's deterministic inputs (model, image pixels, parameters),
so a repeated or revalidated request costs no model work.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cachetools import LRUCache
from fastapi import Request, Response

PUBLIC = "public, max-age=3600"
PRIVATE = "private, max-age=3600"


@dataclass(frozen=True)
class Rendered:
    body: bytes
    etag: str
    headers: Mapping[str, str] = field(default_factory=dict)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def cache_key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class ResponseCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: LRUCache[str, Rendered] = LRUCache(maxsize=max(1, max_entries))
        self._lock = threading.Lock()

    def get(self, key: str) -> Rendered | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: str, item: Rendered) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._items[key] = item

    def render(self, key: str, make: Callable[[], tuple[bytes, Mapping[str, str]]]) -> Rendered:
        item = self.get(key)
        if item is None:
            body, headers = make()
            item = Rendered(body, etag_of(body), dict(headers))
            self.put(key, item)
        return item


def matches(request: Request, etag: str) -> bool:
    """`If-None-Match` (weak comparison, as RFC 9110 asks for this header)."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(","))


def png_response(request: Request, item: Rendered, cache_control: str) -> Response:
    headers = {"ETag": item.etag, "Cache-Control": cache_control, **item.headers}
    if matches(request, item.etag):
        return Response(status_code=304, headers=headers)
    return Response(content=item.body, media_type="image/png", headers=headers)
