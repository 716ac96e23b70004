"""One app with the real default model (EfficientNet-Lite0, ImageNet weights), shared by the TestClient tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.helpers import MODEL, app_engine, ready_client
from convscope.api import Settings
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
    with ready_client(api_settings) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def engine(client: TestClient) -> Engine:
    """The app's own engine for the default model (to compute expected values directly)."""
    return app_engine(client, MODEL)
