"""A server started with CONVSCOPE_TOKEN (issue 19): the dashboard asks for the token once, keeps it,
and then works as usual, <img> requests included (the server's auth cookie)."""

from __future__ import annotations

import os
from typing import Any

from browser.conftest import ARTIFACTS, open_page, running_server

TOKEN = "browser-test-token-1234"
PREDICTIONS = '[data-role="predictions"] li'


def test_the_dashboard_asks_for_the_token_once_and_then_works(chromium: Any) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    settings = {"CONVSCOPE_DEVICE": os.environ.get("CONVSCOPE_DEVICE", "cpu"), "CONVSCOPE_TOKEN": TOKEN}
    with running_server(settings, ARTIFACTS / "token-server.log") as base, open_page(chromium) as page:
        prompts: list[str] = []

        def answer(dialog: Any) -> None:
            prompts.append(dialog.message)
            dialog.accept(TOKEN)

        page.on("dialog", answer)
        page.goto(base + "/")
        page.wait_for_function(f"() => document.querySelectorAll('{PREDICTIONS}').length > 0")
        # a sample thumbnail is a plain <img>: it loads through the cookie set after the first bearer request
        page.wait_for_function(
            "() => [...document.querySelectorAll('img')].some(i => i.src.includes('/thumbnail.png')"
            " && i.complete && i.naturalWidth > 0)"
        )
        assert len(prompts) == 1 and "CONVSCOPE_TOKEN" in prompts[0]
        page.reload()
        page.wait_for_function(f"() => document.querySelectorAll('{PREDICTIONS}').length > 0")
        assert len(prompts) == 1, "the token is kept: no second prompt"
