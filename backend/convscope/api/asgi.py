"""A JSON error answer sent straight through ASGI, for middlewares that refuse a request before the app
(and its exception handlers) sees it: the same `{"detail": ...}` shape as every other error."""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.types import Send


async def send_json(send: Send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
