"""Coalesced projections: one batching queue per engine (issue 15, item 3).

The projection routes (GET .../projection and POST .../projections) hold no worker thread while they
wait: each awaits `Coalescer.project(engine, image, layer, rule, seeds)`. The requests that arrive
within `window` seconds of the oldest one waiting (CONVSCOPE_PROJECTION_WINDOW_MS, default 2 ms,
never more than `WINDOW_CAP_MS`) form one batch of at most `max_seeds` seeds (a full batch leaves at
once). At most `engine.workers` batches of an engine run at a time (the backward passes it runs at
once; 1 on CUDA); while they run, newcomers keep joining the next batch, so batches grow with the load.
What is due is split evenly among the free slots (a batch runs on one worker thread: on the CPU one
batch of everything would leave the other cores idle).

A batch is grouped by (layer, rule), then by image: the seeds on one image share its recorded forward
pass and one `Engine.project_many` call (a seed asked for twice is computed once). Every answer is the
PNG the unbatched call renders, byte for byte (`render`).

Where the engine shares forward passes (`Engine.share_forward`: by default on CUDA only, or
CONVSCOPE_SHARE_FORWARD=on), the groups of one (layer, rule) on two or more images are answered by one
`Engine.project_images` call instead: the images without a record are recorded in one batched forward
pass and the seeds on them go back in one backward pass. Those answers equal the unbatched ones within
float tolerance, not byte for byte (docs/architecture.md "Shared forward passes"). If that call fails,
its groups are done one by one as above.

An error fails only its own requests: a group that fails is redone one request at a time. A request
cancelled while it waits leaves its batch.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio.to_thread

from convscope.api.caching import Rendered, etag_of
from convscope.api.metrics import Metrics
from convscope.api.settings import PROJECTION_WINDOW_CAP_MS
from convscope.engine import Engine
from convscope.engine.engine import Projection, Seed
from convscope.engine.render import png_bytes, projection_image
from convscope.engine.rules import Rule
from convscope.images import PreparedImage

log = logging.getLogger("convscope.api.coalesce")

WINDOW_CAP_MS = PROJECTION_WINDOW_CAP_MS
DEFAULT_WINDOW_MS = 2.0
DEFAULT_MAX_SEEDS = 64


def render(result: Projection) -> Rendered:
    """A projection's PNG and the X-* headers the single endpoint sends with it."""
    seed_y, seed_x = result.seed_position
    headers = {
        "X-Seed-Value": repr(float(result.seed_value)),
        "X-Seed-Y": str(seed_y),
        "X-Seed-X": str(seed_x),
        "X-Mode": result.mode,
    }
    body = png_bytes(projection_image(result.projection))
    return Rendered(body, etag_of(body), headers)


@dataclass
class _Request:
    image: PreparedImage
    layer: str
    rule: Rule
    seeds: tuple[Seed, ...]
    future: asyncio.Future[list[Rendered]]
    arrived: float  # the queue's clock

    @property
    def group(self) -> tuple[str, str, str]:
        return self.layer, self.rule, self.image.key


def _distinct_seeds(batch: list[_Request], indices: list[int]) -> list[Seed]:
    """The seeds of these requests of a batch, in order, each once (a seed asked for twice is computed once)."""
    return list(dict.fromkeys(seed for index in indices for seed in batch[index].seeds))


@dataclass
class _Outcome:
    """What one batch did: an answer or an error per request, and the numbers for metrics and the log."""

    answers: list[list[Rendered] | BaseException]
    seeds: int = 0  # seeds computed (repeats across requests counted once)
    groups: int = 0  # project_many calls that succeeded or failed as a whole
    model_s: float = 0.0  # time inside Engine.project_many (and project_images)
    retried: int = 0  # requests redone alone after their group failed
    together: int = 0  # groups answered by a project_images call over several images
    layers: set[tuple[str, str]] = field(default_factory=set)


class ProjectionQueue:
    """The batching queue of one engine on one event loop (made by `Coalescer`)."""

    def __init__(
        self,
        engine: Engine,
        window_s: float,
        max_seeds: int,
        metrics: Metrics | None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock  # seconds, for arrivals and windows (None: the event loop's clock)
        self.window_s = window_s
        self.max_seeds = max_seeds
        self.slots = engine.workers
        self.metrics = metrics
        self._pending: list[_Request] = []
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def project(self, image: PreparedImage, layer: str, rule: Rule, seeds: Sequence[Seed]) -> list[Rendered]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Rendered]] = loop.create_future()
        self._pending.append(_Request(image, layer, rule, tuple(seeds), future, self._now(loop)))
        self._pump()
        return await future  # a cancelled wait cancels the future: its batch drops it

    def _now(self, loop: asyncio.AbstractEventLoop) -> float:
        return self.clock() if self.clock is not None else loop.time()

    @property
    def waiting(self) -> int:
        """Requests waiting for a batch (cancelled ones not counted)."""
        return sum(1 for request in self._pending if not request.future.done())

    def _pump(self) -> None:
        """Start every batch that is due (its window over, or full) while the engine has a free slot."""
        self._pending = [request for request in self._pending if not request.future.done()]
        loop = asyncio.get_running_loop()
        releasing = False  # once the oldest request is due, what waits with it leaves now, split
        while self._pending and self._running < self.slots:
            now = self._now(loop)
            due = self._pending[0].arrived + self.window_s
            pending_seeds = sum(len(request.seeds) for request in self._pending)
            if not releasing and pending_seeds < self.max_seeds and now < due:
                if self._timer is None:
                    self._timer = loop.call_later(due - now, self._on_timer)
                return
            releasing = True
            # split what waits among the free slots: one batch runs on one worker thread, so on the CPU
            # (`workers` slots) a single large batch would leave the other cores idle
            batch = self._take(min(self.max_seeds, -(-pending_seeds // (self.slots - self._running))))
            self._running += 1
            # a context of its own: a batch serves many clients, it runs as none of them (jobs.current_client)
            task = loop.create_task(self._execute(batch), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._timer is not None and not self._pending:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _take(self, limit: int) -> list[_Request]:
        """The oldest requests, whole, up to `limit` seeds (at least one request)."""
        batch: list[_Request] = []
        seeds = 0
        while self._pending:
            size = len(self._pending[0].seeds)
            if batch and seeds + size > limit:
                break
            batch.append(self._pending.pop(0))
            seeds += size
        return batch

    async def _execute(self, batch: list[_Request]) -> None:
        started = self._now(asyncio.get_running_loop())
        waits = [started - request.arrived for request in batch]
        try:
            outcome = await anyio.to_thread.run_sync(self._compute, batch)
        except BaseException as exc:  # pragma: no cover - _compute catches the engine's errors itself
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            raise
        else:
            for request, answer in zip(batch, outcome.answers, strict=True):
                if request.future.done():
                    continue  # cancelled while its batch ran
                if isinstance(answer, BaseException):
                    request.future.set_exception(answer)
                else:
                    request.future.set_result(answer)
            self._observe(batch, waits, outcome)
        finally:
            self._running -= 1
            self._pump()

    def _compute(self, batch: list[_Request]) -> _Outcome:
        """In a worker thread: one `project_many` per (layer, rule, image), each seed rendered once (with shared
        forward passes, one `project_images` per (layer, rule) on several images first: `_compute_together`)."""
        outcome = _Outcome(answers=[RuntimeError("not computed")] * len(batch))
        groups: dict[tuple[str, str, str], list[int]] = {}
        for index, request in enumerate(batch):
            groups.setdefault(request.group, []).append(index)
        one_by_one = list(groups.values())
        if self.engine.share_forward:
            one_by_one = self._compute_together(batch, one_by_one, outcome)
        for indices in one_by_one:
            first = batch[indices[0]]
            seeds = _distinct_seeds(batch, indices)
            outcome.groups += 1
            outcome.layers.add((first.layer, first.rule))
            try:
                rendered = self._project(first, seeds, outcome)
            except Exception as exc:
                if len(indices) == 1:
                    outcome.answers[indices[0]] = exc
                    continue
                for index in indices:  # one bad request must not fail the others: each alone
                    request = batch[index]
                    outcome.retried += 1
                    try:
                        alone = self._project(request, _distinct_seeds(batch, [index]), outcome)
                    except Exception as single:
                        outcome.answers[index] = single
                    else:
                        outcome.answers[index] = [alone[seed] for seed in request.seeds]
                continue
            for index in indices:
                outcome.answers[index] = [rendered[seed] for seed in batch[index].seeds]
        return outcome

    def _compute_together(self, batch: list[_Request], groups: list[list[int]], outcome: _Outcome) -> list[list[int]]:
        """The groups of each (layer, rule) on two or more images, each set in one `project_images` call
        (shared forward passes); returns the groups left to do one by one (alone on their layer and
        rule, or in a call that failed: then each group is done alone, so an error stays its own)."""
        by_layer: dict[tuple[str, Rule], list[list[int]]] = {}
        for indices in groups:
            first = batch[indices[0]]
            by_layer.setdefault((first.layer, first.rule), []).append(indices)
        left: list[list[int]] = []
        for (layer, rule), members in by_layer.items():
            if len(members) < 2:
                left.extend(members)
                continue
            seeds = [_distinct_seeds(batch, indices) for indices in members]
            requests = [
                (batch[indices[0]].image, group_seeds) for indices, group_seeds in zip(members, seeds, strict=True)
            ]
            begin = time.perf_counter()
            try:
                results = self.engine.project_images(layer, requests, mode=rule)
            except Exception as exc:
                log.debug(
                    "projections of %d images on %s/%s together failed (%s): one by one", len(members), layer, rule, exc
                )
                left.extend(members)
                continue
            finally:
                outcome.model_s += time.perf_counter() - begin
            for indices, group_seeds, projections in zip(members, seeds, results, strict=True):
                rendered = {seed: render(result) for seed, result in zip(group_seeds, projections, strict=True)}
                outcome.groups += 1
                outcome.together += 1
                outcome.seeds += len(group_seeds)
                outcome.layers.add((layer, rule))
                for index in indices:
                    outcome.answers[index] = [rendered[seed] for seed in batch[index].seeds]
        return left

    def _project(self, request: _Request, seeds: list[Seed], outcome: _Outcome) -> dict[Seed, Rendered]:
        begin = time.perf_counter()
        try:
            results = self.engine.project_many(request.image, request.layer, seeds, mode=request.rule)
        finally:
            outcome.model_s += time.perf_counter() - begin
        outcome.seeds += len(seeds)
        return {seed: render(result) for seed, result in zip(seeds, results, strict=True)}

    def _observe(self, batch: list[_Request], waits: list[float], outcome: _Outcome) -> None:
        name = self.engine.name
        if self.metrics is not None:
            if outcome.seeds:
                self.metrics.batch_sizes.labels(name).observe(outcome.seeds)
            self.metrics.batch_requests.labels(name).observe(len(batch))
            self.metrics.model_seconds.labels(name).observe(outcome.model_s)
            for wait in waits:
                self.metrics.queue_wait.labels(name).observe(wait)
        failed = sum(1 for answer in outcome.answers if isinstance(answer, BaseException))
        log.debug(
            "projection batch on %s: %d requests, %d seeds computed in %d groups (%s), waited up to %.1f ms, "
            "model %.1f ms%s%s",
            name,
            len(batch),
            outcome.seeds,
            outcome.groups,
            ", ".join(f"{layer}/{rule}" for layer, rule in sorted(outcome.layers)),
            max(waits) * 1000,
            outcome.model_s * 1000,
            f", {outcome.together} groups on several images at once" if outcome.together else "",
            f", {failed} failed ({outcome.retried} redone alone)" if failed or outcome.retried else "",
        )


class Coalescer:
    """The batching queues of an app: one per engine and event loop (a test client may run several loops)."""

    def __init__(
        self,
        window_ms: float = DEFAULT_WINDOW_MS,
        max_seeds: int = DEFAULT_MAX_SEEDS,
        metrics: Metrics | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not 0 <= window_ms <= WINDOW_CAP_MS:
            raise ValueError(f"the projection window must be 0..{WINDOW_CAP_MS:g} ms, got {window_ms!r}")
        if max_seeds < 1:
            raise ValueError(f"a batch needs room for at least one seed, got {max_seeds!r}")
        self.window_s = window_ms / 1000.0
        self.max_seeds = max_seeds
        self.metrics = metrics
        self.clock = clock  # for tests: a clock they move (windows then end when they say)
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Engine, ProjectionQueue]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def queue(self, engine: Engine) -> ProjectionQueue:
        """The calling event loop's queue for `engine`."""
        loop = asyncio.get_running_loop()
        with self._lock:
            queues = self._queues.setdefault(loop, {})
            queue = queues.get(engine)
            if queue is None:
                queue = queues[engine] = ProjectionQueue(
                    engine, self.window_s, self.max_seeds, self.metrics, self.clock
                )
            return queue

    async def project(
        self, engine: Engine, image: PreparedImage, layer: str, rule: Rule, seeds: Sequence[Seed]
    ) -> list[Rendered]:
        """The rendered projections of `seeds` (in order), computed in a batch with other requests."""
        return await self.queue(engine).project(image, layer, rule, seeds)
