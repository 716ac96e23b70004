"""The "Unit" view in a real browser against a real server: reconstruction, Top 9 and the
optimised image side by side; the optimised image is computed on demand (a job with
progress) and comes from the server's cache after, also through the "unit card" link.

A server of its own (EfficientNet-Lite0, ImageNet weights), with empty scan and
feature-visualisation folders, so nothing is cached from an earlier run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest

from browser.conftest import ARTIFACTS, SCREENSHOTS, get_json, open_page, running_server
from convscope.featvis.atlas import build_atlas
from fixtures.nets import make_engine, zf_shaped

pytestmark = pytest.mark.browser
MODEL = "efficientnet_lite0"
LAYER = "blocks.2"  # one of the start-up scan's layers
CHANNEL = 3


@pytest.fixture(scope="module")
def unit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("unit-page")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    atlas = root / "atlas"  # a tiny atlas (the ZF fixture net) for the dashboard's atlas link
    build_atlas(
        make_engine(zf_shaped(size=112), 112, name="zf-shaped"), atlas, layers=["features.conv2"], channels="0", steps=2
    )
    settings = {
        "CONVSCOPE_ATLAS_DIR": str(atlas),
        "CONVSCOPE_DEVICE": "cpu",
        "CONVSCOPE_MODELS": MODEL,
        "CONVSCOPE_SCAN_DIR": str(root / "scans"),
        "CONVSCOPE_FEATVIS_DIR": str(root / "featvis"),
    }
    with running_server(settings, ARTIFACTS / "unit-page-server.log") as base:
        deadline = time.monotonic() + 180
        while not any(s["status"] == "complete" for s in get_json(f"{base}/api/models/{MODEL}/scans")):
            assert time.monotonic() < deadline, "the start-up scan did not finish"
            time.sleep(0.5)
        yield base


def images_loaded(page: Any, selector: str) -> list[int]:
    return page.eval_on_selector_all(selector, "els => els.map(e => (e.complete ? e.naturalWidth : 0))")


def test_unit_page(chromium: Any, unit_server: str) -> None:
    url = f"{unit_server}/#model={MODEL}&image=chelsea&layer={LAYER}&channel={CHANNEL}&tab=unit"
    expected = get_json(f"{unit_server}/api/models/{MODEL}/scans/samples/top?layer={quote(LAYER)}&channel={CHANNEL}")
    with open_page(chromium) as page:
        page.goto(url)
        page.wait_for_selector('[data-role="unit-page"][data-state="ready"]', timeout=120_000)
        assert page.text_content('[data-role="unit-title"]') == f"{LAYER} · channel {CHANNEL}"
        page.wait_for_selector('a[data-role="atlas-link"]:visible')
        assert page.get_attribute('a[data-role="atlas-link"]', "href") == "/api/atlas/index.html"
        # the reconstruction on the current image
        page.wait_for_selector('img[data-role="unit-projection"][data-loaded="true"]')
        src = page.get_attribute('img[data-role="unit-projection"]', "src")
        assert "/images/chelsea/projection?" in src and f"channel={CHANNEL}" in src
        # its Top 9, in the scan's order
        assert page.get_attribute('[data-role="unit-page"]', "data-top9") == "ready"
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-role=unit-page] .top9-grid img')].every(i => i.complete)"
        )
        assert all(w > 0 for w in images_loaded(page, '[data-role="unit-top9-projections"] img'))
        assert len(images_loaded(page, '[data-role="unit-top9-crops"] img')) == 9
        srcs = page.eval_on_selector_all(
            '[data-role="unit-top9-projections"] img', "els => els.map(e => e.getAttribute('src'))"
        )
        assert srcs == [entry["projection_url"] for entry in expected["entries"]]
        # the optimised image: not cached yet, computed on demand with progress
        assert page.get_attribute('[data-role="unit-page"]', "data-featvis") == "idle"
        assert page.is_hidden('img[data-role="unit-featvis"]')
        with page.expect_popup() as popup:  # the atlas link opens the atlas the server serves
            page.click('a[data-role="atlas-link"]')
        atlas = popup.value
        atlas.wait_for_selector("html[data-ready=true]")
        assert atlas.eval_on_selector_all('[data-role="atlas-unit"]', "els => els.length") == 1
        atlas.close()
        page.select_option('[data-role="featvis-steps"]', "64")
        page.wait_for_selector('[data-role="unit-page"][data-featvis="idle"]')
        page.click('[data-role="featvis-compute"]')
        page.wait_for_selector('[data-role="unit-page"][data-featvis="running"]')
        page.wait_for_selector('[data-role="featvis-progress"]:visible')
        page.wait_for_selector('[data-role="unit-page"][data-featvis="ready"]', timeout=300_000)
        page.wait_for_function("() => document.querySelector('img[data-role=unit-featvis]').naturalWidth > 0")
        assert images_loaded(page, 'img[data-role="unit-featvis"]') == [224]
        value = float(page.get_attribute('img[data-role="unit-featvis"]', "data-value"))
        stored = get_json(
            f"{unit_server}/api/models/{MODEL}/visualizations?layer={quote(LAYER)}&channel={CHANNEL}&steps=64"
        )
        assert stored["cached"] is True and stored["value"] == pytest.approx(value)
        unnamed = page.evaluate(
            """() => [...document.querySelectorAll('[data-role=unit-page] :is(button, select, input, img, a)')]
                .filter((el) => el.getClientRects().length)
                .filter((el) => (el.tagName === 'IMG' ? !el.getAttribute('alt')
                    : !(el.textContent.trim() || el.getAttribute('aria-label') || el.getAttribute('title'))))
                .map((el) => el.outerHTML.slice(0, 120))"""
        )
        assert unnamed == []
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "unit-page.png"))
        card = page.get_attribute('[data-role="unit-card-link"]', "href")
    params = dict(parse_qsl(card.lstrip("#")))
    assert params == {
        "model": MODEL,
        "image": "chelsea",
        "layer": LAYER,
        "channel": str(CHANNEL),
        "mode": "auto",  # the dashboard's default mode (resolved per layer)
        "select": "max",
        "tab": "unit",
    }
    # the unit card in a fresh page: the optimised image comes from the cache, no job
    with open_page(chromium) as page:
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        page.goto(f"{unit_server}/{card}")
        page.wait_for_selector('[data-role="unit-page"][data-state="ready"]', timeout=120_000)
        page.select_option('[data-role="featvis-steps"]', "64")
        page.wait_for_selector('[data-role="unit-page"][data-featvis="ready"]')
        page.wait_for_function("() => document.querySelector('img[data-role=unit-featvis]').naturalWidth > 0")
        assert "from the server's cache" in page.text_content('[data-role="featvis-note"]')
        assert not posts
        # another channel through the hash: the view follows
        page.evaluate(f"location.hash = location.hash.replace('channel={CHANNEL}', 'channel={CHANNEL + 1}')")
        page.wait_for_function(
            f"() => document.querySelector('[data-role=unit-title]').textContent.endsWith('channel {CHANNEL + 1}')"
        )
        page.wait_for_selector('[data-role="unit-page"][data-featvis="idle"]')
