"""The loaded models: one engine per model, loaded in the background at start-up.

The server starts answering at once; `GET /api/health` says 503 `loading` until
every model is ready (then 200 `ok`), or 503 `failed` with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from convscope.api.settings import Settings
from convscope.engine import Engine
from convscope.errors import ConvscopeError, NotFoundError
from convscope.models import LoadedModel, load_model

log = logging.getLogger("convscope.api")

PoolState = Literal["loading", "ready", "failed"]
ModelLoader = Callable[[str, Settings], LoadedModel]


class ServiceUnavailableError(ConvscopeError):
    """The models are still loading (or failed to load)."""

    status_code = 503


def default_loader(name: str, settings: Settings) -> LoadedModel:
    return load_model(
        name,
        pretrained=settings.pretrained,
        input_size=settings.input_size,
        preprocessing=settings.preprocessing.get(name),
    )


class ModelPool:
    """Engines by model name; `get` answers 404 for a model that is not loaded."""

    def __init__(self, settings: Settings, loader: ModelLoader = default_loader) -> None:
        self.settings = settings
        self.names = list(settings.models)
        self.default = settings.default_model
        self._loader = loader
        self._engines: dict[str, Engine] = {}
        self.state: PoolState = "loading"
        self.error: str | None = None
        self.load_seconds: float | None = None
        self._ready = threading.Event()

    def load(self) -> None:
        """Load every model (blocking; run it in a thread). Never raises."""
        started = time.perf_counter()
        try:
            for name in self.names:
                model = self._loader(name, self.settings)
                engine = Engine(
                    model,
                    device_name=self.settings.device,
                    cache_size=self.settings.engine_cache_size,
                    tf32=self.settings.tf32,
                )
                self._engines[name] = engine
                log.info("loaded model %s on %s (%d layers)", name, engine.device, len(engine.layers()))
        except ConvscopeError as exc:
            self._fail(f"cannot load model: {exc}")
        except Exception as exc:
            log.exception("loading the models failed")
            self._fail(f"cannot load model: {type(exc).__name__}: {exc}")
        else:
            self.load_seconds = time.perf_counter() - started
            self.state = "ready"
            log.info("ready: %s loaded in %.1f s", ", ".join(self.names), self.load_seconds)
        finally:
            self._ready.set()

    def _fail(self, message: str) -> None:
        self.error = message
        self.state = "failed"
        log.error(message)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until loading has finished (ready or failed)."""
        return self._ready.wait(timeout)

    def check_ready(self) -> None:
        if self.state == "loading":
            raise ServiceUnavailableError("the models are still loading; retry in a few seconds")
        if self.state == "failed":
            raise ServiceUnavailableError(self.error or "the models failed to load")

    def get(self, name: str) -> Engine:
        self.check_ready()
        engine = self._engines.get(name)
        if engine is None:
            raise NotFoundError(f"unknown model {name!r}; this server has {', '.join(self.names)}")
        return engine

    def holds_a_model_lock(self) -> bool:
        """True when the calling thread holds a model's lock (then it must not wait for others)."""
        return any(engine.lock._is_owned() for engine in list(self._engines.values()))  # type: ignore[attr-defined]

    def engines(self) -> list[Engine]:
        self.check_ready()
        return [self._engines[name] for name in self.names]
