"""Interactive requests first: while a click's request (a prediction, feature maps, a projection or a batch, an
image) is being answered, running jobs wait at their next batch boundary (`InteractiveGate`).
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from convscope.api.jobs import InteractiveGate

INTERACTIVE = re.compile(
    r"^/api/(models/[^/]+/images/[^/]+/(predictions|activations|activations/sprite\.png|projection)|images/[^/]+)$"
)
INTERACTIVE_POST = re.compile(r"^/api/models/[^/]+/images/[^/]+/projections$")


def _interactive(method: str | None, path: str) -> bool:
    pattern = INTERACTIVE if method == "GET" else INTERACTIVE_POST if method == "POST" else None
    return pattern is not None and pattern.match(path) is not None


class InteractiveMiddleware:
    def __init__(self, app: ASGIApp, gate: InteractiveGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _interactive(scope.get("method"), scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        self.gate.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave()
