"""The models: one engine per model, loaded in the background or on first use.

The server starts answering at once; `GET /api/health` says 503 `loading` until the
default model is ready (then 200 `ok`), or 503 `failed` with the reason. The other
models of `settings.models` load in the background after it; torchvision models in
`settings.offer_models` whose ImageNet weights can be had (cached under TORCH_HOME or
downloadable) are offered too. A model that is not loaded yet loads when a request
first needs it (that request waits), so start-up stays fast however many are listed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def offerable(settings: Settings) -> list[str]:
    """The torchvision models of `settings.offer_models` whose ImageNet weights can be had now."""
    from convscope.models.torchvision_zoo import TORCHVISION_MODELS, weights_available

    if not settings.pretrained:
        return []  # random weights would only mislead
    names = [n for n in settings.offer_models if n not in settings.models and n in TORCHVISION_MODELS]
    return [name for name in names if weights_available(name)]


@dataclass(frozen=True)
class ModelSummary:
    """What the model list says about a model, loaded or not."""

    name: str
    loaded: bool
    num_classes: int
    pretrained: bool
    input_size: int
    description: str


class ModelPool:
    """Engines by model name; `get` loads a known model on first use and answers 404 for others."""

    def __init__(
        self,
        settings: Settings,
        loader: ModelLoader = default_loader,
        offer: Callable[[Settings], list[str]] = offerable,
    ) -> None:
        self.settings = settings
        self.names = list(settings.models)
        self.default = settings.default_model
        self.offered: list[str] = []
        self._loader = loader
        self._offer = offer
        self._engines: dict[str, Engine] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.state: PoolState = "loading"
        self.error: str | None = None
        self.load_seconds: float | None = None
        self._ready = threading.Event()

    # ---- loading ----------------------------------------------------------------------------------
    def _load_one(self, name: str) -> Engine:
        with self._lock:
            lock = self._load_locks.setdefault(name, threading.Lock())
        with lock:  # one load per model, however many requests wait for it
            engine = self._engines.get(name)
            if engine is not None:
                return engine
            started = time.perf_counter()
            model = self._loader(name, self.settings)
            engine = Engine(
                model,
                device_name=self.settings.device,
                cache_size=self.settings.engine_cache_size,
                tf32=self.settings.tf32,
                cache_mb=self.settings.engine_cache_mb,
                workers=self.settings.workers,
                share_forward={"auto": None, "on": True, "off": False}[self.settings.share_forward],
            )
            self._engines[name] = engine
            log.info(
                "loaded model %s on %s (%d layers) in %.1f s",
                name,
                engine.device,
                len(engine.layers()),
                time.perf_counter() - started,
            )
            return engine

    def load(self) -> None:
        """Load the default model (blocking; run it in a thread), then the other listed ones. Never raises."""
        started = time.perf_counter()
        try:
            self._load_one(self.default)
        except ConvscopeError as exc:
            self._fail(f"cannot load model: {exc}")
        except Exception as exc:
            log.exception("loading the default model failed")
            self._fail(f"cannot load model: {type(exc).__name__}: {exc}")
        else:
            self.load_seconds = time.perf_counter() - started
            self.state = "ready"
            log.info("ready: %s loaded in %.1f s", self.default, self.load_seconds)
        finally:
            self._ready.set()
        if self.state != "ready":
            return
        for name in self.names[1:]:
            try:
                self._load_one(name)
            except Exception as exc:  # a later request for it says why, with the real error
                log.warning("model %s did not load in the background: %s", name, exc)
        # which torchvision weights can be had: a network check, in its own thread (never waited for)
        threading.Thread(target=self._find_offers, name="convscope-offers", daemon=True).start()

    def _find_offers(self) -> None:
        try:
            self.offered = self._offer(self.settings)
        except Exception as exc:
            log.warning("could not check which torchvision weights are available: %s", exc)
        if self.offered:
            log.info("also offered (loaded on first use): %s", ", ".join(self.offered))

    def _fail(self, message: str) -> None:
        self.error = message
        self.state = "failed"
        log.error(message)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the default model has loaded (or failed)."""
        return self._ready.wait(timeout)

    def check_ready(self) -> None:
        if self.state == "loading":
            raise ServiceUnavailableError("the models are still loading; retry in a few seconds")
        if self.state == "failed":
            raise ServiceUnavailableError(self.error or "the models failed to load")

    # ---- lookups ------------------------------------------------------------------------------------
    def available(self) -> list[str]:
        """Every model a client may use: the listed ones, then those offered."""
        return self.names + [n for n in self.offered if n not in self.names]

    def get(self, name: str) -> Engine:
        self.check_ready()
        engine = self._engines.get(name)
        if engine is not None:
            return engine
        if name not in self.available():
            raise NotFoundError(f"unknown model {name!r}; this server has {', '.join(self.available())}")
        return self._load_one(name)

    def holds_a_model_lock(self) -> bool:
        """True when the calling thread holds a model's lock (then it must not wait for others)."""
        return any(engine.lock._is_owned() for engine in list(self._engines.values()))  # type: ignore[attr-defined]

    def engines(self) -> list[Engine]:
        """The engines loaded so far, in the order of `available()`."""
        self.check_ready()
        return [self._engines[name] for name in self.available() if name in self._engines]

    def summaries(self) -> list[ModelSummary]:
        """Every available model; one not loaded yet is described from the registry."""
        from convscope.models.registry import BUILTIN_MODELS

        self.check_ready()
        out = []
        for name in self.available():
            engine = self._engines.get(name)
            if engine is not None:
                model = engine.model
                out.append(
                    ModelSummary(name, True, model.num_classes, model.pretrained, engine.input_size, model.description)
                )
                continue
            entry = BUILTIN_MODELS.get(name)
            out.append(
                ModelSummary(
                    name=name,
                    loaded=False,
                    num_classes=1000 if entry is not None else 0,
                    pretrained=bool(entry and entry.has_pretrained and self.settings.pretrained),
                    input_size=self.settings.input_size
                    or int((entry.preprocessing if entry else {}).get("input_size", 224)),
                    description=(entry.description if entry else f"custom model {name}") + " (loads on first use)",
                )
            )
        return out
