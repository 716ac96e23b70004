"""The static atlas opens from file:// in Chromium: no server, no network, no console errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from browser.conftest import SCREENSHOTS, open_page
from convscope.featvis.atlas import build_atlas
from fixtures.nets import make_engine, zf_shaped

pytestmark = pytest.mark.browser
SIZE = 112
LAYERS = ["features.conv2", "features.conv4"]
CHANNELS = [0, 1, 5]


@pytest.fixture(scope="module")
def atlas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("atlas") / "site"
    engine = make_engine(zf_shaped(size=SIZE), SIZE, name="zf-shaped")
    build_atlas(engine, out, layers=LAYERS, channels="0-1,5", steps=3)
    return out


def loaded(page: Any, selector: str) -> list[bool]:
    return page.eval_on_selector_all(selector, "els => els.map(e => e.complete && e.naturalWidth > 0)")


def test_atlas_opens_from_file_url(chromium: Any, atlas: Path) -> None:
    with open_page(chromium) as page:
        console: list[str] = []
        requests: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("requestfailed", lambda r: console.append(f"failed: {r.url}"))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((atlas / "index.html").as_uri())
        page.wait_for_selector("html[data-ready=true]")
        assert page.eval_on_selector_all('[data-role="atlas-layer"]', "els => els.map(e => e.dataset.layer)") == LAYERS
        for layer in LAYERS:
            page.click(f'[data-role="atlas-layer"][data-layer="{layer}"]')
            page.wait_for_selector(f'[data-role="atlas-layer"][data-layer="{layer}"][aria-current="true"]')
            cards = '[data-role="atlas-unit"] img'
            page.wait_for_function(f"() => [...document.querySelectorAll('{cards}')].every(i => i.complete)")
            assert (
                page.eval_on_selector_all('[data-role="atlas-unit"]', "els => els.map(e => +e.dataset.channel)")
                == CHANNELS
            )
            assert loaded(page, cards) == [True] * len(CHANNELS)
            for channel in CHANNELS:
                page.click(f'[data-role="atlas-unit"][data-channel="{channel}"]')
                page.wait_for_selector(f'[data-role="unit-detail"][data-layer="{layer}"][data-channel="{channel}"]')
                tiles = '[data-role="unit-detail"] img'
                page.wait_for_function(f"() => [...document.querySelectorAll('{tiles}')].every(i => i.complete)")
                assert loaded(page, '[data-role="unit-vis"]') == [True]
                assert loaded(page, '[data-role="unit-top-projections"] img') == [True] * 9
                assert loaded(page, '[data-role="unit-top-crops"] img') == [True] * 9
                assert page.text_content('[data-role="unit-value"]') not in ("", "–")
                page.go_back()
                page.wait_for_selector('html[data-view="layer"]')
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.click(f'[data-role="atlas-unit"][data-channel="{CHANNELS[0]}"]')
        page.wait_for_selector('[data-role="unit-detail"]')
        page.screenshot(path=str(SCREENSHOTS / "atlas-unit.png"))
    assert not console, console
    assert requests and all(url.startswith("file://") for url in requests), [
        u for u in requests if not u.startswith("file://")
    ]
