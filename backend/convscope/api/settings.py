"""Server settings: environment variables with the prefix `CONVSCOPE_`, CLI flags on top.

Examples: `CONVSCOPE_MODELS=efficientnet_lite0,zfnet`, `CONVSCOPE_DEVICE=cpu`,
`CONVSCOPE_MAX_UPLOAD_BYTES=5000000`, `CONVSCOPE_FRONTEND_DIR=/srv/dashboard`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from convscope.models import DEFAULT_MODEL

MiB = 1024 * 1024
PROJECTION_WINDOW_CAP_MS = 50.0  # the longest coalescing window (api/coalesce.py): a click must not wait for company
# `testserver` is the name Starlette's in-process TestClient sends; a dotless name cannot be
# registered in public DNS, so it cannot be used for DNS rebinding.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "testserver")


def _default_scan_dir() -> Path:
    """`$XDG_CACHE_HOME/convscope/scans` (`~/.cache/convscope/scans`)."""
    import os

    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "convscope" / "scans"


def _default_studies_dir() -> Path:
    """`$XDG_CACHE_HOME/convscope/studies` (`~/.cache/convscope/studies`)."""
    import os

    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "convscope" / "studies"


def _default_frontend_dir() -> Path:
    """`frontend/` at the repository root (backend/convscope/api/settings.py -> ../../../frontend)."""
    return Path(__file__).resolve().parents[3] / "frontend"


class Settings(BaseSettings):
    """Everything the server can be told; every field is also `CONVSCOPE_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="CONVSCOPE_", extra="ignore")

    # models
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEFAULT_MODEL],
        description="models to load, registry names or package.module:callable (comma-separated in the environment)",
    )
    offer_models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["alexnet", "vgg16"],
        description="torchvision models the dashboard offers besides `models` when their ImageNet weights are cached "
        "under TORCH_HOME or downloadable; each loads on first use (comma-separated in the environment)",
    )
    pretrained: bool = Field(default=True, description="load pretrained weights (False: random weights, for tests)")
    input_size: int | None = Field(
        default=None, ge=16, le=1024, description="model input side S for every model (default: each model's own)"
    )
    preprocessing: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per-model preprocessing overrides in timm pretrained_cfg keys, e.g. "
        '{"pkg.mod:net": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "input_size": 64, "crop_pct": 0.875}} '
        "(JSON in the environment)",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    engine_cache_size: int | None = Field(
        default=None, ge=1, description="at most this many recorded forward passes per model (default: bytes only)"
    )
    engine_cache_mb: float | None = Field(
        default=None,
        gt=0,
        description="MiB of recorded forward passes kept per model (default: 1024 on the CPU, 2048 on CUDA)",
    )
    workers: int = Field(
        default=2,
        ge=1,
        description="CPU: backward passes (projections) per model at once over shared recorded passes; "
        "without CONVSCOPE_TORCH_THREADS the server then gives torch cores/workers threads",
    )
    tf32: bool = Field(
        default=False, description="CUDA: let convolutions use TF32 (faster; projections then differ from the CPU's)"
    )
    share_forward: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="coalesced projections on several new images record them in one batched forward pass "
        "(auto: on CUDA only; on the CPU every later projection of those images would cost the whole batch)",
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch intra-op threads for `convscope serve` (default: torch's choice)"
    )

    # server
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    worker_threads: int = Field(default=8, ge=1, description="threads running model work and image decoding")
    max_connections: int = Field(default=64, ge=1, description="concurrent connections before uvicorn answers 503")
    log_level: str = "info"
    frontend_dir: Path | None = Field(default_factory=_default_frontend_dir)

    # input limits
    max_upload_bytes: int = Field(default=10 * MiB, ge=1, description="largest request body, in bytes")
    max_pixels: int = Field(default=40_000_000, ge=1, description="largest image, in pixels, checked before decoding")

    # upload store
    store_max_images: int = Field(default=64, ge=1)
    store_max_bytes: int = Field(default=512 * MiB, ge=1, description="decoded RGB bytes of all stored uploads")

    # caches
    response_cache_entries: int = Field(default=256, ge=0, description="rendered PNGs kept in memory (0: none)")
    prepared_cache_entries: int = Field(default=64, ge=1, description="preprocessed images kept per server")
    max_projection_seeds: int = Field(
        default=64, ge=1, description="most seeds in one POST .../projections batch (more: 422)"
    )
    projection_window_ms: float = Field(
        default=2.0,
        ge=0,
        le=PROJECTION_WINDOW_CAP_MS,
        description="projection requests arriving within this many ms of the first waiting one are computed as one "
        "batch (api/coalesce.py; 0: batch only while the model is busy; at most 50)",
    )
    projection_batch_seeds: int = Field(
        default=64, ge=1, le=4096, description="most seeds one coalesced projection batch computes"
    )

    # occlusion and jobs
    occlusion_job_threshold: int = Field(
        default=64, ge=0, description="occluder positions above which occlusion runs as a job (202)"
    )
    occlusion_max_positions: int = Field(
        default=16_384, ge=1, description="most occluder positions one request may ask for"
    )
    occlusion_batch_size: int = Field(default=32, ge=1)
    job_workers: int = Field(default=1, ge=1, description="jobs running at once")
    max_active_jobs: int = Field(default=8, ge=1, description="queued and running jobs before new ones get 429")
    max_finished_jobs: int = Field(default=64, ge=1, description="finished jobs kept for polling")

    # top-k scans (paper Fig. 2)
    scan_dir: Path = Field(
        default_factory=_default_scan_dir, description="where scans are stored, one folder per model"
    )
    scan_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="folders whose subfolders clients may scan, addressed by the root's name (comma-separated)",
    )
    scan_on_startup: bool = Field(default=True, description="scan the sample photos for the default model at start-up")
    scan_batch_size: int = Field(default=16, ge=1, description="images per forward pass in server scans")

    # training-time studies (paper Fig. 4, Tables 3 and 7): finished results of `convscope train`,
    # `evolution`, `ablate` and `probe` written anywhere below this folder are listed read-only
    studies_dir: Path | None = Field(
        default_factory=_default_studies_dir, description="folder searched for finished study JSON files"
    )

    # hardening (issue 19): memory, network exposure, clients, timeouts. See docs/deploy.md.
    max_aspect_ratio: float = Field(
        default=20.0, ge=1.0, le=1000.0, description="most elongated image accepted (longer / shorter side)"
    )
    request_memory_mb: int = Field(
        default=2048, ge=16, description="estimated working memory one scan or analysis may need, in MiB"
    )
    token: str | None = Field(
        default=None, min_length=8, description="when set, every /api request needs `Authorization: Bearer <token>`"
    )
    token_file: Path | None = Field(default=None, description="a file holding the token (its first line)")
    insecure: bool = Field(default=False, description="allow a non-loopback host without a token")
    trusted_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(LOOPBACK_HOSTS),
        description="Host header names answered (comma-separated; `*`: any); others get 400",
    )
    timeout_keep_alive: float = Field(default=5.0, gt=0, description="seconds an idle keep-alive connection is kept")
    header_timeout: float = Field(default=10.0, gt=0, description="seconds to receive a request's headers")
    body_timeout: float = Field(default=10.0, gt=0, description="seconds the request body may stall between chunks")
    client_max_jobs: int = Field(default=6, ge=1, description="queued and running jobs per client before 429")
    client_max_running_jobs: int = Field(
        default=2, ge=1, description="jobs of one client running at once (and its occlusions answered in requests)"
    )
    interactive_wait_s: float = Field(
        default=5.0, ge=0, description="longest a job waits between batches for interactive requests to finish"
    )

    @field_validator("trusted_hosts", "scan_roots", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        """A list given as one string (an environment variable): its comma-separated parts."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def api_token(self) -> str | None:
        """The token from `token`, else the first line of `token_file`."""
        if self.token:
            return self.token
        if self.token_file is not None:
            try:
                text = self.token_file.read_text().strip().splitlines()
            except OSError as exc:
                raise ValueError(f"cannot read the token file {self.token_file}: {exc.strerror}") from None
            if not text or len(text[0].strip()) < 8:
                raise ValueError(f"the token file {self.token_file} holds no token of at least 8 characters")
            return text[0].strip()
        return None

    # feature visualisation (issue 17): optimised images cached on disk; a `convscope atlas` folder to serve
    featvis_dir: Path | None = Field(
        default=None, description="feature-visualisation cache (default: $XDG_CACHE_HOME/convscope/featvis)"
    )
    atlas_dir: Path | None = Field(
        default=None, description="a folder written by `convscope atlas`, served read-only under /api/atlas/"
    )

    @field_validator("scan_roots")
    @classmethod
    def _unique_root_names(cls, value: list[Path]) -> list[Path]:
        names = [path.name for path in value]
        if len(set(names)) != len(names) or "" in names:
            raise ValueError("scan roots are addressed by their folder names, which must be distinct and non-empty")
        return value

    @field_validator("models", "offer_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("models")
    @classmethod
    def _dedupe_models(cls, value: list[str]) -> list[str]:
        unique = list(dict.fromkeys(value))
        if not unique:
            raise ValueError("at least one model is needed")
        return unique

    @property
    def default_model(self) -> str:
        return self.models[0]


def trusted_hosts(settings: Settings) -> list[str]:
    """The configured Host names, plus the address the server binds to when it is a specific one."""
    hosts = list(settings.trusted_hosts)
    if settings.host not in ("0.0.0.0", "::", "") and settings.host not in hosts:
        hosts.append(settings.host)
    return hosts
