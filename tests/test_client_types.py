"""The torch-free client's answer types (`client/types.py`) name only what the server's schemas send.

The client cannot import the API's pydantic models (they pull in FastAPI) or the engine (torch), so
it types the JSON with its own `TypedDict`s. This test is what keeps the two from drifting: every
key a client type declares is a field of the response model the server builds that answer from."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from convscope.api.schemas import common, images, jobs, models, occlusion, scans, topk
from convscope.client import types

PAIRS: list[tuple[type, type[BaseModel]]] = [
    (types.Health, common.HealthResponse),
    (types.ModelInfo, models.ModelInfo),
    (types.ReceptiveField, models.ReceptiveFieldInfo),
    (types.LayerInfo, models.LayerResponse),
    (types.Label, models.LabelInfo),
    (types.SampleInfo, images.SampleInfo),
    (types.Upload, images.UploadResponse),
    (types.Prediction, models.PredictionResponse),
    (types.SpriteInfo, images.SpriteInfo),
    (types.Activations, images.ActivationsResponse),
    (types.OcclusionFeature, occlusion.OcclusionFeature),
    (types.Occlusion, occlusion.OcclusionResponse),
    (types.JobError, jobs.JobError),
    (types.Job, jobs.JobResponse),
    (types.ScanInfo, scans.ScanInfo),
    (types.TopImage, topk.ScanImageRef),
    (types.TopEntry, topk.TopEntry),
    (types.Top, topk.TopResponse),
    (types.ScanRoot, scans.ScanRootInfo),
]


def _wire_names(model: type[BaseModel]) -> set[str]:
    return {field.serialization_alias or field.alias or name for name, field in model.model_fields.items()}


@pytest.mark.parametrize(("client_type", "schema"), PAIRS, ids=lambda item: getattr(item, "__name__", ""))
def test_every_key_the_client_types_is_one_the_server_sends(client_type: type, schema: type[BaseModel]) -> None:
    declared = set(client_type.__required_keys__) | set(client_type.__optional_keys__)  # type: ignore[attr-defined]
    missing = declared - _wire_names(schema)
    assert not missing, f"client/types.py {client_type.__name__} names {sorted(missing)}, which {schema.__name__} lacks"


def test_every_typed_answer_of_the_client_is_checked() -> None:
    typed = {
        name
        for name, value in vars(types).items()
        if isinstance(value, type) and hasattr(value, "__required_keys__") and value.__module__ == types.__name__
    }
    assert typed == {client_type.__name__ for client_type, _ in PAIRS}
