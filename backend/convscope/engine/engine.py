"""The engine: one object per loaded model that predicts, records and projects.

It owns the model, the device, the list of probe-able layers (with receptive
fields and rule coverage) and an LRU cache of recorded forward passes, bounded in
bytes, so a second projection of the same image costs only the backward part.
`infer` is the one no-grad inference entry point (logits and taps at any module).

Threads: forward passes take the engine's lock, one batch at a time (never across
a job). On the CPU up to `workers` backward passes run at once over the shared
recorded graphs, outside that lock, each with its rule held per call
(`rules.using_rule`), never written on the shared record; one image is never
recorded twice at once (a second caller waits for the first one's record). On
CUDA autograd runs backward passes in its own device threads, where a per-thread
rule cannot be seen: there every computation is serialised by the lock and the
rule is set on the record under it.

Shared forward passes (`share_forward`; on by default on CUDA only): `record_together`
records several images in one batched pass (one autograd graph over the N×3×S×S batch,
each image's record a view of it with its sample index), and `project_images` sends the
seeds on those images back in one backward pass. Any later backward pass through that
graph runs over all N samples, so it pays where a pass costs its kernel launches rather
than its arithmetic (a GPU at these sizes), not on the CPU (docs/architecture.md
"Shared forward passes").
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from cachetools import LRUCache
from PIL import Image

from convscope.engine import cone, units
from convscope.engine.capture import LayerCapture, StopForward, Tap
from convscope.engine.graph import path_facts
from convscope.engine.memory import held_bytes, model_storages
from convscope.engine.receptive_field import ReceptiveField, receptive_field
from convscope.engine.rules import MODES, Mode, Rule, RuleBox, RuleMode, using_rule
from convscope.errors import InvalidRequestError, NotFoundError
from convscope.images import PreparedImage, prepare_image
from convscope.models.spec import LoadedModel

log = logging.getLogger("convscope.engine")

LOGITS_KEPT = 64  # no-grad logits kept per engine (by image key; 4 kB each for 1000 classes)
MAPS_KEPT_MB = 64  # no-grad feature maps kept per engine, MiB
SHARED_PASS_IMAGES = 16  # most images one shared forward pass records (`Engine.record_together`)
SHARED_BACKWARD_SAMPLES = 256  # CUDA: most rows × images in one vmapped backward pass over a shared pass

Select = Literal["max", "map"]
SELECTS: tuple[Select, ...] = ("max", "map")


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str
    channels: int
    height: int
    width: int
    receptive_field: ReceptiveField
    has_switches: bool = False  # a max-pool with switches lies below (on a path from the input)
    rules_covered: tuple[str, ...] = ()  # element-wise activations below/at the layer with an engine rule
    rules_uncovered: tuple[str, ...] = ()  # ... and those without one (plain derivative in every mode)
    units: int | None = None  # a 2-D start (logits, a linear layer): its unit count; channels = units, 1×1

    @property
    def auto_mode(self) -> Rule:
        """What `mode="auto"` resolves to here: the paper's deconvnet where max-pool switches
        carry the image into the projection, guided backprop where nothing would."""
        return "deconvnet" if self.has_switches else "guided"


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Seed:
    """Which activation(s) of a layer to project: a channel's strongest unit, its whole
    map, or one explicit (y, x) position."""

    channel: int
    select: Select = "max"
    position: tuple[int, int] | None = None


@dataclass
class Projection:
    layer: str
    channel: int
    mode: Rule  # the rule used (`auto` resolved for the layer)
    select: str
    seed_value: float
    seed_position: tuple[int, int]  # (y, x), or (-1, -1) for the whole map
    projection: torch.Tensor  # 3×S×S float32 on the CPU, normalised-input space


PassKey = tuple[str, int]  # a shared pass's key in the record cache ("shared", n): never an image key


@dataclass
class _Record:
    """One recorded forward pass: the graph stays alive for repeated backward passes.

    The first record of an image, made for a click, stops at the clicked layer (`logits`
    None, `outputs` that layer's alone); a whole one runs to the logits and holds every layer.
    A shared pass (`Engine.record_together`) holds an N-image batch (`shared` is its cache
    key); each of its images sees it through a copy of this object with its own `sample`."""

    image: torch.Tensor  # N×3×S×S, N = 1 unless shared
    logits: torch.Tensor | None
    outputs: dict[str, torch.Tensor]
    box: RuleBox
    nbytes: int = 0  # what it holds (engine/memory.py), the size the cache counts
    sample: int = 0  # this image's index in the batch
    shared: PassKey | None = None

    def covers(self, layer: str | None) -> bool:
        """Whether it serves `layer` (None: the whole pass)."""
        return self.logits is not None or (layer is not None and layer in self.outputs)


def _record_size(record: _Record) -> int:
    return max(record.nbytes, 1)


# The recorded-pass cache's default bound per device type, in MiB: an EfficientNet-Lite0
# record at 224 px holds ~100 MiB, VGG16 ~175 MiB, ResNet-50 ~160 MiB (measured, CPU).
DEFAULT_CACHE_MB = {"cpu": 1024, "cuda": 2048}
MiB = 1024 * 1024


@dataclass(frozen=True)
class CacheMemory:
    """What the recorded-pass cache holds now (a shared pass is one record, its bytes counted once)."""

    records: int
    bytes: int
    limit_bytes: int


class _Pending:
    """A record being made by one thread; others wanting the same image wait for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.record: _Record | None = None


@dataclass
class EngineStats:
    """Counters since the engine was made."""

    forward_passes: int = 0  # recorded (with a graph)
    inference_passes: int = 0  # no-grad batches (`infer`)
    backward_passes: int = 0
    cone_passes: int = 0  # backward passes that ran over the seed's receptive field only
    cache_hits: int = 0
    not_cached: int = 0  # records larger than the whole cache bound (used once, not kept)
    shared_passes: int = 0  # recorded passes of several images at once (`record_together`), in forward_passes
    shared_images: int = 0  # images those passes recorded
    shared_pass_sizes: dict[int, int] = field(default_factory=dict)  # images per shared pass -> passes


def set_cuda_tf32(allowed: bool) -> None:
    """Set PyTorch's (process-wide) flags: may CUDA convolutions and matrix products use TF32."""
    torch.backends.cudnn.allow_tf32 = allowed
    torch.backends.cuda.matmul.allow_tf32 = allowed


_CUDA_PRECISION_LOCK = threading.RLock()


@contextmanager
def cuda_precision(tf32: bool) -> Iterator[None]:
    """TF32 allowed or not for the computations inside the block, restored after it.

    PyTorch lets cuDNN convolutions use TF32 by default; with it, projections on a GPU
    differ from the CPU's by up to 42 % of their peak (measured on an H200, gradient mode,
    EfficientNet-Lite0): a forward pass ~1e-3 off flips ReLU masks near zero. The engine
    therefore computes in full float32 unless asked for TF32. PyTorch's flags are global,
    so the engine sets them only around its own CUDA work, under one process-wide lock
    (CUDA engines of one process take turns), and puts the caller's values back after."""
    with _CUDA_PRECISION_LOCK:
        before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        set_cuda_tf32(tf32)
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError("device 'cuda' was requested but CUDA is not available here")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InvalidRequestError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


class Engine:
    """Inspection, inference and deconvnet projections for one model (docs/deconvnet.md).

    What the engine does to the model it is given: it moves the module to the device
    and switches it to eval mode, once, here. It never changes its parameters or their
    `requires_grad` flags, and its forward hooks live only for one pass (`LayerCapture`).
    A plain class: engines compare and hash by identity."""

    def __init__(
        self,
        model: LoadedModel,
        device_name: str = "auto",
        cache_size: int | None = None,
        tf32: bool = False,
        cache_mb: float | None = None,
        workers: int = 2,
        share_forward: bool | None = None,
    ) -> None:
        self.model = model
        self.device_name = device_name
        self.cache_size = cache_size  # at most this many records too (None: only the byte bound)
        self.tf32 = tf32  # CUDA only: let convolutions use TF32 (faster, ~1e-3 off; see cuda_precision)
        self.stats = EngineStats()
        self.device = resolve_device(device_name)
        self.cache_mb = float(DEFAULT_CACHE_MB.get(self.device.type, 1024) if cache_mb is None else cache_mb)
        if self.cache_mb <= 0:
            raise InvalidRequestError(f"the engine cache needs a positive size in MiB, got {cache_mb!r}")
        self.model.module.to(self.device).eval()
        self._model_storages = model_storages(self.model.module)
        self._module_names = frozenset(name for name, _ in self.model.module.named_modules() if name)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InvalidRequestError(f"workers must be a positive integer, got {workers!r}")
        # backward passes at once: `workers` on the CPU; one on CUDA (see the module docstring)
        self.workers = workers if self.device.type == "cpu" else 1
        if share_forward is not None and not isinstance(share_forward, bool):
            raise InvalidRequestError(f"share_forward must be True, False or None (auto), got {share_forward!r}")
        # seeds on several new images share one recorded forward pass (`project_images`): by default on
        # CUDA only, where a batch of N costs about one pass; on the CPU every later backward pass through
        # the shared graph would cost N (docs/architecture.md "Shared forward passes")
        self.share_forward = self.device.type == "cuda" if share_forward is None else share_forward
        self.shared_pass_images = SHARED_PASS_IMAGES
        self._lock = threading.RLock()  # forward passes (and, on CUDA, everything)
        self._backward_slots = threading.BoundedSemaphore(self.workers)
        self._cache_lock = threading.Lock()  # the caches, the pending records, the counters
        self._pending: dict[str, _Pending] = {}
        # recorded passes by image key (or a shared pass's key), least recently used first out, bounded in bytes
        self._cache: LRUCache[str | PassKey, _Record] = LRUCache(
            maxsize=int(self.cache_mb * MiB), getsizeof=_record_size
        )
        # images recorded in a shared pass: image key -> (the pass's key, the image's sample)
        self._shared_index: dict[str, tuple[PassKey, int]] = {}
        self._pass_ids = itertools.count()
        self._logits: LRUCache[str, torch.Tensor] = LRUCache(maxsize=LOGITS_KEPT)  # no-grad predictions by image key
        # no-grad feature maps by (image key, layer): the maps and the sprite of a layer share one pass
        self._maps: LRUCache[tuple[str, str], torch.Tensor] = LRUCache(
            maxsize=MAPS_KEPT_MB * MiB, getsizeof=lambda maps: max(maps.numel() * maps.element_size(), 1)
        )
        # layers whose outputs an in-place op rewrites further down: recorded through a copy
        # (learned from the first recorded pass; None until then: copy every one)
        self._copied_layers: set[str] | None = None
        self._cone = cone.Planner()  # cone-or-dense choices per layer and seed, across records
        self._layers = self._inspect_layers()
        self._layer_index = {info.name: info for info in self._layers}
        starts = [*self._layers, *self._unit_layers, *self._unit_aliases]  # aliases: starts, not listed
        self._start_index = {info.name: info for info in starts}

    def __repr__(self) -> str:
        return f"Engine({self.name!r}, device={str(self.device)!r})"

    @contextmanager
    def _computing(self) -> Iterator[None]:
        """Held around each of the engine's own passes: its lock, and its CUDA precision."""
        precision = cuda_precision(self.tf32) if self.device.type == "cuda" else nullcontext()
        with self._lock, precision:
            yield

    # ---- metadata ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.model.name

    @property
    def input_size(self) -> int:
        return self.model.input_size

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    def layers(self) -> list[LayerInfo]:
        """Every module with a 4-D output, in the order the forward pass reaches it."""
        return list(self._layers)

    def layer(self, name: str) -> LayerInfo:
        info = self._layer_index.get(name)
        if info is None:
            raise NotFoundError(f"model {self.name!r} has no layer {name!r} with a 4-D output")
        return info

    def unit_layers(self) -> list[LayerInfo]:
        """The 2-D projection starts (engine/units.py): each linear layer's output, then `logits`
        (a linear layer whose output is the model's output is `logits`, not listed twice)."""
        return list(self._unit_layers)

    def projection_starts(self) -> list[LayerInfo]:
        """Every layer a projection can start from: `layers()`, then `unit_layers()`."""
        return [*self._layers, *self._unit_layers]

    def start(self, name: str) -> LayerInfo:
        """A projection start by name: a 4-D layer or a 2-D one (`logits`, a linear layer)."""
        info = self._start_index.get(name)
        if info is None:
            raise NotFoundError(f"model {self.name!r} has no layer {name!r} to project from")
        return info

    def last_conv_layer(self) -> str:
        """The last layer that is a convolution (the default for occlusion's feature map)."""
        convs = [info.name for info in self._layers if "Conv" in info.kind]
        return convs[-1] if convs else self._layers[-1].name

    def _inspect_layers(self) -> list[LayerInfo]:
        size = self.input_size
        image = torch.zeros(1, 3, size, size, device=self.device, requires_grad=True)
        record = self._record_tensor(image)
        modules = dict(self.model.module.named_modules())
        order = {name: index for index, name in enumerate(modules)}
        facts = path_facts(record.outputs, record.image)
        kinds = {name: type(module).__name__ for name, module in modules.items()} | {units.LOGITS: "Logits"}
        self._unit_layers, self._unit_aliases = units.unit_starts(record.outputs, kinds, facts, size, order)
        infos = []
        four_d = {name: output for name, output in record.outputs.items() if output.dim() == 4}
        for name, output in sorted(four_d.items(), key=lambda item: order[item[0]]):
            _, channels, height, width = output.shape
            field_ = receptive_field(output, record.image, size)
            here = facts[name]
            infos.append(
                LayerInfo(
                    name,
                    type(modules[name]).__name__,
                    int(channels),
                    int(height),
                    int(width),
                    field_,
                    has_switches=here.has_switches,
                    rules_covered=tuple(sorted(here.covered)),
                    rules_uncovered=tuple(sorted(here.uncovered)),
                )
            )
        return infos

    # ---- forward passes -----------------------------------------------------------
    def prepare(self, image: Image.Image) -> PreparedImage:
        """Apply the model's preprocessing to a PIL image (docs/architecture.md "Preprocessing")."""
        return prepare_image(image, self.input_size, self.model.mean, self.model.std, self.model.crop_pct)

    def _record_tensor(self, tensor: torch.Tensor, stop_after: str | None = None) -> _Record:
        """The recorded forward pass: autograd graph, every 4-D output, rule-aware activations.

        With `stop_after` (a click's pass), only that layer's output is recorded and the
        pass ends there: the network up to that layer with autograd and the rule functions,
        nothing else. The whole pass costs about one plain forward pass with autograd:
        outputs are kept as they are, except for the layers an in-place operation further
        down rewrites (the first pass copies every output and learns which those are; a
        later pass that finds a kept output rewritten learns it too and is redone)."""
        with self._lock:
            return self._record_pass(tensor, stop_after)

    def _record_pass(self, tensor: torch.Tensor, stop_after: str | None) -> _Record:
        for _ in range(2):
            box = RuleBox()
            image = tensor.detach().to(self.device).requires_grad_(True)
            copied = self._copied_layers
            logits: torch.Tensor | None = None
            names = None if stop_after is None else [stop_after]  # a click's pass: its layer only
            capture = LayerCapture(self.model.module, names, clone=copied, linear=True, stop_after=stop_after)
            with contextlib.suppress(StopForward), self._computing(), torch.enable_grad(), capture, RuleMode(box):
                logits = self.model.module(image)
            self.stats.forward_passes += 1
            rewritten = capture.rewritten()
            if copied is None:
                self._copied_layers = capture.changed_downstream()
            elif rewritten:
                self._copied_layers = copied | rewritten
                continue
            outputs = dict(capture.outputs)
            if logits is not None and logits.dim() == 2 and units.LOGITS not in outputs:
                outputs[units.LOGITS] = logits  # the class scores, a projection start
            held = held_bytes([image, *outputs.values()], self._model_storages)
            return _Record(image, None if logits is None else logits.detach(), outputs, box, held)
        raise RuntimeError("the recorded forward pass keeps rewriting its outputs in place")  # pragma: no cover

    def _record(self, image: PreparedImage, layer: str | None = None) -> _Record:
        """The image's recorded pass that holds `layer` (None: the whole pass): cached, being
        made by another thread (wait for it), or made here. An image's first record holds the
        layer asked for alone and stops there; a second one (another layer) is whole."""
        while True:
            with self._cache_lock:
                record = self._lookup(image.key)
                if record is not None and record.covers(layer):
                    self.stats.cache_hits += 1
                    return record
                pending = self._pending.get(image.key)
                mine = pending is None
                if pending is None:
                    pending = self._pending[image.key] = _Pending()
            if not mine:
                pending.done.wait()
                if pending.record is not None and pending.record.covers(layer):
                    return pending.record
                continue  # the other thread failed, or recorded less than `layer` needs: try again
            try:
                first = record is None and layer in self._module_names  # (the logits are no module's)
                record = self._record_tensor(image.tensor, layer if first else None)
                pending.record = record
                with self._cache_lock:
                    self._keep(image.key, record)
                return record
            finally:
                with self._cache_lock:
                    del self._pending[image.key]
                pending.done.set()

    def record_together(self, images: Sequence[PreparedImage], layer: str | None = None) -> list[int]:
        """Record in shared forward passes those of `images` that have no record and that no other
        thread is recording; returns how many images each pass recorded (empty: none to record).

        At most `shared_pass_images` images per pass (more are split evenly into several passes):
        their tensors are stacked into one batch and recorded as `_record` records one image,
        stopping at `layer` as a first click's pass does (None or `logits`: the whole pass). Each
        image's record is then a view of the batch with its sample index. The images left out are
        the cached ones (also those whose record lacks `layer`: `_record` records their whole pass
        alone, as for any second click) and those another thread is recording (`_record` waits
        for it). One image alone is recorded exactly as `_record` would record it.

        The cache holds a shared pass as one record of the batch's bytes (engine/memory.py over
        the batch's graph, counted once whatever the number of images): it is used, and ages,
        whenever one of its images is; it leaves as a whole, when it is the least recently used
        or when every image it serves has been given a whole record of its own. Any backward
        pass through it runs over all N samples (see `share_forward`)."""
        if layer is not None:
            self.start(layer)
        return self._record_together(images, layer)[0]

    def _record_together(
        self, images: Sequence[PreparedImage], layer: str | None
    ) -> tuple[list[int], dict[str, _Record]]:
        """`record_together`, and the records it made by image key (a pass too large to be cached
        is still used by the request that made it)."""
        claimed: dict[str, tuple[PreparedImage, _Pending]] = {}
        with self._cache_lock:
            for image in images:
                if image.key in claimed or image.key in self._pending or self._lookup(image.key) is not None:
                    continue
                pending = self._pending[image.key] = _Pending()
                claimed[image.key] = (image, pending)
        work = list(claimed.values())
        passes = -(-len(work) // max(self.shared_pass_images, 1))
        sizes = [len(work) // passes + (1 if index < len(work) % passes else 0) for index in range(passes)]
        made: dict[str, _Record] = {}
        stop = layer if layer in self._module_names else None  # (the logits are no module's: the whole pass)
        try:
            start = 0
            for size in sizes:
                made.update(self._record_chunk(work[start : start + size], stop))
                start += size
        finally:
            with self._cache_lock:
                for key in claimed:
                    del self._pending[key]
            for _, pending in work:
                pending.done.set()
        return sizes, made

    def _record_chunk(self, chunk: list[tuple[PreparedImage, _Pending]], stop: str | None) -> dict[str, _Record]:
        if len(chunk) == 1:
            ((image, pending),) = chunk
            record = pending.record = self._record_tensor(image.tensor, stop)
            with self._cache_lock:
                self._keep(image.key, record)
            return {image.key: record}
        record = self._record_tensor(torch.cat([image.tensor for image, _ in chunk]), stop)
        record.shared = ("shared", next(self._pass_ids))
        members: dict[str, _Record] = {}
        for sample, (image, pending) in enumerate(chunk):
            members[image.key] = pending.record = replace(record, sample=sample)
        with self._cache_lock:
            self.stats.shared_passes += 1
            self.stats.shared_images += len(chunk)
            self.stats.shared_pass_sizes[len(chunk)] = self.stats.shared_pass_sizes.get(len(chunk), 0) + 1
            self._keep_shared(record, list(members))
        log.debug(
            "recorded %d images of %s in one pass (%s, %.1f MiB)",
            len(chunk),
            self.name,
            f"up to {stop}" if stop is not None else "whole",
            record.nbytes / MiB,
        )
        return members

    def _lookup(self, key: str) -> _Record | None:
        """The image's cached record: its own, else its view of a cached shared pass (cache lock held)."""
        record = self._cache.get(key)
        if record is not None:
            return record
        entry = self._shared_index.get(key)
        if entry is None:
            return None
        shared = self._cache.get(entry[0])
        if shared is None:  # the shared pass has left the cache
            del self._shared_index[key]
            return None
        return replace(shared, sample=entry[1])

    def _keep(self, key: str, record: _Record) -> None:
        """Cache an image's own record, evicting the least recently used ones beyond the bounds (cache
        lock held). A shared pass no image is served by any more (this one had the last view) leaves."""
        try:
            self._cache[key] = record
        except ValueError:  # larger than the whole bound: used for this request only
            self.stats.not_cached += 1
            return
        entry = self._shared_index.pop(key, None)
        if entry is not None and all(other[0] != entry[0] for other in self._shared_index.values()):
            self._cache.pop(entry[0], None)
        self._trim()

    def _keep_shared(self, record: _Record, keys: list[str]) -> None:
        """Cache a shared pass (one record, its bytes once) and index its images (cache lock held)."""
        assert record.shared is not None
        try:
            self._cache[record.shared] = record
        except ValueError:  # larger than the whole bound: used for this request only
            self.stats.not_cached += 1
            return
        # forget the images of passes that have left the cache
        self._shared_index = {k: v for k, v in self._shared_index.items() if v[0] in self._cache}
        for sample, key in enumerate(keys):
            self._shared_index[key] = (record.shared, sample)
        self._trim()

    def _trim(self) -> None:
        while self.cache_size is not None and len(self._cache) > max(self.cache_size, 1):
            self._cache.popitem()

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()
            self._shared_index.clear()
            self._logits.clear()
            self._maps.clear()

    def memory(self) -> CacheMemory:
        """Records cached now and the bytes they hold, against the bound."""
        with self._cache_lock:
            return CacheMemory(len(self._cache), int(self._cache.currsize), int(self._cache.maxsize))

    @property
    def lock(self) -> threading.RLock:
        """The lock the engine holds for each forward pass (one batch; on CUDA, every computation)."""
        return self._lock

    def infer(self, batch: torch.Tensor, taps: Iterable[Tap] = ()) -> tuple[torch.Tensor, dict[Tap, torch.Tensor]]:
        """One no-grad forward pass of an N×3×S×S batch: the logits and what each tap captured
        (on the engine's device; a tap whose module was not reached is absent). The lock is
        held for this batch only; prepare the batch before calling."""
        taps = list(dict.fromkeys(taps))
        modules = dict(self.model.module.named_modules())
        for tap in taps:
            if not tap.module or tap.module not in modules:
                raise NotFoundError(f"model {self.name!r} has no module {tap.module!r}")
        batch = batch.to(self.device)
        with self._computing(), torch.no_grad(), LayerCapture(self.model.module, taps=taps) as capture:
            logits = self.model.module(batch)
            self.stats.inference_passes += 1
        return logits, capture.tapped

    def forward_batch(
        self, batch: torch.Tensor, layers: Sequence[str] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`infer` with a tap on each named layer's output (4-D layers only), keyed by name."""
        for name in layers:
            self.layer(name)
        taps = {name: Tap(name) for name in layers}
        logits, tapped = self.infer(batch, taps.values())
        return logits, {name: tapped[tap] for name, tap in taps.items()}

    # ---- predictions and activations ----------------------------------------------
    def _cached_record(self, image: PreparedImage, layer: str | None) -> _Record | None:
        """The image's cached record if it holds `layer`'s output (None: the logits)."""
        with self._cache_lock:
            record = self._lookup(image.key)
            if record is None or not record.covers(layer):
                return None
            self.stats.cache_hits += 1
            return record

    def logits(self, image: PreparedImage) -> torch.Tensor:
        """The model's logits for the image (1-D, on the CPU): from its recorded pass when a
        whole one is cached, else from a no-grad pass (which records no graph)."""
        record = self._cached_record(image, None)
        if record is not None and record.logits is not None:
            return record.logits[record.sample].float().cpu()
        with self._cache_lock:
            cached = self._logits.get(image.key)
        if cached is not None:
            return cached
        logits, _ = self.infer(image.tensor)
        result = logits[0].float().cpu()
        with self._cache_lock:
            self._logits[image.key] = result
        return result

    def probabilities(self, image: PreparedImage) -> torch.Tensor:
        return torch.softmax(self.logits(image), dim=0)

    def predict(self, image: PreparedImage, top: int = 5) -> list[Prediction]:
        if top < 1:
            raise InvalidRequestError("top must be at least 1")
        probabilities = self.probabilities(image)
        values, indices = probabilities.topk(min(top, probabilities.numel()))
        return [
            Prediction(int(i), self.labels[int(i)], float(v))
            for v, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]

    def activations(self, image: PreparedImage, layer: str) -> torch.Tensor:
        """The layer's feature maps for the image, C×H×W on the CPU: from its recorded pass
        when a cached one holds the layer, else from a no-grad pass (which records no graph)."""
        self.layer(layer)
        record = self._cached_record(image, layer)
        if record is not None:
            return record.outputs[layer][record.sample].detach().float().cpu()
        with self._cache_lock:
            maps = self._maps.get((image.key, layer))
        if maps is not None:
            return maps
        tap = Tap(layer)
        _, tapped = self.infer(image.tensor, [tap])
        maps = tapped[tap][0].float().cpu()
        with self._cache_lock, contextlib.suppress(ValueError):  # ValueError: larger than the whole bound
            self._maps[(image.key, layer)] = maps
        return maps

    # ---- projections ----------------------------------------------------------------
    def resolve_mode(self, layer: str, mode: str) -> Rule:
        """The rule a projection of `layer` uses for `mode` (`auto`: see `LayerInfo.auto_mode`)."""
        info = self.start(layer)
        if mode not in MODES:
            raise InvalidRequestError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        if mode == "auto":
            return info.auto_mode
        return mode  # type: ignore[return-value]

    def _validate(self, layer: str, seeds: Sequence[Seed]) -> LayerInfo:
        info = self.start(layer)
        if not seeds:
            raise InvalidRequestError("no seeds to project")
        if info.units is not None:
            units.validate_unit_seeds(info, seeds)
            return info
        for seed in seeds:
            if not 0 <= seed.channel < info.channels:
                raise InvalidRequestError(
                    f"channel {seed.channel} is out of range for layer {layer!r} (0..{info.channels - 1})"
                )
            if seed.position is not None:
                y, x = seed.position
                if not (0 <= y < info.height and 0 <= x < info.width):
                    raise InvalidRequestError(
                        f"position ({y}, {x}) is outside layer {layer!r} ({info.height}×{info.width})"
                    )
            elif seed.select not in SELECTS:
                raise InvalidRequestError(f"unknown select {seed.select!r}; use max or map")
        return info

    def project(
        self,
        image: PreparedImage,
        layer: str,
        channel: int,
        mode: Mode = "deconvnet",
        select: Select = "max",
        position: tuple[int, int] | None = None,
    ) -> Projection:
        """Project one channel's activation(s) down to pixel space (docs/deconvnet.md). On a 2-D start
        (`logits`, a linear layer) `channel` is the unit (class) index, `select` is ignored and
        `position` must be None or (0, 0) (engine/units.py)."""
        return self.project_many(image, layer, [Seed(channel, select, position)], mode)[0]

    def project_many(
        self, image: PreparedImage, layer: str, seeds: Sequence[Seed], mode: Mode = "deconvnet"
    ) -> list[Projection]:
        """Project many seeds of one image in one backward pass; one projection per seed."""
        return self._project(layer, [(image, seeds)], mode, share=False)[0]

    def project_images(
        self, layer: str, requests: Sequence[tuple[PreparedImage, Sequence[Seed]]], mode: Mode = "deconvnet"
    ) -> list[list[Projection]]:
        """Seeds on several images (each image once), one layer and mode: each request's projections.

        With `share_forward`, the images without a record are first recorded together
        (`record_together`), and the seeds on the images of one shared pass go back in one
        backward pass: row k of its seed tensor holds the k-th seed of every image, each in its
        own sample (the network treats the samples of a batch independently in eval mode, so
        each sample's gradient is its own seed's projection). Without it, or for an image with a
        record of its own, as `project_many` does, image by image."""
        keys = [image.key for image, _ in requests]
        if len(set(keys)) != len(keys):
            raise InvalidRequestError("an image appears twice in one project_images call: give its seeds together")
        return self._project(layer, requests, mode, share=self.share_forward)

    def _project(
        self, layer: str, requests: Sequence[tuple[PreparedImage, Sequence[Seed]]], mode: Mode, share: bool
    ) -> list[list[Projection]]:
        """Each request's projections; with `share`, the images without a record are recorded together first."""
        rule = self.resolve_mode(layer, mode)
        if not requests:
            return []
        for _, seeds in requests:  # every request's seeds checked before any work
            info = self._validate(layer, seeds)
        made = self._record_together([image for image, _ in requests], layer)[1] if share and len(requests) > 1 else {}
        answers: list[list[Projection]] = [[] for _ in requests]
        passes: dict[PassKey, list[tuple[int, _Record]]] = {}  # the requests on each shared pass
        for index, (image, seeds) in enumerate(requests):
            record = made.get(image.key)
            if record is None:
                record = self._record(image, layer)
            if record.shared is None:
                answers[index] = self._project_own(layer, info, rule, record, seeds)
            else:
                passes.setdefault(record.shared, []).append((index, record))
        for members in passes.values():
            done = self._project_shared(layer, info, rule, [(record, requests[index][1]) for index, record in members])
            for (index, _), projections in zip(members, done, strict=True):
                answers[index] = projections
        return answers

    def _project_own(
        self, layer: str, info: LayerInfo, rule: Rule, record: _Record, seeds: Sequence[Seed]
    ) -> list[Projection]:
        """Seeds on an image's own record: one backward pass (on the CPU one per seed, see `_backward`)."""
        output = record.outputs[layer]
        if info.units is not None:
            grads, values, positions = units.unit_seed_tensor(output, seeds)
        else:
            grads, values, positions = self._seed_tensor(output, seeds)
        projections = self._go_back(layer, record, output, grads, rule)
        return self._projections(layer, info, rule, seeds, values, positions, list(projections))

    def _project_shared(
        self, layer: str, info: LayerInfo, rule: Rule, members: list[tuple[_Record, Sequence[Seed]]]
    ) -> list[list[Projection]]:
        """Seeds on images of one shared pass (each image once): one backward pass, rows packed."""
        record = members[0][0]
        output = record.outputs[layer]
        grads = torch.zeros(
            (max(len(seeds) for _, seeds in members), *output.shape), dtype=output.dtype, device=output.device
        )
        seeded = []
        for member, seeds in members:
            if info.units is not None:
                _, values, positions = units.unit_seed_tensor(output, seeds, member.sample, grads)
            else:
                _, values, positions = self._seed_tensor(output, seeds, member.sample, grads)
            seeded.append((values, positions))
        picks = [(row, member.sample) for member, seeds in members for row in range(len(seeds))]
        projections = list(self._go_back(layer, record, output, grads, rule, picks))
        answers = []
        start = 0
        for (_, seeds), (values, positions) in zip(members, seeded, strict=True):
            mine = projections[start : start + len(seeds)]
            answers.append(self._projections(layer, info, rule, seeds, values, positions, mine))
            start += len(seeds)
        return answers

    @staticmethod
    def _projections(
        layer: str,
        info: LayerInfo,
        rule: Rule,
        seeds: Sequence[Seed],
        values: list[float],
        positions: list[tuple[int, int]],
        projections: list[torch.Tensor],
    ) -> list[Projection]:
        def selected(seed: Seed) -> str:
            return "unit" if info.units is not None else "position" if seed.position else seed.select

        return [
            Projection(layer, seed.channel, rule, selected(seed), value, pos, proj)
            for seed, value, pos, proj in zip(seeds, values, positions, projections, strict=True)
        ]

    def _go_back(
        self,
        layer: str,
        record: _Record,
        output: torch.Tensor,
        grads: torch.Tensor,
        rule: Rule,
        picks: list[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        """Run `_backward` (`_backward_shared` with `picks`, on a shared pass) with the rule held for
        this call: on the CPU in one of `workers` slots, outside the forward lock; on CUDA under the
        lock, with the rule on the record for autograd's device thread (see the module docstring).
        K×3×S×S on the CPU."""

        def back() -> torch.Tensor:
            if picks is None:
                return self._backward(layer, output, record.image, grads, rule)
            return self._backward_shared(output, record.image, grads, picks)

        if self.device.type == "cuda":
            with self._computing(), using_rule(rule):
                record.box.rule = rule
                return back().float().cpu()
        with self._backward_slots, using_rule(rule):
            return back().float().cpu()

    def _backward(
        self, layer: str, output: torch.Tensor, image: torch.Tensor, grads: torch.Tensor, rule: Rule
    ) -> torch.Tensor:
        """K seeds -> K×3×S×S: the one place a projection goes back down (`rule` is also held
        for this thread, `rules.active_rule()`). On CUDA one vmapped backward pass over the
        recorded graph; on the CPU, where the transposed convolutions are compute-bound and
        batching them gains nothing (measured), one backward pass per seed over the same
        graph, over the seed's receptive field where that is planned to be less work (cone.py)."""
        if len(grads) > 1 and image.device.type == "cuda":
            (result,) = torch.autograd.grad(output, image, grads, retain_graph=True, is_grads_batched=True)
            self._count_backward(1)
            return result.reshape(len(grads), *image.shape[1:])
        results = []
        for grad in grads:
            cropped = self._cone.backward_if_cheaper(layer, output, image, grad, rule)  # None: dense is cheaper
            if cropped is None:
                (result,) = torch.autograd.grad(output, image, grad, retain_graph=True)
            else:
                result = cropped
                with self._cache_lock:
                    self.stats.cone_passes += 1
            results.append(result[0])
        self._count_backward(len(grads))
        return torch.stack(results)

    def _backward_shared(
        self, output: torch.Tensor, image: torch.Tensor, grads: torch.Tensor, picks: list[tuple[int, int]]
    ) -> torch.Tensor:
        """R rows of seeds on a shared pass (each R×N×..., one seed per sample at most) -> the
        projections at `picks` ((row, sample) each), M×3×S×S. Always the dense pass over the whole
        batch: the cone (cone.py) crops one sample's receptive field and knows nothing of batches.
        On CUDA one vmapped backward pass over the rows, or several when rows × N exceed
        `SHARED_BACKWARD_SAMPLES` (a bound on its memory); on the CPU one per row (each carrying a
        seed of every image that has one in that row)."""
        at_once = self._rows_at_once(image)
        projections = torch.empty((len(picks), *image.shape[1:]), dtype=image.dtype, device=image.device)
        passes = 0
        for start in range(0, len(grads), at_once):
            rows = grads[start : start + at_once]
            if len(rows) > 1:
                (result,) = torch.autograd.grad(output, image, rows, retain_graph=True, is_grads_batched=True)
            else:
                (result,) = torch.autograd.grad(output, image, rows[0], retain_graph=True)
                result = result[None]
            passes += 1
            for index, (row, sample) in enumerate(picks):
                if start <= row < start + len(rows):
                    projections[index] = result[row - start, sample]
        self._count_backward(passes)
        return projections

    @staticmethod
    def _rows_at_once(image: torch.Tensor) -> int:
        """Rows of seeds one backward pass over a shared N-image pass takes: on CUDA as many as
        `SHARED_BACKWARD_SAMPLES` allows (vmapped), on the CPU one (see `_backward`)."""
        return max(1, SHARED_BACKWARD_SAMPLES // len(image)) if image.device.type == "cuda" else 1

    def _count_backward(self, passes: int) -> None:
        with self._cache_lock:
            self.stats.backward_passes += passes

    @staticmethod
    def _seed_tensor(
        output: torch.Tensor, seeds: Sequence[Seed], sample: int = 0, grads: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[float], list[tuple[int, int]]]:
        """Seed k in row k of a K×N×C×H×W gradient (written into `grads` if given), at `sample`."""
        activations = output.detach()[sample]
        width = activations.shape[-1]
        if grads is None:
            grads = torch.zeros((len(seeds), *output.shape), dtype=output.dtype, device=output.device)
        values: list[float] = []
        positions: list[tuple[int, int]] = []
        for k, seed in enumerate(seeds):
            channel_map = activations[seed.channel]
            if seed.position is None and seed.select == "map":
                grads[k, sample, seed.channel] = channel_map
                values.append(float(channel_map.sum()))
                positions.append((-1, -1))
                continue
            if seed.position is None:
                flat = int(torch.argmax(channel_map))
                y, x = divmod(flat, width)
            else:
                y, x = seed.position
            value = channel_map[y, x]
            grads[k, sample, seed.channel, y, x] = value
            values.append(float(value))
            positions.append((y, x))
        return grads, values, positions
