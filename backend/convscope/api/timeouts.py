"""Connections that stop sending are closed: a header timeout in the HTTP protocol, a body timeout in ASGI.

- `timed_protocol(header_timeout)`: uvicorn's HTTP protocol class with one more timer: a
  connection must deliver a complete request head within `header_timeout` seconds of being
  opened (or of its previous response), else it is closed. uvicorn's own `timeout_keep_alive`
  only covers a connection that sends nothing at all after a response.
- `BodyTimeoutMiddleware`: while a request body is still arriving, each chunk must come within
  `body_timeout` seconds; a stalled body gets 408 and the connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from convscope.api.asgi import run_refusing


def _base_protocol() -> type[Any]:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn's pure-Python h11 protocol
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def timed_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    base = _base_protocol()

    class TimedHttpProtocol(base):  # type: ignore[misc, valid-type]
        """uvicorn's protocol, closing connections whose request head does not arrive in time."""

        _head_timer: asyncio.TimerHandle | None = None
        _armed_for: object = None

        def _arm(self) -> None:
            self._disarm()
            self._armed_for = self.cycle
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head_timer is not None and self.cycle is not None and self.cycle is not self._armed_for:
                self._disarm()  # a new request's head is complete

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedHttpProtocol


class BodyStalledError(HTTPException):
    """An HTTPException, so FastAPI's body parsing lets it through to the 408 answer."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body stalled for {seconds:g} s", headers={"Connection": "close"})


class BodyTimeoutMiddleware:
    def __init__(self, app: ASGIApp, body_timeout: float) -> None:
        self.app = app
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        more_body = True

        async def timed_receive() -> Message:
            nonlocal more_body
            if not more_body:
                return await receive()  # after the body: waiting for a disconnect is fine
            try:
                with anyio.fail_after(self.body_timeout):
                    message = await receive()
            except TimeoutError:
                raise BodyStalledError(self.body_timeout) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                more_body = False
            return message

        await run_refusing(self.app, scope, timed_receive, send, BodyStalledError)
