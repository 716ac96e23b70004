"""A small typed Python client for the convscope REST API (docs/api.md).

from convscope.client import Client

with Client("http://127.0.0.1:8000") as api:
    upload = api.upload("cat.jpg")
    print(api.predictions(upload["id"], top=3))
    api.projection(upload["id"], "conv_head", 7).image.save("projection.png")
"""

from convscope.client import types
from convscope.client.client import Client, ImageInput
from convscope.client.errors import ApiError
from convscope.client.types import *  # noqa: F403  (the answers' shapes: types.__all__)

__all__ = ["ApiError", "Client", "ImageInput"]
__all__ += types.__all__
