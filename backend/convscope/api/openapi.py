"""The OpenAPI document, shaped for client generators (openapi-python-client, OpenAPI Generator).

- Operation ids are the route functions' names (`upload_image`, `get_projection`, ...), set once
  for the whole app by `operation_id` (pass it as FastAPI's `generate_unique_id_function`); a
  function whose name is not a readable verb phrase is renamed in `OPERATION_IDS`.
- Binary fields carry `format: binary` besides the 3.1 `contentMediaType`, so generators written
  for OpenAPI 3.0 see a file, not a string.
- Every `image/*` response is also listed as `application/octet-stream` (the same bytes; the
  server always sends `image/png`), the one binary media type openapi-python-client turns into a
  `File`; OpenAPI Generator reads the first entry (`image/png`, `format: binary`) as bytes.
- Tags get descriptions; `body_examples(...)` gives route decorators request-body examples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
OCTET_STREAM = "application/octet-stream"

# Route functions whose names are nouns: the readable operation id for each.
OPERATION_IDS: dict[str, str] = {
    "health": "get_health",
    "metrics": "get_metrics",
    "predictions": "get_predictions",
    "samples": "list_samples",
    "thumbnail": "get_sample_thumbnail",
    "activations": "get_activations",
    "activation_sprite_png": "get_activation_sprite",
    "projection": "get_projection",
    "occlusion": "run_occlusion",
    "invariance_job": "start_invariance",
    "invariance_preview": "get_invariance_preview",
    "correspondence_demo": "get_correspondence_demo",
    "correspondence_job": "start_correspondence",
    "filters": "get_filters",
    "filter_mosaic_png": "get_filter_mosaic",
    "dead_channels_job": "start_dead_channels",
    "study_image": "get_study_image",
    "study_table": "get_study_table",
    "top": "get_top",
    "top_image": "get_top_image",
    "top_projections": "get_top_projections",
    "scan_image": "get_scan_image",
    "montage_png": "get_montage",
    "stored_visualization": "get_stored_visualization",
    "atlas_info": "get_atlas",
    "atlas_file": "get_atlas_file",
    "scan_roots": "list_scan_roots",
    "visualization_png": "get_visualization_image",
}

TAG_DESCRIPTIONS: dict[str, str] = {
    "health": "is the server ready",
    "metrics": "Prometheus metrics: requests, projection batch sizes, jobs, engines",
    "models": "the loaded models, their layers, labels and predictions",
    "samples": "the bundled real photos (usable as {image_id})",
    "images": "uploads and the S×S model input of any image",
    "activations": "feature maps of one layer",
    "projections": "deconvnet projections of feature maps to pixel space (paper §2)",
    "occlusion": "occlusion sensitivity (paper Fig. 7)",
    "jobs": "long work: poll progress, read the result, cancel",
    "scans": "top-k dataset scans (paper Fig. 2)",
    "analyses": "invariance, correspondence and filter studies (paper Figs. 5, 6, 8)",
    "studies": "finished studies saved by the command line",
    "feature visualisation": "images optimised to excite a unit, and the static unit atlas",
}
TAGS: list[dict[str, str]] = [{"name": name, "description": text} for name, text in TAG_DESCRIPTIONS.items()]


def operation_id(route: APIRoute) -> str:
    """FastAPI's `generate_unique_id_function`: the route function's name, or its readable rename."""
    return OPERATION_IDS.get(route.name, route.name)


def body_examples(**examples: Any) -> dict[str, Any]:
    """`openapi_extra` for a route decorator: named examples of its JSON request body."""
    named = {name: {"summary": name.replace("_", " "), "value": value} for name, value in examples.items()}
    return {"requestBody": {"content": {"application/json": {"examples": named}}}}


def _binary_fields(node: Any) -> None:
    """Add `format: binary` wherever a schema is a string of `application/octet-stream` content."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("contentMediaType") == OCTET_STREAM:
            node.setdefault("format", "binary")
        for value in node.values():
            _binary_fields(value)
    elif isinstance(node, list):
        for value in node:
            _binary_fields(value)


def _binary_responses(document: dict[str, Any]) -> None:
    for path in document.get("paths", {}).values():
        for operation in path.values():
            if not isinstance(operation, dict):
                continue
            for response in operation.get("responses", {}).values():
                content = response.get("content") if isinstance(response, dict) else None
                if not content or OCTET_STREAM in content:
                    continue
                images = [media for media in content if media.startswith("image/")]
                for media in images:
                    content[media] = {**content[media], "schema": content[media].get("schema") or dict(BINARY)}
                if images:
                    content[OCTET_STREAM] = {"schema": dict(BINARY)}


def _tags(document: dict[str, Any]) -> None:
    used = {tag for path in document.get("paths", {}).values() for op in path.values() for tag in op.get("tags", [])}
    known = [tag for tag in TAGS if tag["name"] in used]
    named = {tag["name"] for tag in known}
    document["tags"] = known + [{"name": tag} for tag in sorted(used - named)]


def polish(document: dict[str, Any]) -> dict[str, Any]:
    """Make `document` (FastAPI's) readable by client generators, in place; returns it."""
    _binary_fields(document.get("components", {}))
    _binary_responses(document)
    _tags(document)
    return document


def install(app: FastAPI) -> None:
    """Serve the polished document at /openapi.json (and /docs); call after every router is added."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        return polish(generate())  # FastAPI caches the document; polishing it again changes nothing

    app.openapi = openapi  # type: ignore[method-assign]
