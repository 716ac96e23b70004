"""A JSON error answer sent straight through ASGI, for middlewares that refuse a request before the app
(and its exception handlers) sees it: the same `{"detail": ...}` shape as every other error; and
`run_refusing`, for middlewares whose `receive` wrapper refuses a body while the app reads it."""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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


async def run_refusing(app: ASGIApp, scope: Scope, receive: Receive, send: Send, error: type[HTTPException]) -> None:
    """Run `app` with `receive` (a wrapper that may raise `error`): an `error` raised before the response
    started is answered with its status and detail (and `Connection: close`); after that it propagates."""
    started = False

    async def tracking_send(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    try:
        await app(scope, receive, tracking_send)
    except error as exc:  # raised outside the app's exception handlers
        if started:
            raise
        await send_json(send, exc.status_code, exc.detail, [(b"connection", b"close")])
