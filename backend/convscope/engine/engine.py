"""The engine: one object per loaded model that predicts, records and projects.

It owns the model, the device, the list of probe-able layers (with receptive
fields) and an LRU cache of recorded forward passes, so a second projection of
the same image costs only the backward part. Every computation is serialised
by the engine's lock, so one engine can be shared by many threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image

from convscope.engine.capture import LayerCapture
from convscope.engine.receptive_field import ReceptiveField, receptive_field
from convscope.engine.rules import RULES, Rule, RuleBox, RuleMode
from convscope.errors import InvalidRequestError, NotFoundError
from convscope.images import PreparedImage, prepare_image
from convscope.models.spec import LoadedModel

Select = Literal["max", "map"]
SELECTS: tuple[Select, ...] = ("max", "map")


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str
    channels: int
    height: int
    width: int
    receptive_field: ReceptiveField  # its JSON: convscope.api.schemas.LayerResponse


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
    mode: Rule
    select: str
    seed_value: float
    seed_position: tuple[int, int]  # (y, x), or (-1, -1) for the whole map
    projection: torch.Tensor  # 3×S×S float32 on the CPU, normalised-input space


@dataclass
class _Record:
    """One recorded forward pass: the graph stays alive for repeated backward passes."""

    image: torch.Tensor
    logits: torch.Tensor
    outputs: dict[str, torch.Tensor]
    box: RuleBox


@dataclass
class EngineStats:
    forward_passes: int = 0
    backward_passes: int = 0
    cache_hits: int = 0


def set_cuda_tf32(allowed: bool) -> None:
    """Process-wide: whether CUDA convolutions and matrix products may use TF32.

    PyTorch lets cuDNN convolutions use TF32 by default; with it, projections on a GPU
    differ from the CPU's by up to 42 % of their peak (measured on an H200, gradient mode,
    EfficientNet-Lite0): a forward pass ~1e-3 off flips ReLU masks near zero. convscope
    therefore computes in full float32 unless asked for TF32. The flag is global in
    PyTorch, so the last engine created decides for the whole process."""
    torch.backends.cudnn.allow_tf32 = allowed
    torch.backends.cuda.matmul.allow_tf32 = allowed


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError("device 'cuda' was requested but CUDA is not available here")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InvalidRequestError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


@dataclass
class Engine:
    """Inspection and deconvnet projections for one model (DESIGN §3)."""

    model: LoadedModel
    device_name: str = "auto"
    cache_size: int = 8
    tf32: bool = False  # CUDA only: let convolutions use TF32 (faster, ~1e-3 off; see set_cuda_tf32)
    stats: EngineStats = field(default_factory=EngineStats)

    def __post_init__(self) -> None:
        self.device = resolve_device(self.device_name)
        if self.device.type == "cuda":
            set_cuda_tf32(self.tf32)
        self.model.module.to(self.device).eval()
        for parameter in self.model.module.parameters():
            parameter.requires_grad_(False)
        self._lock = threading.RLock()
        self._cache: OrderedDict[str, _Record] = OrderedDict()
        self._layers = self._inspect_layers()
        self._layer_index = {info.name: info for info in self._layers}

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

    def last_conv_layer(self) -> str:
        """The last layer that is a convolution (the default for occlusion's feature map)."""
        convs = [info.name for info in self._layers if "Conv" in info.kind]
        return convs[-1] if convs else self._layers[-1].name

    def _inspect_layers(self) -> list[LayerInfo]:
        size = self.input_size
        image = torch.zeros(1, 3, size, size, device=self.device, requires_grad=True)
        with self._lock:
            record = self._record_tensor(image)
        order = {name: index for index, (name, _) in enumerate(self.model.module.named_modules())}
        infos = []
        for name, output in sorted(record.outputs.items(), key=lambda item: order[item[0]]):
            _, channels, height, width = output.shape
            field_ = receptive_field(output, record.image, size)
            infos.append(LayerInfo(name, self._kinds[name], int(channels), int(height), int(width), field_))
        return infos

    # ---- forward passes -----------------------------------------------------------
    def prepare(self, image: Image.Image) -> PreparedImage:
        """Apply the model's preprocessing to a PIL image (DESIGN §2)."""
        return prepare_image(image, self.input_size, self.model.mean, self.model.std, self.model.crop_pct)

    def _record_tensor(self, tensor: torch.Tensor) -> _Record:
        box = RuleBox()
        image = tensor.detach().to(self.device).requires_grad_(True)
        with torch.enable_grad(), LayerCapture(self.model.module) as capture, RuleMode(box):
            logits = self.model.module(image)
        self.stats.forward_passes += 1
        self._kinds = capture.kinds
        return _Record(image, logits.detach(), capture.outputs, box)

    def _record(self, image: PreparedImage) -> _Record:
        record = self._cache.get(image.key)
        if record is not None:
            self._cache.move_to_end(image.key)
            self.stats.cache_hits += 1
            return record
        record = self._record_tensor(image.tensor)
        self._cache[image.key] = record
        while len(self._cache) > max(self.cache_size, 1):
            self._cache.popitem(last=False)
        return record

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    @property
    def lock(self) -> threading.RLock:
        """Held during every model computation; hold it to run your own passes safely."""
        return self._lock

    def forward_batch(
        self, batch: torch.Tensor, layers: Sequence[str] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Plain inference (no graph) on an N×3×S×S batch: logits and the named layers' outputs."""
        for name in layers:
            self.layer(name)
        with self._lock, torch.no_grad(), LayerCapture(self.model.module, layers) as capture:
            logits = self.model.module(batch.to(self.device))
        return logits, {name: capture.outputs[name] for name in layers}

    # ---- predictions and activations ----------------------------------------------
    def probabilities(self, image: PreparedImage) -> torch.Tensor:
        with self._lock:
            return torch.softmax(self._record(image).logits[0].float(), dim=0).cpu()

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
        """The layer's feature maps for the image, C×H×W on the CPU."""
        self.layer(layer)
        with self._lock:
            return self._record(image).outputs[layer][0].detach().float().cpu()

    # ---- projections ----------------------------------------------------------------
    def _validate(self, layer: str, mode: str, seeds: Sequence[Seed]) -> LayerInfo:
        info = self.layer(layer)
        if mode not in RULES:
            raise InvalidRequestError(f"unknown mode {mode!r}; use one of {', '.join(RULES)}")
        if not seeds:
            raise InvalidRequestError("no seeds to project")
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
        mode: Rule = "deconvnet",
        select: Select = "max",
        position: tuple[int, int] | None = None,
    ) -> Projection:
        """Project one channel's activation(s) down to pixel space (DESIGN §3)."""
        return self.project_many(image, layer, [Seed(channel, select, position)], mode)[0]

    def project_many(
        self, image: PreparedImage, layer: str, seeds: Sequence[Seed], mode: Rule = "deconvnet"
    ) -> list[Projection]:
        """Project many seeds of one image in one backward pass; one projection per seed."""
        self._validate(layer, mode, seeds)
        with self._lock:
            record = self._record(image)
            output = record.outputs[layer]
            grads, values, positions = self._seed_tensor(output, seeds)
            record.box.rule = mode
            projections = self._backward(output, record.image, grads).float().cpu()
        return [
            Projection(layer, seed.channel, mode, "position" if seed.position else seed.select, value, pos, proj)
            for seed, value, pos, proj in zip(seeds, values, positions, projections, strict=True)
        ]

    def _backward(self, output: torch.Tensor, image: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """K seeds -> K×3×S×S. On CUDA one vmapped backward pass over the recorded graph;
        on the CPU, where the transposed convolutions are compute-bound and batching
        them gains nothing (measured), one backward pass per seed over the same graph."""
        if len(grads) > 1 and image.device.type == "cuda":
            (result,) = torch.autograd.grad(output, image, grads, retain_graph=True, is_grads_batched=True)
            self.stats.backward_passes += 1
            return result.reshape(len(grads), *image.shape[1:])
        results = []
        for grad in grads:
            (result,) = torch.autograd.grad(output, image, grad, retain_graph=True)
            results.append(result[0])
            self.stats.backward_passes += 1
        return torch.stack(results)

    @staticmethod
    def _seed_tensor(
        output: torch.Tensor, seeds: Sequence[Seed]
    ) -> tuple[torch.Tensor, list[float], list[tuple[int, int]]]:
        activations = output.detach()[0]
        width = activations.shape[-1]
        grads = torch.zeros((len(seeds), *output.shape), dtype=output.dtype, device=output.device)
        values: list[float] = []
        positions: list[tuple[int, int]] = []
        for k, seed in enumerate(seeds):
            channel_map = activations[seed.channel]
            if seed.position is None and seed.select == "map":
                grads[k, 0, seed.channel] = channel_map
                values.append(float(channel_map.sum()))
                positions.append((-1, -1))
                continue
            if seed.position is None:
                flat = int(torch.argmax(channel_map))
                y, x = divmod(flat, width)
            else:
                y, x = seed.position
            value = channel_map[y, x]
            grads[k, 0, seed.channel, y, x] = value
            values.append(float(value))
            positions.append((y, x))
        return grads, values, positions
