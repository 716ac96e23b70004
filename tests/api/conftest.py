"""One app with the real default model (EfficientNet-Lite0, ImageNet weights), shared by the TestClient tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.helpers import MODEL, wait_ready
from convscope.api import Settings, create_app
from convscope.engine import Engine

# Settings the tests rely on: small occlusion limits so a job is quick.
JOB_THRESHOLD = 16
MAX_POSITIONS = 400


@pytest.fixture(scope="session")
def api_settings() -> Settings:
    return Settings.model_validate(
        {
            "models": [MODEL],
            "device": "cpu",
            "occlusion_job_threshold": JOB_THRESHOLD,
            "occlusion_max_positions": MAX_POSITIONS,
            "max_active_jobs": 4,
            "frontend_dir": None,
            "scan_on_startup": False,
        }
    )


@pytest.fixture(scope="session")
def client(api_settings: Settings) -> Iterator[TestClient]:
    app = create_app(api_settings)
    with TestClient(app) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="session")
def engine(client: TestClient) -> Engine:
    """The app's own engine for the default model (to compute expected values directly)."""
    engine: Engine = client.app.state.convscope.pool.get(MODEL)  # type: ignore[attr-defined]
    return engine
