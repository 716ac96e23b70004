"""The REST API (docs/api.md): a FastAPI app over one engine per loaded model.

`create_app(settings)` builds the app; `run_server(settings)` serves it with uvicorn.
FastAPI stays in this package: the engine and the analyses never import it.
"""

from convscope.api.app import create_app
from convscope.api.settings import Settings

__all__ = ["Settings", "create_app"]
