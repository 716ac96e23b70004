"""`Client`: the convscope REST API (docs/api.md) from Python, one method per operation, on httpx.

Synchronous. One `httpx.Client` per `Client`, so cookies the server sets are sent back on later
calls; a `token` goes out as `Authorization: Bearer <token>`. Every refused request raises
`ApiError` with the server's status and `detail`; jobs are waited on with progress through a
`convscope.tasks.Task` and cancelled on the server when the task asks to stop.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast
from urllib.parse import quote

import httpx
import numpy as np
from PIL import Image

from convscope.client.errors import ApiError
from convscope.client.types import (
    Activations,
    Health,
    Job,
    Label,
    LayerInfo,
    Mode,
    ModelInfo,
    Occlusion,
    OcclusionMethod,
    Prediction,
    Projection,
    SampleInfo,
    ScanInfo,
    ScanRoot,
    Select,
    Top,
    Upload,
)
from convscope.tasks import Cancelled, Task, as_task

ImageInput = str | os.PathLike[str] | bytes | BinaryIO | Image.Image
FINISHED = ("succeeded", "failed", "cancelled")


def _segment(value: str) -> str:
    return quote(str(value), safe="")


def _decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _batch_entry(entry: Mapping[str, Any]) -> Projection:
    """One entry of POST .../projections: its data-URL PNG decoded, its seed as `projection` gives it."""
    data = base64.b64decode(str(entry["png"]).split(",", 1)[1])
    headers = {
        "X-Seed-Value": repr(float(entry["seed_value"])),
        "X-Seed-Y": str(entry["seed_y"]),
        "X-Seed-X": str(entry["seed_x"]),
        "X-Mode": str(entry["mode"]),
    }
    return Projection(
        image=_decode_png(data),
        seed_value=float(entry["seed_value"]),
        seed_y=int(entry["seed_y"]),
        seed_x=int(entry["seed_x"]),
        mode=str(entry["mode"]),
        headers=headers,
    )


def _file_part(image: ImageInput, filename: str | None) -> tuple[str, bytes, str]:
    """(filename, bytes, content type) of the multipart `file` field."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return filename or "image.png", buffer.getvalue(), "image/png"
    if isinstance(image, bytes | bytearray | memoryview):
        return filename or "image", bytes(image), "application/octet-stream"
    if hasattr(image, "read"):
        name = Path(str(getattr(image, "name", "") or "image")).name
        return _file_part(image.read(), filename or name)
    path = Path(image)
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return filename or path.name, path.read_bytes(), kind


class Client:
    """A convscope server at `base_url` (e.g. ``http://127.0.0.1:8000``).

    `model` arguments default to the server's default model (asked once, then remembered).
    Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout: float = 120.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        all_headers = {"Accept": "application/json", **(headers or {})}
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=all_headers, timeout=timeout, transport=transport
        )
        self._default_model: str | None = None

    # ---- plumbing -------------------------------------------------------------------------------------
    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request; a 4xx/5xx answer raises `ApiError` with the server's detail."""
        response = self.http.request(method, url, **kwargs)
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return self.request(method, url, **kwargs).json()

    def _png(self, url: str, params: Mapping[str, Any] | None = None) -> httpx.Response:
        return self.request("GET", url, params=params, headers={"Accept": "image/png"})

    def _model(self, model: str | None) -> str:
        if model is not None:
            return model
        if self._default_model is None:
            models = self.models()
            self._default_model = next((m["name"] for m in models if m["default"]), models[0]["name"])
        return self._default_model

    def _image_url(self, model: str | None, image_id: str, tail: str) -> str:
        return f"/api/models/{_segment(self._model(model))}/images/{_segment(image_id)}/{tail}"

    # ---- server ---------------------------------------------------------------------------------------
    def health(self) -> Health:
        """`{"status": "ok"}` when ready; `loading` or `failed` (with `detail`) otherwise — never raises for 503."""
        response = self.http.get("/api/health")
        if response.status_code not in (200, 503):
            raise ApiError.from_response(response)
        return cast(Health, response.json())

    def wait_ready(self, timeout: float = 300.0, poll: float = 0.5) -> None:
        """Wait until every model is loaded (connection errors count as not yet); ApiError if loading failed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = self.health()
            except httpx.TransportError:
                health = {"status": "loading"}
            if health.get("status") == "ok":
                return
            if health.get("status") == "failed":
                raise ApiError(503, health.get("detail", "the models failed to load"))
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server at {self.http.base_url} was not ready after {timeout:g} s")
            time.sleep(poll)

    # ---- models, layers, samples, images --------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return cast(list[ModelInfo], self._json("GET", "/api/models"))

    def layers(self, model: str | None = None) -> list[LayerInfo]:
        """Every layer with a 4-D output, in forward order, with its shape and receptive field."""
        return cast(list[LayerInfo], self._json("GET", f"/api/models/{_segment(self._model(model))}/layers"))

    def labels(self, model: str | None = None) -> list[Label]:
        return cast(list[Label], self._json("GET", f"/api/models/{_segment(self._model(model))}/labels"))

    def samples(self) -> list[SampleInfo]:
        """The bundled photos; their ids work as `image_id` everywhere."""
        return cast(list[SampleInfo], self._json("GET", "/api/samples"))

    def upload(self, image: ImageInput, filename: str | None = None) -> Upload:
        """Upload an image file (a path or an open binary file), its bytes, or a PIL image; returns its
        id and original size (the server decodes it: PNG, JPEG, GIF, WebP, BMP, TIFF...)."""
        name, data, kind = _file_part(image, filename)
        return cast(Upload, self._json("POST", "/api/images", files={"file": (name, data, kind)}))

    def image(self, image_id: str, model: str | None = None) -> Image.Image:
        """The S×S RGB input the model sees for an image."""
        params = {"model": model} if model is not None else None
        return _decode_png(self._png(f"/api/images/{_segment(image_id)}", params).content)

    # ---- per image --------------------------------------------------------------------------------------
    def predictions(self, image_id: str, model: str | None = None, top: int = 5) -> list[Prediction]:
        return cast(
            list[Prediction], self._json("GET", self._image_url(model, image_id, "predictions"), params={"top": top})
        )

    def activations(self, image_id: str, layer: str, model: str | None = None) -> Activations:
        """Per-channel max, sum and argmax of a layer, and where its sprite is."""
        url = self._image_url(model, image_id, "activations")
        return cast(Activations, self._json("GET", url, params={"layer": layer}))

    def activation_maps(self, image_id: str, layer: str, model: str | None = None) -> np.ndarray:
        """Every channel's map from the sprite PNG: uint8, shape (channels, tile, tile).

        Values are the layer's activations scaled by the largest one in the layer (0 and below: 0,
        the largest: 255); maps smaller than the tile are scaled up, nearest neighbour."""
        info = self.activations(image_id, layer, model)
        sprite = info["sprite"]
        pixels = np.asarray(_decode_png(self._png(sprite["url"]).content).convert("L"))
        tile, columns = sprite["tile"], sprite["columns"]
        maps = [
            pixels[(c // columns) * tile : (c // columns + 1) * tile, (c % columns) * tile : (c % columns + 1) * tile]
            for c in range(info["channels"])
        ]
        return np.stack(maps)

    def projection(
        self,
        image_id: str,
        layer: str,
        channel: int,
        model: str | None = None,
        *,
        mode: Mode = "deconvnet",
        select: Select = "max",
        y: int | None = None,
        x: int | None = None,
    ) -> Projection:
        """The deconvnet projection of one feature map (or of unit `y`, `x`) as an S×S RGB image."""
        params: dict[str, Any] = {"layer": layer, "channel": channel, "mode": mode, "select": select}
        if y is not None or x is not None:
            params.update(y=y, x=x)
        response = self._png(self._image_url(model, image_id, "projection"), params)
        seeds = {name: response.headers[name] for name in ("X-Seed-Value", "X-Seed-Y", "X-Seed-X")}
        if "X-Mode" in response.headers:
            seeds["X-Mode"] = response.headers["X-Mode"]
        return Projection(
            image=_decode_png(response.content),
            seed_value=float(seeds["X-Seed-Value"]),
            seed_y=int(seeds["X-Seed-Y"]),
            seed_x=int(seeds["X-Seed-X"]),
            mode=seeds.get("X-Mode"),
            headers=seeds,
        )

    def batch_projections(
        self,
        image_id: str,
        layer: str,
        seeds: list[Mapping[str, Any]],
        model: str | None = None,
        *,
        mode: Mode = "deconvnet",
    ) -> list[Projection]:
        """Many projections of one image and layer in one request (one recorded forward pass on the
        server); `seeds` are `{"channel": c}`, optionally with `"select"` or `"y"` and `"x"`. One
        `Projection` per seed, in order, equal to what `projection` returns for the same seed."""
        body = {"layer": layer, "mode": mode, "seeds": [dict(seed) for seed in seeds]}
        entries = self._json("POST", self._image_url(model, image_id, "projections"), json=body)
        return [_batch_entry(entry) for entry in entries]

    def occlusion(
        self,
        image_id: str,
        model: str | None = None,
        *,
        size: int = 32,
        stride: int = 16,
        target: int | None = None,
        layer: str | None = None,
        method: OcclusionMethod = "auto",
        approx: float | None = None,
        adaptive: float | None = None,
        task: Task | None = None,
        timeout: float | None = None,
        poll: float = 0.25,
    ) -> Occlusion:
        """Occlusion maps (paper Fig. 7). Many positions run as a server job: this waits for it,
        reporting progress to `task` and cancelling the job when `task.should_stop()`.

        `method`: "incremental" reruns only the patch of each layer the occluder can change (exact),
        "dense" the whole model per position, "auto" (the server's default) incremental where it plans
        at most 2/3 of dense's arithmetic; the answer's `method`, `planned_ratio` and `note` say what
        ran. Opt-in approximations, labelled `approximate` in the answer: `approx` caps each layer's
        recomputed patch at that share τ of its map (0 < τ ≤ 1; not with "dense"), `adaptive`
        occludes at twice the stride and then at the stride only in that share of the cells where
        the target's probability dropped most (0 < share ≤ 1). The server checks every argument:
        a bad one raises `ApiError` (422) with its detail."""
        body = {
            "size": size,
            "stride": stride,
            "target": target,
            "layer": layer,
            "method": method,
            "approx": approx,
            "adaptive": adaptive,
        }
        response = self.request("POST", self._image_url(model, image_id, "occlusion"), json=body)
        if response.status_code == 202:
            job = self.wait_job(cast(Job, response.json()), task=task, timeout=timeout, poll=poll)
            return cast(Occlusion, job["result"])
        return cast(Occlusion, response.json())

    # ---- scans (paper Fig. 2) -------------------------------------------------------------------------
    def _scan_url(self, model: str | None, scan_id: str | None = None) -> str:
        url = f"/api/models/{_segment(self._model(model))}/scans"
        return url if scan_id is None else f"{url}/{_segment(scan_id)}"

    def scans(self, model: str | None = None) -> list[ScanInfo]:
        return cast(list[ScanInfo], self._json("GET", self._scan_url(model)))

    def scan(self, scan_id: str, model: str | None = None) -> ScanInfo:
        return cast(ScanInfo, self._json("GET", self._scan_url(model, scan_id)))

    def start_scan(
        self,
        model: str | None = None,
        *,
        samples: bool = False,
        folder: str | None = None,
        layers: list[str] | None = None,
        top: int = 9,
    ) -> Job:
        """Scan the sample photos (`samples=True`) or a folder under a server scan root; returns the job."""
        body = {"samples": samples, "folder": folder, "layers": layers, "top": top}
        return cast(Job, self._json("POST", self._scan_url(model), json=body))

    def resume_scan(self, scan_id: str, model: str | None = None) -> Job:
        """Finish an interrupted scan from its last checkpoint; returns the job."""
        return cast(Job, self._json("POST", f"{self._scan_url(model, scan_id)}/resume"))

    def scan_roots(self) -> list[ScanRoot]:
        """The folders this server may scan (`start_scan(folder=...)` values)."""
        return cast(list[ScanRoot], self._json("GET", "/api/scan-roots"))

    def top(self, scan_id: str, layer: str, channel: int, model: str | None = None, *, mode: Mode = "deconvnet") -> Top:
        """The top-k of one channel in a scan, with the URLs of each entry's crop and projection
        (in `mode`; the mode used, `auto` resolved, is the answer's `mode`)."""
        url = f"{self._scan_url(model, scan_id)}/top"
        return cast(Top, self._json("GET", url, params={"layer": layer, "channel": channel, "mode": mode}))

    def top_image(
        self,
        scan_id: str,
        layer: str,
        channel: int,
        rank: int,
        kind: Literal["crop", "projection"] = "projection",
        model: str | None = None,
        *,
        mode: Mode = "deconvnet",
    ) -> Image.Image:
        """The receptive-field crop or the projection (in `mode`) of one top-k entry."""
        url = f"{self._scan_url(model, scan_id)}/top/{int(rank)}/{kind}.png"
        return _decode_png(self._png(url, {"layer": layer, "channel": channel, "mode": mode}).content)

    # ---- jobs ---------------------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        return cast(list[Job], self._json("GET", "/api/jobs"))

    def job(self, job_id: str) -> Job:
        return cast(Job, self._json("GET", f"/api/jobs/{_segment(job_id)}"))

    def cancel_job(self, job_id: str) -> Job:
        """Ask the server to stop a job (a queued one at once, a running one at its next step)."""
        return cast(Job, self._json("DELETE", f"/api/jobs/{_segment(job_id)}"))

    def wait_job(
        self,
        job: str | Job,
        *,
        task: Task | None = None,
        timeout: float | None = None,
        poll: float = 0.25,
        check: bool = True,
    ) -> Job:
        """Poll a job (its id, or the job itself) until it finishes; returns it.

        Progress goes to `task.report(done, total)`; when `task.should_stop()` the job is cancelled on
        the server and, once it has stopped, `convscope.tasks.Cancelled` is raised. With `check` (the
        default) a failed job raises `ApiError` (the job's status and detail) and a cancelled one
        `Cancelled`; `TimeoutError` after `timeout` seconds (the job keeps running)."""
        progress = as_task(task)
        current = self.job(job if isinstance(job, str) else job["id"])
        deadline = None if timeout is None else time.monotonic() + timeout
        cancelling = False
        while current["state"] not in FINISHED:
            progress.report(current["done"], current["total"])
            if not cancelling and progress.should_stop():
                current = self.cancel_job(current["id"])
                cancelling = True
                continue
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {current['id']} is still {current['state']} after {timeout:g} s")
            time.sleep(poll)
            current = self.job(current["id"])
        progress.report(current["done"], current["total"])
        if current["state"] == "cancelled" and (check or cancelling):
            raise Cancelled(current["done"], current["total"], f"{current['kind']} job {current['id']}")
        if check and current["state"] == "failed":
            error = current["error"] or {"status": 500, "detail": "the job failed"}
            raise ApiError(error["status"], error["detail"], job=dict(current))
        return current
