"""The error types convscope raises for problems that are the caller's, not ours.

Every layer above the engine (CLI, REST API) maps these to a clear message:
the CLI exits with status 2, the API answers with the 4xx status named here.
"""


class ConvscopeError(Exception):
    """A problem with the request or the input, with a message meant for a person."""

    status_code = 422


class NotFoundError(ConvscopeError):
    """An unknown model, layer, image or other named resource."""

    status_code = 404


class InvalidRequestError(ConvscopeError):
    """A value out of range or of the wrong kind (channel, mode, occluder size...)."""

    status_code = 422


class ImageDecodeError(ConvscopeError):
    """Bytes that are not a readable image (not an image, truncated, unsupported)."""

    status_code = 415


class TooLargeError(ConvscopeError):
    """An upload or an image larger than the configured limits."""

    status_code = 413


class WeightsUnavailableError(ConvscopeError):
    """Pretrained weights that are neither cached nor downloadable, or a bad weights file."""

    status_code = 422
