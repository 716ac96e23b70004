"""A small typed Python client for the convscope REST API (docs/api.md).

from convscope.client import Client

with Client("http://127.0.0.1:8000") as api:
    upload = api.upload("cat.jpg")
    print(api.predictions(upload["id"], top=3))
    api.projection(upload["id"], "conv_head", 7).image.save("projection.png")
"""

from convscope.client.client import Client, ImageInput
from convscope.client.errors import ApiError
from convscope.client.types import (
    Activations,
    Health,
    Job,
    Label,
    LayerInfo,
    ModelInfo,
    Occlusion,
    OcclusionMethod,
    Prediction,
    Projection,
    SampleInfo,
    ScanInfo,
    ScanRoot,
    Top,
    Upload,
)

__all__ = [
    "Activations",
    "ApiError",
    "Client",
    "Health",
    "ImageInput",
    "Job",
    "Label",
    "LayerInfo",
    "ModelInfo",
    "Occlusion",
    "OcclusionMethod",
    "Prediction",
    "Projection",
    "SampleInfo",
    "ScanInfo",
    "ScanRoot",
    "Top",
    "Upload",
]
