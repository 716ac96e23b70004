"""Interactive requests first: while a click's request (a prediction, feature maps, a projection, an
image) is being answered, running jobs wait at their next batch boundary (`InteractiveGate`).
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from convscope.api.jobs import InteractiveGate

INTERACTIVE = re.compile(
    r"^/api/(models/[^/]+/images/[^/]+/(predictions|activations|activations/sprite\.png|projection)|images/[^/]+)$"
)


class InteractiveMiddleware:
    def __init__(self, app: ASGIApp, gate: InteractiveGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET" or not INTERACTIVE.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        self.gate.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave()
