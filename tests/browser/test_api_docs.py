"""The API docs (/docs: Swagger UI, /redoc: ReDoc) render their operations with every request
that leaves the server blocked: their scripts and styles come from the server itself."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from browser.conftest import get_json

pytestmark = pytest.mark.browser


def offline(page: Any, server_url: str) -> list[str]:
    """Abort every request not aimed at the server under test; returns the list of what was blocked."""
    own = urlsplit(server_url).netloc
    blocked: list[str] = []

    def route(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).netloc == own or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.route("**/*", route)
    return blocked


def operation_summaries(server_url: str) -> list[str]:
    document = get_json(f"{server_url}/openapi.json")
    return [op["summary"] for path in document["paths"].values() for op in path.values() if "summary" in op]


def test_swagger_ui_renders_offline(tab: Any, server_url: str, shoot: Any) -> None:
    blocked = offline(tab, server_url)
    summaries = operation_summaries(server_url)
    tab.goto(f"{server_url}/docs")
    operations = tab.locator(".opblock")
    operations.first.wait_for()
    assert operations.count() == len(summaries)
    assert summaries[0] in tab.locator(".opblock-summary-description").all_inner_texts()
    shoot("docs-swagger-offline")
    assert all(urlsplit(url).netloc != urlsplit(server_url).netloc for url in blocked)


def test_redoc_renders_offline(tab: Any, server_url: str) -> None:
    offline(tab, server_url)
    summaries = operation_summaries(server_url)
    tab.goto(f"{server_url}/redoc")
    # ReDoc gives every operation a section with id "operation/<operationId>" (or "tag/.../operation/...")
    sections = tab.locator('[data-section-id*="operation/"]')
    sections.first.wait_for()
    # the menu entry and the section of an operation both name it: count operation ids
    ids = set(sections.evaluate_all("els => els.map(e => e.dataset.sectionId.split('operation/').pop())"))
    assert len(ids) == len(summaries)
    assert tab.get_by_text(summaries[0], exact=True).count() >= 1
