"""The rules a JSON schema cannot state, stated in the OpenAPI document.

Some requests are well formed but still refused, because the rule involves several fields, the
loaded model (S, a layer's channels and size, the number of classes) or the server's limits. Each
operation's refusals are listed under `x-convscope-rules` (status, the rule in words, and a regular
expression of the `detail` it answers with) and appended to the description of that status, so a
client, and the property-based tests (tests/api/test_fuzz.py), know them.
"""

from __future__ import annotations

from typing import Any

Rule = tuple[int, str, str]  # status, the rule in words, a regular expression of the detail

TARGET_RULE: Rule = (422, "target is below the model's number of classes", r"target class .* out of range")
POSITION_RULE: Rule = (422, "y and x are given together, or neither", r"give both y and x")
MODEL_RULES: list[Rule] = [
    (422, "the layer is one the model has, and the channel is below its channel count", r"out of range for layer"),
    (422, "a seed position (y, x) lies inside the layer's feature map", r"is outside layer"),
]
IMAGE_RULES: list[Rule] = [
    (
        415,
        "the file must be an image convscope can decode (the schema can only say: bytes)",
        r"not an image|could not be decoded|empty",
    ),
    (413, "at most CONVSCOPE_MAX_PIXELS pixels and CONVSCOPE_MAX_UPLOAD_BYTES bytes", r"limit"),
    (422, "at most CONVSCOPE_MAX_ASPECT_RATIO times longer than wide (or the reverse)", r"aspect ratio"),
]
OCCLUSION_RULES: list[Rule] = [
    (422, "size is at most S, the model input side", r"larger than the .* model input"),
    (422, "approx applies to the incremental (or auto) method, not dense", r"approx needs the incremental"),
    (
        422,
        "size and stride give at most CONVSCOPE_OCCLUSION_MAX_POSITIONS positions",
        r"occluder positions are more than",
    ),
    TARGET_RULE,
    (422, "layer is a layer of the model with a 4-D output", r"not a feature map|has no layer|out of range"),
]
ANALYSIS_RULES: list[Rule] = [
    TARGET_RULE,
    (422, "edge 'wrap' applies to translation only", r"applies to translation only"),
    (
        422,
        "start/stop are in range for the transform (scale 0.05..8, translation ±10000 px)",
        r"scale factors|translations beyond|finite",
    ),
    (422, "images × steps (or draws) need at most 4,096 forward passes", r"forward passes"),
    (422, "the layers' estimated working memory fits CONVSCOPE_REQUEST_MEMORY_MB", r"MiB of working memory"),
    (
        422,
        "a layer named by low_layer/high_layer/layers is a feature the model has",
        r"not a feature|has no|input of|Conv2d",
    ),
    (
        422,
        "correspondence: at least two distinct images, a whole-pixel box [x, y, w, h] of at least 1×1 inside the "
        "size×size frame for every image of every part, part names other than 'random'",
        r"box|part|image|size",
    ),
]
SCAN_RULES: list[Rule] = [
    # (a oneOf in the schema would say it too, but breaks generated clients: openapi-python-client)
    (422, "give exactly one of: a folder, or samples=true", r"give either a folder or samples=true"),
    (
        422,
        "layers are layers of the model; their estimated memory fits CONVSCOPE_REQUEST_MEMORY_MB",
        r"MiB of working memory|no layers",
    ),
    (422, "the folder's name components are at most 255 bytes", r"cannot be used"),
]

VISUALIZATION_RULES: list[Rule] = [
    POSITION_RULE,
    (422, "a position (y, x) applies to the unit objective only", r"a position applies to the unit objective"),
    (
        422,
        "the objective's layer and channels are the model's (channel below the layer's count, each once)",
        r"needs a layer|out of range|once per request|no channels|is outside",
    ),
]

RULES: dict[tuple[str, str], list[Rule]] = {
    ("get", "/api/models/{model}/visualizations"): VISUALIZATION_RULES,
    ("post", "/api/models/{model}/visualizations"): VISUALIZATION_RULES,
    ("get", "/api/models/{model}/visualizations/image.png"): VISUALIZATION_RULES,
    ("get", "/api/models/{model}/images/{image_id}/projection"): [POSITION_RULE, *MODEL_RULES],
    ("post", "/api/models/{model}/images/{image_id}/projections"): [
        (422, "each seed gives y and x together, or neither", r"give both y and x"),
        (422, "at most CONVSCOPE_MAX_PROJECTION_SEEDS seeds per request", r"seeds is more than"),
        *MODEL_RULES,
    ],
    ("get", "/api/models/{model}/images/{image_id}/activations"): MODEL_RULES,
    ("get", "/api/models/{model}/images/{image_id}/activations/sprite.png"): MODEL_RULES,
    ("post", "/api/images"): IMAGE_RULES,
    ("post", "/api/models/{model}/images/{image_id}/occlusion"): OCCLUSION_RULES,
    ("post", "/api/models/{model}/analyses/invariance"): ANALYSIS_RULES,
    ("get", "/api/models/{model}/analyses/invariance/preview.png"): ANALYSIS_RULES,
    ("post", "/api/models/{model}/analyses/correspondence"): ANALYSIS_RULES,
    ("post", "/api/models/{model}/analyses/dead-channels"): ANALYSIS_RULES,
    ("post", "/api/models/{model}/scans"): SCAN_RULES,
    ("get", "/api/models/{model}/scans/{scan_id}/top"): MODEL_RULES,
    ("get", "/api/models/{model}/scans/{scan_id}/top/projections"): MODEL_RULES,
    ("get", "/api/models/{model}/scans/{scan_id}/montage.png"): [
        (422, "channels are below the layer's channel count, at most 64 of them", r"channel"),
    ],
}


def document_rules(document: dict[str, Any]) -> None:
    """Add `x-convscope-rules` to each operation above, and its rules to the descriptions of their statuses;
    document the 400 any operation with a request body sends for a body that cannot be parsed."""
    paths = document.get("paths", {})
    for item in paths.values():
        for operation in item.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation.setdefault("responses", {}).setdefault(
                    "400",
                    {
                        "description": "malformed request body (not parseable as its content type)",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                    },
                )
    for (method, path), rules in RULES.items():
        operation = paths.get(path, {}).get(method)
        if operation is None:
            continue
        operation["x-convscope-rules"] = [
            {"status": status, "rule": rule, "detail": pattern} for status, rule, pattern in rules
        ]
        responses = operation.setdefault("responses", {})
        for status in sorted({status for status, _, _ in rules}):
            response = responses.setdefault(
                str(status),
                {
                    "description": "",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                },
            )
            words = "; ".join(rule for code, rule, _ in rules if code == status)
            response["description"] = f"{response.get('description') or 'refused'}. Rules: {words}"
