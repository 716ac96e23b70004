"""Who is asking, and may they: the trusted-hosts check, the optional API token and the client cookie.

One pure-ASGI middleware, in this order:
1. `Host` must be one of the trusted names (loopback names by default, `CONVSCOPE_TRUSTED_HOSTS`),
   else 400: a DNS-rebinding page cannot drive the API from a browser.
2. With `CONVSCOPE_TOKEN` (or `CONVSCOPE_TOKEN_FILE`) set, every `/api` request but
   `/api/health` needs `Authorization: Bearer <token>` or the `convscope_auth` cookie this
   middleware sets after one such request (so the dashboard's `<img>` requests work), else 401.
3. Every client gets an opaque id in the HttpOnly, SameSite=Strict `convscope_client` cookie on
   first contact; jobs and uploads belong to it (`client_of(scope)`).
4. An unsupported method on an `/api` path gets 405 with the route's real `Allow` header (not the
   dashboard mount's).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from convscope.api.asgi import send_json
from convscope.api.jobs import current_client

CLIENT_COOKIE = "convscope_client"
AUTH_COOKIE = "convscope_auth"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
PUBLIC_PATHS = frozenset({"/api/health"})
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def client_of(scope: Scope) -> str | None:
    """The client id the middleware gave this request (None outside the middleware)."""
    state = scope.get("state") or {}
    client = state.get("client")
    return client if isinstance(client, str) else None


def _cookies(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in headers:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, sep, val = part.strip().partition("=")
                if sep:
                    found.setdefault(key.strip(), val.strip())
    return found


def host_name(host: str) -> str:
    """`example.org:8000` -> `example.org`; `[::1]:8000` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


class SecurityMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted_hosts: Sequence[str],
        token: str | None,
        openapi: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.app = app
        self.any_host = "*" in trusted_hosts
        self.trusted = frozenset(host_name(host) for host in trusted_hosts)
        self.token = token
        # what the auth cookie holds: a keyed hash, so the cookie never carries the token itself
        self._auth_value = hmac.new(token.encode(), b"convscope-auth", hashlib.sha256).hexdigest() if token else None
        self.openapi = openapi
        self._paths: list[tuple[re.Pattern[str], set[str]]] | None = None

    def _authorised(self, headers: Sequence[tuple[bytes, bytes]], cookies: dict[str, str]) -> tuple[bool, bool]:
        """(authorised, by the bearer header)."""
        assert self.token is not None and self._auth_value is not None
        for name, value in headers:
            if name == b"authorization":
                scheme, _, given = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode()):
                    return True, True
        cookie = cookies.get(AUTH_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self._auth_value.encode()), False

    def _allowed_methods(self, scope: Scope) -> set[str] | None:
        """None when a documented route takes this method (or no route has the path); else the
        methods the path has. The routes are read from the OpenAPI document, once."""
        if self._paths is None:
            document = self.openapi() if self.openapi is not None else {}
            self._paths = [
                (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$"), set(item))
                for path, item in document.get("paths", {}).items()
            ]
        path, method = scope.get("path", ""), str(scope.get("method", "")).lower()
        methods: set[str] = set()
        for pattern, allowed in self._paths:
            if pattern.match(path):
                if method in allowed:
                    return None
                methods |= allowed
        return {m.upper() for m in methods if m in HTTP_METHODS} or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        host = next((value.decode("latin-1") for name, value in headers if name == b"host"), "")
        if not self.any_host and host_name(host) not in self.trusted:
            await send_json(send, 400, f"untrusted Host header {host!r}; add it to CONVSCOPE_TRUSTED_HOSTS to serve it")
            return
        path: str = scope.get("path", "")
        is_api = path == "/api" or path.startswith("/api/")
        cookies = _cookies(headers)
        extra: list[tuple[bytes, bytes]] = []
        if is_api and self.token is not None and path not in PUBLIC_PATHS:
            ok, by_header = self._authorised(headers, cookies)
            if not ok:
                await send_json(
                    send,
                    401,
                    "this server needs its token: send `Authorization: Bearer <token>` (CONVSCOPE_TOKEN)",
                    [(b"www-authenticate", b'Bearer realm="convscope"')],
                )
                return
            if by_header and cookies.get(AUTH_COOKIE) != self._auth_value:
                extra.append(_set_cookie(AUTH_COOKIE, self._auth_value or ""))
        client = cookies.get(CLIENT_COOKIE, "")
        if not _CLIENT_ID.match(client):
            client = secrets.token_urlsafe(24)
            extra.append(_set_cookie(CLIENT_COOKIE, client))
        scope.setdefault("state", {})["client"] = client
        current_client.set(client)  # jobs submitted by this request belong to this client
        if is_api:
            allowed = self._allowed_methods(scope)
            if allowed is not None:
                allow = ", ".join(sorted(allowed)).encode()
                await send_json(send, 405, f"method {scope.get('method')} is not allowed here", [(b"allow", allow)])
                return
        if not extra:
            await self.app(scope, receive, send)
            return

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_cookies)


def _set_cookie(name: str, value: str) -> tuple[bytes, bytes]:
    return b"set-cookie", f"{name}={value}; Path=/; HttpOnly; SameSite=Strict".encode()
