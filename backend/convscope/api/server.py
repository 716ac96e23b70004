"""`convscope serve`: uvicorn over the app, settings from the environment with CLI flags on top."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn
from pydantic import ValidationError

from convscope.api.app import create_app
from convscope.api.settings import Settings
from convscope.api.timeouts import timed_protocol
from convscope.errors import InvalidRequestError

log = logging.getLogger("convscope.api")


class SettingsError(InvalidRequestError, ValueError):
    """A bad setting (environment variable or flag); a ValueError like pydantic's own."""


def build_settings(
    host: str | None = None,
    port: int | None = None,
    models: Sequence[str] | None = None,
    device: str | None = None,
    insecure: bool | None = None,
) -> Settings:
    overrides: dict[str, Any] = {}
    if insecure:
        overrides["insecure"] = True
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if models:
        overrides["models"] = list(models)
    if device is not None:
        overrides["device"] = device
    try:
        base = Settings()
        settings = Settings.model_validate({**base.model_dump(), **overrides})
        token = settings.api_token()
    except ValidationError as exc:
        raise SettingsError(f"invalid setting: {_describe(exc)}") from None
    except ValueError as exc:
        raise SettingsError(f"invalid setting: {exc}") from None
    if token is None and not settings.insecure and not is_loopback(settings.host):
        raise SettingsError(
            f"refusing to serve on {settings.host} (reachable from other machines) without a token: "
            "set CONVSCOPE_TOKEN (or CONVSCOPE_TOKEN_FILE), or pass --insecure (CONVSCOPE_INSECURE=true) "
            "if the network in front of it is trusted"
        )
    return settings


def is_loopback(host: str) -> bool:
    """True for names and addresses only this machine can reach (localhost, 127.0.0.0/8, ::1)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """glibc: at most `arenas` malloc arenas, as MALLOC_ARENA_MAX=2 would (unless that is set).

    With one arena per thread, memory freed by one request's thread is not reused by the
    next one's, and the server's RSS climbs under mixed load (issue 19). Called before the
    server starts its threads; a no-op off glibc."""
    import ctypes
    import ctypes.util
    import os

    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_arena_max = -8  # from glibc's malloc.h
    return bool(mallopt(m_arena_max, arenas))


def _describe(exc: ValidationError) -> str:
    """Each bad setting as its environment variable, the value given and what is wrong, on one line."""
    parts = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        parts.append(f"{name} (CONVSCOPE_{name.upper()}) = {error.get('input')!r}: {error['msg']}")
    return "; ".join(parts)


def run_server(settings: Settings) -> int:
    """Serve until interrupted (`build_settings` makes the settings from the flags). Exit status 0, or
    1 when the models cannot be loaded."""
    limit_malloc_arenas()
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    elif settings.workers > 1 and settings.device != "cuda":
        # torch's thread count is process-wide: share the cores between the concurrent
        # backward passes (CONVSCOPE_WORKERS) instead of oversubscribing them
        import os

        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.workers))
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=settings.timeout_keep_alive,  # type: ignore[arg-type]
        http=timed_protocol(settings.header_timeout),
    )
    server = uvicorn.Server(config)
    state = app.state.convscope

    def stop() -> None:
        server.should_exit = True

    state.on_load_failed.append(stop)
    print(
        f"convscope: serving http://{settings.host}:{settings.port} "
        f"(models: {', '.join(settings.models)}; loading in the background, see /api/health)",
        file=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if state.pool.state == "failed":
        print(f"convscope serve: error: {state.pool.error}", file=sys.stderr)
        return 1
    return 0 if server.started else 1
